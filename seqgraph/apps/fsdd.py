"""The Free Spoken Digit Dataset as a CTC phoneme-recognition task (`data.source: fsdd`).

The folder holds `recordings/{digit}_{speaker}_{index}.wav` and `phonemes.tsv` (each digit
word's phoneme string). Inputs are normalised log-mel frames (`audio.py`); targets are the
digit's phonemes as ids, with id 0 reserved for the CTC blank. The split is FSDD's official
one by recording index: 0-4 test, 5-9 validation, 10-49 (and above) train.

It adds no scorer: the core scores every CTC model by greedy decoding (`train.ctc`: phoneme
error rate, digit accuracy, nearest-digit accuracy against the split's distinct phoneme
strings, i.e. the ten digits).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from seqgraph.apps import audio
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT
from seqgraph.train.data import SequenceSet

BLANK = "<blank>"
COLUMNS = {"arpabet": "cmudict_arpabet", "espeak": "espeak_en_us_mnemonic"}
PADDING = {"x_time": True, "y_time": True, "y_own_lengths": True}
NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
HINT = "pass --data PATH/TO/fsdd_digits (the folder with recordings/ and phonemes.tsv)"


def folder(config: dict) -> Path:
    """The dataset folder named by data.path, checked."""
    if not config.get("path"):
        raise DataError(f"data.source 'fsdd' needs the FSDD folder: {HINT}")
    root = Path(config["path"])
    for need in ("recordings", "phonemes.tsv"):
        if not (root / need).exists():
            raise DataError(
                f"{root}: no {need} there, so this is not the fsdd_digits folder; {HINT}"
            )
    return root


def phoneme(symbol: str) -> str:
    """A phoneme without its stress mark (AH0 -> AH, 'V -> V): 39 ARPAbet phonemes."""
    return symbol.rstrip("012").lstrip("',")


def read_lexicon(path: Path, scheme: str = "arpabet") -> dict[int, list[str]]:
    """digit -> its phonemes, from phonemes.tsv (`scheme`: arpabet or espeak)."""
    if scheme not in COLUMNS:
        raise DataError(f"data.phonemes must be one of {', '.join(COLUMNS)}, not {scheme!r}")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or COLUMNS[scheme] not in rows[0]:
        raise DataError(f"{path}: expected a tab-separated table with a {COLUMNS[scheme]!r} column")
    return {int(r["digit"]): [phoneme(p) for p in r[COLUMNS[scheme]].split()] for r in rows}


def split_of(index: int) -> str:
    """FSDD's official split by recording index (validation carved out of train)."""
    return "test" if index < 5 else "valid" if index < 10 else "train"


def recordings(root: Path) -> list[tuple[int, str, int, Path]]:
    """(digit, speaker, index, path) of every recording, in a stable order."""
    found = []
    for path in sorted((root / "recordings").glob("*.wav")):
        match = NAME.match(path.name)
        if match:
            found.append((int(match[1]), match[2], int(match[3]), path))
    if not found:
        raise DataError(f"{root / 'recordings'}: no {{digit}}_{{speaker}}_{{index}}.wav files")
    return found


def load(config: dict, pattern: str = "many_to_many", seed: int = 0) -> SequenceSet:
    """A SequenceSet of (log-mel frames, phoneme ids); labels[0] is the CTC blank. The split
    is fixed by recording index, so `seed` is unused."""
    root = folder(config)
    lexicon = read_lexicon(root / "phonemes.tsv", config.get("phonemes", "arpabet"))
    labels = [BLANK] + sorted({p for word in lexicon.values() for p in word})
    index = {p: i for i, p in enumerate(labels)}
    parts = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    bands, stack = int(config.get("mel_bands", audio.MEL_BANDS)), int(config.get("stack", 1))
    for digit, _, number, path in recordings(root):
        if digit not in lexicon:
            raise DataError(f"{path}: digit {digit} has no row in phonemes.tsv")
        xs, ys = parts[split_of(number)]
        xs.append(audio.features(path, bands, stack))
        ys.append(np.array([index[p] for p in lexicon[digit]], dtype=np.int64))
    (x, y), (vx, vy), (tx, ty) = parts["train"], parts["valid"], parts["test"]
    if not x:
        raise DataError(f"{root}: no training recordings (index 10 and up)")
    return SequenceSet(x, y, vx, vy, labels=labels, padding=dict(PADDING), test_x=tx, test_y=ty)


OPTIONS = {
    "path": {"type": "string", "description": "the fsdd_digits folder (--data sets it)"},
    "phonemes": {"enum": list(COLUMNS), "description": "phoneme column (default arpabet)"},
    "mel_bands": {**COUNT, "description": "log-mel bands per frame (default 40)"},
    "stack": {**COUNT, "description": "join this many 10 ms frames into one (default 1)"},
}
SOURCES = [
    DataSource(
        "fsdd",
        load,
        OPTIONS,
        "the spoken-digit folder: log-mel frames -> phonemes, for model.loss: ctc "
        "(scored by phoneme error rate and digit accuracy)",
    )
]
