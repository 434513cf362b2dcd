"""ONNX export runs in onnxruntime and gives Model.forward's predictions on real steps."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import DataError, Model
from seqgraph.cli import main
from seqgraph.inspect.onnx_export import export_onnx

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="the export test runs onnxruntime")

CASES = [
    ("lstm", "many_to_many", False, "concat"),
    ("gru", "many_to_one", True, "concat"),
    ("rnn", "many_to_many", True, "sum"),
    ("rnn_relu", "many_to_one", False, "concat"),
    ("lstm", "many_to_one", True, "sum"),
    ("gru", "many_to_many", True, "concat"),
]


@pytest.mark.parametrize("cell,pattern,bidirectional,merge", CASES)
def test_onnx_matches_forward(tmp_path, cell, pattern, bidirectional, merge):
    spec = {
        "model": {
            "pattern": pattern,
            "input": {"type": "ids", "vocab": 9},
            "target": {"type": "ids", "vocab": 4},
            "encoders": [
                {"type": "embedding", "size": 5},
                {"type": "dense", "size": 6, "activation": "tanh"},
            ],
            "layers": [
                {"cell": cell, "hidden": 7, "bidirectional": bidirectional, "merge": merge},
                {"cell": cell, "hidden": 3, "bidirectional": bidirectional, "merge": merge},
            ],
        }
    }
    model = Model(spec, dtype="float32", seed=4)
    path = export_onnx(model, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    x, lengths = rng.integers(0, 9, (3, 6)), np.array([6, 2, 4])
    ours = np.asarray(model.forward({"x": x, "lengths": lengths})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": lengths.astype(np.int32)})[0]
    if pattern == "many_to_many":
        real = np.arange(6)[None, :] < lengths[:, None]
        ours, theirs = ours[real], theirs[real]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_pooled_many_to_one_matches_forward(tmp_path, pool, merge):
    """`model.pool` exports as a length mask, Where and a reduction over time."""
    spec = {
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": 9},
            "target": {"type": "ids", "vocab": 4},
            "encoders": [{"type": "embedding", "size": 5}],
            "layers": [{"cell": "lstm", "hidden": 7, "bidirectional": True, "merge": merge}] * 2,
            "pool": pool,
        }
    }
    model = Model(spec, dtype="float32", seed=4)
    path = export_onnx(model, tmp_path / "pooled.onnx")
    x, lengths = np.random.default_rng(0).integers(0, 9, (3, 6)), np.array([6, 2, 4])
    ours = np.asarray(model.forward({"x": x, "lengths": lengths})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": lengths.astype(np.int32)})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def test_vector_input_and_refusals(tmp_path):
    spec = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 2},
            "target": {"type": "vectors", "size": 2},
            "layers": [{"cell": "lstm", "hidden": 4}],
        }
    }
    model = Model(spec, dtype="float32")
    path = export_onnx(model, tmp_path / "v.onnx")
    x = np.random.default_rng(1).normal(size=(2, 5, 2)).astype(np.float32)
    ours = np.asarray(model.forward({"x": x})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": np.array([5, 5], np.int32)})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    seq2seq = {
        "model": {
            "pattern": "one_to_many",
            "input": {"type": "vectors", "size": 2},
            "target": {"type": "vectors", "size": 1},
            "layers": [{"cell": "gru", "hidden": 3}],
        }
    }
    with pytest.raises(DataError, match="supports many_to_many and many_to_one"):
        export_onnx(Model(seq2seq), tmp_path / "no.onnx")


def test_a_conv_encoder_is_refused_in_one_line(tmp_path, capsys):
    """Regression: a model with a conv encoder reached the dense writer and ended in
    KeyError: 'enc0.W' (a traceback from `seqgraph export`)."""
    spec = {
        "name": "conv_frames",
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "images", "shape": [1, 6, 6]},
            "target": {"type": "ids", "vocab": 3},
            "encoders": [{"type": "conv", "channels": 2}],
            "layers": [{"cell": "lstm", "hidden": 4}],
        },
    }
    with pytest.raises(DataError, match=r"model.encoders\[0\] is a conv encoder"):
        export_onnx(Model(spec), tmp_path / "no.onnx")
    Model(spec).save(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--to", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv encoder" in err and "Traceback" not in err
