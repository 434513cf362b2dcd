"""The npz source: valid_fraction and test_fraction hold out examples, the arrays it read
(and ignored) are named in one line saved in data.json, and a missing x or y is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from seqgraph import api
from seqgraph.errors import DataError
from seqgraph.train import data as datasets


def save(path, n=40, **extra) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 5, (n, 6)), y=rng.integers(0, 3, (n, 6)), **extra)
    return str(path)


def test_npz_honours_valid_and_test_fractions(tmp_path):
    path = save(tmp_path / "a.npz")
    sizes = {
        fraction: datasets.load(
            {"source": "npz", "path": path, "valid_fraction": fraction, "test_fraction": 0.25},
            "many_to_many",
            seed=0,
        ).split_sizes()
        for fraction in (0.0, 0.1, 0.5)
    }
    assert sizes[0.0] == {"train": 30, "valid": 0, "test": 10}
    assert sizes[0.1] == {"train": 26, "valid": 4, "test": 10}
    assert sizes[0.5] == {"train": 10, "valid": 20, "test": 10}


def test_npz_names_the_arrays_it_read_and_ignored(tmp_path):
    lengths = np.full(40, 6)
    path = save(tmp_path / "b.npz", lengths=lengths, y_lengths=lengths, foo=np.zeros(2))
    data = datasets.load({"source": "npz", "path": path}, "many_to_many", seed=0)
    assert data.read == f"npz {path}: read x, y, lengths, y_lengths; ignored: foo"
    assert datasets.describe(data)["read"] == data.read
    plain = datasets.load({"source": "npz", "path": save(tmp_path / "c.npz")}, "many_to_many", 0)
    assert plain.read.endswith("c.npz: read x, y")  # nothing ignored: no `ignored:` part
    # a many_to_one target has no time axis: its y_lengths are not read
    one = tmp_path / "d.npz"
    np.savez(one, x=np.zeros((8, 3), np.int64), y=np.zeros(8, np.int64), y_lengths=np.ones(8))
    data = datasets.load({"source": "npz", "path": str(one)}, "many_to_one", 0)
    assert data.read == f"npz {one}: read x, y; ignored: y_lengths"


def test_npz_read_line_is_saved_in_the_run_folder(tmp_path):
    path = save(tmp_path / "e.npz", vocab=np.array(list("abcde")), labels=np.array(list("nop")))
    spec = {
        "name": "npz_tagger",
        "seed": 0,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 4}],
        },
        "data": {"source": "npz", "path": path},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 1000},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    lines: list[str] = []
    api.train(str(tmp_path / "s.yaml"), progress=False, out=str(tmp_path / "run"), log=lines.append)
    facts = json.loads((tmp_path / "run" / "data.json").read_text())
    assert facts["read"] == f"npz {path}: read x, y, vocab, labels"
    assert facts["read"] in lines  # and the run says so as it starts


def test_npz_missing_x_or_y_is_one_line_with_the_fix(tmp_path):
    np.savez(tmp_path / "f.npz", inputs=np.zeros((4, 3)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"f.npz: missing array 'x'; it holds \['inputs', 'y'\]"):
        datasets.load({"source": "npz", "path": str(tmp_path / "f.npz")}, "many_to_one", 0)
