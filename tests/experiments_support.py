"""A tiny sentiment classifier trained in a few steps on sentences made in the test, shared by
the tracking, sweep, compare and report tests (no ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

GOOD = ["great food", "lovely staff", "really good", "great place", "very nice"]
BAD = ["awful food", "rude staff", "really bad", "terrible place", "very poor"]


def sentences(folder: Path, count: int = 120) -> Path:
    """`text<TAB>label` lines, labels 1 (good) and 0 (bad), in folder/reviews.txt."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        label = (i // 10 + i) % 2  # mod10 holds out lines 8, 18, ...: both labels in each split
        picked = rng.choice(GOOD if label else BAD, size=2)
        lines.append(f"{picked[0]} and {picked[1]}\t{label}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reviews.txt").write_text("\n".join(lines) + "\n")
    return folder


def classifier_spec(tmp_path: Path, name: str = "tiny_sentiment", **train) -> Path:
    """A spec file for a word-level GRU classifier of `sentences`, 6 steps by default."""
    data = sentences(tmp_path / "data")
    spec = {
        "name": name,
        "seed": 1,
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 6}],
            "layers": [{"cell": "gru", "hidden": 5}],
        },
        "data": {
            "source": "tsv",
            "root": str(data),
            "files": ["reviews.txt"],
            "split": "mod10",
            "tokenizer": "word",
        },
        "train": {
            "steps": 6,
            "batch_size": 8,
            "lr": 0.01,
            "log_every": 2,
            "eval_every": 2,
            "valid_batches": 2,
            "checkpoint_every": 100,
            **train,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
