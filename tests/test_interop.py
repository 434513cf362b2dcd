"""Weight import/export in PyTorch, Keras and ONNX conventions: exact round trips, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import DataError, Model

CELLS = ["rnn", "rnn_relu", "lstm", "gru"]


def spec(cell: str, bidirectional: bool) -> dict:
    return {
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": 6},
            "target": {"type": "ids", "vocab": 3},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [
                {"cell": cell, "hidden": 5, "bidirectional": bidirectional},
                {"cell": cell, "hidden": 3},
            ],
        }
    }


@pytest.mark.parametrize("convention", ["pytorch", "keras", "onnx"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_round_trip_is_exact(convention, cell, bidirectional, tmp_path):
    source = Model(spec(cell, bidirectional), dtype="float64", seed=1)
    exported = source.export_params(convention)
    path = tmp_path / "weights.npz"
    np.savez(path, **exported)
    target = Model(spec(cell, bidirectional), dtype="float64", seed=2)
    target.import_params(path, convention)
    again = target.export_params(convention)
    assert exported.keys() == again.keys()
    for name in exported:
        np.testing.assert_array_equal(exported[name], again[name], err_msg=name)
    batch = {
        "x": np.array([[1, 2, 3], [4, 5, 0]]),
        "y": np.array([0, 2]),
        "lengths": np.array([3, 2]),
    }
    # the same function either way (Keras folds the two biases into one)
    assert target.forward(batch)["loss"] == pytest.approx(source.forward(batch)["loss"], rel=1e-12)
    if convention != "keras" or cell == "gru":
        for name, value in source.params.items():
            np.testing.assert_array_equal(target.params[name], value, err_msg=name)


def test_layouts_follow_each_convention():
    model = Model(spec("lstm", True), dtype="float64")
    torch_names = model.export_params("pytorch")
    assert torch_names["weight_ih_l0"].shape == (20, 4)  # (4*hidden, input)
    assert "weight_hh_l0_reverse" in torch_names and "bias_hh_l1" in torch_names
    onnx = model.export_params("onnx")
    assert onnx["l0.fwd.W"].shape == (1, 20, 4) and onnx["l0.fwd.B"].shape == (1, 40)
    # ONNX gate order i, o, f, c: its second block is seqgraph's fourth (o)
    W = np.asarray(model.params["l0.fwd.W_ih"])
    np.testing.assert_array_equal(onnx["l0.fwd.W"][0][5:10], W[:, 15:20].T)
    keras = Model(spec("gru", False), dtype="float64").export_params("keras")
    assert keras["l0.bias"].shape == (2, 15)  # reset_after=True: input and recurrent biases


def test_mismatched_equations_are_refused():
    with pytest.raises(DataError, match="reset_after=False"):
        Model(spec("gru", False)).export_params("keras", reset_after=False)
    with pytest.raises(DataError, match="linear_before_reset=0"):
        Model(spec("gru", False)).import_params({}, "onnx", linear_before_reset=0)
    own = {
        "cells": {
            "tiny": {
                "inputs": ["x"],
                "state": ["h"],
                "output": "h",
                "params": {"W": {"shape": ["input", "hidden"]}},
                "equations": ["h = tanh(x @ W)"],
            }
        },
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "vectors", "size": 2},
            "target": {"type": "ids", "vocab": 2},
            "layers": [{"cell": "tiny", "hidden": 3}],
        },
    }
    with pytest.raises(DataError, match="cell 'tiny'.*no pytorch counterpart"):
        Model(own).export_params("pytorch")
    with pytest.raises(DataError, match="'weight_hh_l0' are missing"):
        Model(spec("rnn", False)).import_params({"weight_ih_l0": np.zeros((5, 4))})
