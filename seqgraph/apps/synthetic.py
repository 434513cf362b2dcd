"""Synthetic tasks that need no file, each deterministic for a seed.

- adding (Hochreiter & Schmidhuber 1997): T steps of (value in [0,1), marker); two steps are
  marked and the target is the sum of their values. Guessing 1 always gives MSE ~0.167.
- copy: a few random symbols, a run of blanks, a delimiter; the output must reproduce the
  symbols after the delimiter (blank elsewhere).
- sine: sums of sines with random frequencies and phases; predict the next value.
"""

from __future__ import annotations

import numpy as np

from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT, FRACTION, NUMBER
from seqgraph.train.data import PADDING, hold_out


def adding(config: dict, rng: np.random.Generator):
    steps, count = int(config.get("steps", 50)), int(config.get("examples", 2000))
    xs, ys = [], []
    for _ in range(count):
        values = rng.uniform(0, 1, size=steps)
        first = rng.integers(0, max(1, steps // 2))
        second = rng.integers(steps // 2, steps)
        markers = np.zeros(steps)
        markers[[first, second]] = 1.0
        xs.append(np.stack([values, markers], axis=1))
        ys.append(np.array([values[first] + values[second]]))
    return xs, ys


def copy(config: dict, rng: np.random.Generator):
    """ids: 0 blank, 1 delimiter, 2.. symbols; vocab = symbols + 2."""
    symbols, length = int(config.get("symbols", 8)), int(config.get("length", 5))
    delay, count = int(config.get("delay", 10)), int(config.get("examples", 2000))
    xs, ys = [], []
    for _ in range(count):
        seq = rng.integers(2, symbols + 2, size=length)
        x = np.concatenate([seq, np.zeros(delay, np.int64), [1], np.zeros(length, np.int64)])
        y = np.concatenate([np.zeros(length + delay + 1, np.int64), seq])
        xs.append(x.astype(np.int64))
        ys.append(y.astype(np.int64))
    return xs, ys


def sine(config: dict, rng: np.random.Generator):
    steps, count = int(config.get("steps", 50)), int(config.get("examples", 1000))
    waves = int(config.get("waves", 3))
    t = np.arange(steps + 1) * float(config.get("dt", 0.1))
    xs, ys = [], []
    for _ in range(count):
        freq = rng.uniform(0.5, 3.0, size=waves)
        phase = rng.uniform(0, 2 * np.pi, size=waves)
        signal = np.sin(np.outer(t, freq) + phase).sum(axis=1) / waves
        xs.append(signal[:-1, None])
        ys.append(signal[1:, None])
    return xs, ys


def _loader(task):
    def load(config: dict, pattern: str, seed: int):
        xs, ys = task(config, np.random.default_rng([seed, 7]))
        valid = float(config.get("valid_fraction", 0.1))
        test = float(config.get("test_fraction", 0.0))
        return hold_out(xs, ys, valid, seed, PADDING[pattern], test_fraction=test)

    return load


_COMMON = {
    "examples": {**COUNT, "description": "examples in all (held out: valid_fraction)"},
    "valid_fraction": {**FRACTION, "description": "share held out for validation (0.1)"},
    "test_fraction": {**FRACTION, "description": "share held out for test (default 0)"},
}
SOURCES = [
    DataSource(
        "adding",
        _loader(adding),
        {**_COMMON, "steps": {**COUNT, "description": "steps per sequence (default 50)"}},
        "the adding problem (sum of two marked values)",
    ),
    DataSource(
        "copy",
        _loader(copy),
        {
            **_COMMON,
            "symbols": {**COUNT, "description": "distinct symbols (default 8)"},
            "length": {**COUNT, "description": "symbols to copy (default 5)"},
            "delay": {"type": "integer", "minimum": 0, "description": "blanks (default 10)"},
        },
        "copy a few symbols after a run of blanks",
    ),
    DataSource(
        "sine",
        _loader(sine),
        {
            **_COMMON,
            "steps": {**COUNT, "description": "steps per sequence (default 50)"},
            "waves": {**COUNT, "description": "sines per sum (default 3)"},
            "dt": {**NUMBER, "description": "time between steps (default 0.1)"},
        },
        "sums of sines: predict the next value",
    ),
]
