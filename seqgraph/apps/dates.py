"""Date normalisation (`source: dates`, `pattern: encoder_decoder`): a date written the way
people write it, read a character at a time, to its ISO 8601 form:

    26 Nov 2026                     -> 2026-11-26
    Thursday, November 26, 2026     -> 2026-11-26
    11/26/26                        -> 2026-11-26
    26th of November 2026           -> 2026-11-26

Generated, so it works offline: example i is drawn by its own generator seeded by (seed, i):
a day of 1969-01-01 .. 2068-12-31 and one of `FORMATS`. The range is the one in which a
two-digit year is unambiguous under POSIX `strptime`'s %y rule (69-99 are 19xx, 00-68 are
20xx), so "11/26/26" has one answer. Month and weekday names are English and spelled here,
not taken from the locale.

Splits hold out by date, not by string: the days themselves are shuffled (seeded) and
`test_fraction` / `valid_fraction` of them are test / validation days, so a test date never
occurs in training in any format (a split by string would let "26 Nov 2026" be learned and
"2026.11.26" tested). Pairs then become ids exactly as parallel text does
(`parallel.sequence_set`: char vocabularies from the training split, targets end with
`<eos>`), and raw inputs for `predict` are read by the same hooks.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from seqgraph.apps.parallel import encode_raw, read_inputs, sequence_set
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train.data import SequenceSet

FIRST_DAY = dt.date(1969, 1, 1)
LAST_DAY = dt.date(2068, 12, 31)
MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def ordinal(day: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd, 23rd, ..., 31st."""
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _month(d: dt.date) -> str:
    return MONTHS[d.month - 1]


def _weekday(d: dt.date) -> str:
    return WEEKDAYS[d.weekday()]


FORMATS = {  # name: how one human format writes a date (2026-11-26 shown)
    "d_mon_yyyy": lambda d: f"{d.day} {_month(d)[:3]} {d.year}",  # 26 Nov 2026
    "weekday_month_d_yyyy": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "us_mm_dd_yy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",  # 11/26/26
    "us_m_d_yyyy": lambda d: f"{d.month}/{d.day}/{d.year}",  # 11/26/2026
    "yyyy_mm_dd_dots": lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",  # 2026.11.26
    "dd_mm_yyyy_dots": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 26.11.2026
    "nth_of_month_yyyy": lambda d: f"{ordinal(d.day)} of {_month(d)} {d.year}",
    "month_d_yyyy": lambda d: f"{_month(d)} {d.day}, {d.year}",  # November 26, 2026
    "mon_d_yyyy": lambda d: f"{_month(d)[:3]} {d.day} {d.year}",  # Nov 26 2026
    "dd_mon_yyyy_dashes": lambda d: f"{d.day:02d}-{_month(d)[:3].upper()}-{d.year}",
    "rfc_2822": lambda d: f"{_weekday(d)[:3]}, {d.day:02d} {_month(d)[:3]} {d.year}",
    "lower_d_month_yyyy": lambda d: f"{d.day} {_month(d).lower()} {d.year}",
    "upper_month_nth_yyyy": lambda d: f"{_month(d).upper()} {ordinal(d.day).upper()}, {d.year}",
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",  # 20261126
    "iso": lambda d: d.isoformat(),  # 2026-11-26, already normal
}


def days() -> int:
    """How many days the generator draws from (1969-01-01 .. 2068-12-31)."""
    return (LAST_DAY - FIRST_DAY).days + 1


def day_splits(config: dict, seed: int) -> np.ndarray:
    """The split of every day (index from FIRST_DAY): 0 train, 1 valid, 2 test."""
    count = days()
    order = np.random.default_rng([seed, 29]).permutation(count)
    n_test = int(round(count * float(config.get("test_fraction", 0.1))))
    n_valid = int(round(count * float(config.get("valid_fraction", 0.1))))
    split = np.zeros(count, dtype=np.int64)
    split[order[:n_test]] = 2
    split[order[n_test : n_test + n_valid]] = 1
    return split


def example(seed: int, index: int, formats: list[str]) -> tuple[str, str, str]:
    """Example `index`: (a date in one of `formats`, the same date in ISO form, the format)."""
    rng = np.random.default_rng([seed, index])
    day = FIRST_DAY + dt.timedelta(days=int(rng.integers(days())))
    name = formats[int(rng.integers(len(formats)))]
    return FORMATS[name](day), day.isoformat(), name


def pairs(config: dict, seed: int) -> tuple[list, list, list]:
    """(train, valid, test) lists of (source, target, format name), split by date."""
    formats = list(config.get("formats") or FORMATS)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise DataError(
            f"data.formats: unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}"
        )
    held_out = float(config.get("valid_fraction", 0.1)) + float(config.get("test_fraction", 0.1))
    if held_out >= 1:
        raise DataError(
            f"data.valid_fraction + data.test_fraction = {held_out:g} leaves no training "
            "days; keep their sum below 1"
        )
    split = day_splits(config, seed)
    parts: tuple[list, list, list] = ([], [], [])
    for index in range(int(config.get("examples", 20000))):
        source, target, name = example(seed, index, formats)
        day = (dt.date.fromisoformat(target) - FIRST_DAY).days
        parts[split[day]].append((source, target, name))
    return parts


def load(config: dict, pattern: str, seed: int) -> SequenceSet:
    """The `dates` data set: source characters, target ISO characters ending with `<eos>`."""
    if pattern != "encoder_decoder":
        raise DataError(
            "data.source 'dates' maps a date string to its ISO form; set "
            f"model.pattern: encoder_decoder, not {pattern}"
        )
    parts = pairs(config, seed)
    if not parts[0]:
        raise DataError("data.examples: no training dates left; raise examples")
    where = Path("dates")  # what a max_len refusal names: the generated set, not a file
    rows = [
        [(list(source), list(target), index, where) for index, (source, target, _) in enumerate(p)]
        for p in parts
    ]
    return sequence_set(*rows, config)


OPTIONS = {
    "examples": {**COUNT, "description": "pairs generated, all splits together (20000)"},
    "formats": {
        "type": "array",
        "items": {"enum": list(FORMATS)},
        "description": "the human formats to draw from (default: all)",
    },
    "valid_fraction": {**FRACTION, "description": "share of the days held out (default 0.1)"},
    "test_fraction": {**FRACTION, "description": "share of the days for test (default 0.1)"},
    "max_len": {**COUNT, "description": "refuse pairs longer than this (target with <eos>)"},
}

SOURCES = [
    DataSource(
        "dates",
        load,
        OPTIONS,
        "dates in many human formats -> ISO 2026-11-26, held out by date (encoder_decoder)",
        encode=encode_raw,
        read_inputs=read_inputs,
    ),
]
