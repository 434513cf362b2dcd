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


def one_layer(cell: str, **layer) -> Model:
    return Model(
        {
            "model": {
                "pattern": "many_to_one",
                "input": {"type": "vectors", "size": 2},
                "target": {"type": "ids", "vocab": 2},
                "layers": [{"cell": cell, "hidden": 3, **layer}],
            }
        },
        dtype="float64",
        seed=0,
    )


def _without(weights: dict, suffix: str) -> dict:
    return {k: v for k, v in weights.items() if not k.endswith(suffix)}


def _doubled(weights: dict) -> dict:
    return {
        k: np.concatenate([v, v]) if k in ("l0.W", "l0.R", "l0.B") else v
        for k, v in weights.items()
    }


LSTM, GRU = one_layer("lstm"), one_layer("gru")
ONNX_LSTM, ONNX_GRU = LSTM.export_params("onnx"), GRU.export_params("onnx")
TORCH_LSTM, KERAS_GRU = LSTM.export_params("pytorch"), GRU.export_params("keras")
REVERSE_GRU = one_layer("gru", direction="reverse")
# (model, source, convention, options, what the one-line refusal must say)
REFUSALS = {
    "onnx unknown option": (LSTM, ONNX_LSTM, "onnx", {"foo": 1}, "option 'foo' is not mapped"),
    "onnx reverse node, forward layer": (
        LSTM,
        ONNX_LSTM,
        "onnx",
        {"direction": "reverse"},
        "direction='reverse' .* runs forward; set direction: reverse on the layer",
    ),
    "onnx clip": (LSTM, ONNX_LSTM, "onnx", {"clip": 1.0}, "do not clip"),
    "onnx input_forget": (LSTM, ONNX_LSTM, "onnx", {"input_forget": 1}, "couples the input"),
    "onnx GRU option, no GRU": (
        LSTM,
        ONNX_LSTM,
        "onnx",
        {"linear_before_reset": 1},
        "belongs to GRU layers, and this model has none",
    ),
    "onnx peepholes into lstm": (
        LSTM,
        {**ONNX_LSTM, "l0.P": np.ones((1, 9))},
        "onnx",
        {},
        "LSTM peepholes.*use cell lstm_peephole",
    ),
    "onnx GRU without linear_before_reset": (
        GRU,
        _without(ONNX_GRU, "linear_before_reset"),
        "onnx",
        {},
        "linear_before_reset=0 \\(the convention's default\\).*use cell gru_reset_before",
    ),
    "onnx two directions, one-direction layer": (
        LSTM,
        _doubled(ONNX_LSTM),
        "onnx",
        {},
        "'l0.W' have shape \\(2, 12, 2\\).*needs \\(1, 12, 2\\).*set bidirectional: true",
    ),
    "onnx bidirectional weights, one-direction layer": (
        LSTM,
        one_layer("lstm", bidirectional=True).export_params("onnx"),
        "onnx",
        {},
        "'l0.W' are missing, and the source holds 'l0.fwd.W'",
    ),
    "onnx initial state": (
        LSTM,
        {**ONNX_LSTM, "l0.initial_h": np.zeros((1, 1, 3))},
        "onnx",
        {},
        "initial states are inputs, not weights: pass them as batch\\['state'\\]",
    ),
    "onnx activations": (
        LSTM,
        ONNX_LSTM,
        "onnx",
        {"activations": ["Sigmoid", "Tanh", "Relu"]},
        "uses \\['sigmoid', 'tanh', 'tanh'\\]",
    ),
    "onnx activation_alpha": (LSTM, ONNX_LSTM, "onnx", {"activation_alpha": [0.5]}, "no alpha"),
    "onnx hidden_size": (LSTM, ONNX_LSTM, "onnx", {"hidden_size": 8}, "has hidden 3"),
    "onnx attribute twice": (
        GRU,
        ONNX_GRU,
        "onnx",
        {"linear_before_reset": 0},
        "given twice with different values",
    ),
    "pytorch option": (LSTM, TORCH_LSTM, "pytorch", {"batch_first": True}, "takes: none"),
    "pytorch transposed": (
        LSTM,
        {**TORCH_LSTM, "weight_ih_l0": TORCH_LSTM["weight_ih_l0"].T},
        "pytorch",
        {},
        "'weight_ih_l0' have shape \\(2, 12\\), but the model needs \\(12, 2\\)",
    ),
    "pytorch reverse weights, one-direction layer": (
        LSTM,
        {**TORCH_LSTM, "weight_ih_l0_reverse": TORCH_LSTM["weight_ih_l0"]},
        "pytorch",
        {},
        "'weight_ih_l0_reverse' match no parameter.*set bidirectional: true",
    ),
    "pytorch module prefix": (
        LSTM,
        {**TORCH_LSTM, "rnn.weight_ih_l0": TORCH_LSTM["weight_ih_l0"]},
        "pytorch",
        {},
        "strip the module prefix",
    ),
    "pytorch projection": (
        LSTM,
        {**TORCH_LSTM, "weight_hr_l0": np.zeros((2, 3))},
        "pytorch",
        {},
        "proj_size",
    ),
    "keras one-row bias into gru": (
        GRU,
        {**KERAS_GRU, "l0.bias": KERAS_GRU["l0.bias"][0]},
        "keras",
        {},
        "reset_after=False: use cell gru_reset_before",
    ),
    "keras reset_after": (GRU, KERAS_GRU, "keras", {"reset_after": False}, "use cell gru_reset"),
    "keras go_backwards, forward layer": (
        GRU,
        KERAS_GRU,
        "keras",
        {"go_backwards": True},
        "set direction: reverse",
    ),
    "keras reverse layer without go_backwards": (
        REVERSE_GRU,
        _without(REVERSE_GRU.export_params("keras"), "go_backwards"),
        "keras",
        {},
        "go_backwards=False \\(the convention's default\\).*runs in reverse",
    ),
    "keras activation": (GRU, KERAS_GRU, "keras", {"activation": "relu"}, "uses tanh"),
    "keras unknown option": (GRU, KERAS_GRU, "keras", {"unit_forget_bias": True}, "not mapped"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_import_refuses_what_it_does_not_map(case):
    model, source, convention, options, match = REFUSALS[case]
    before = {k: np.array(v) for k, v in model.params.items()}
    with pytest.raises(DataError, match=match) as caught:
        model.import_params(source, convention, **options)
    assert "\n" not in str(caught.value)
    for name, value in before.items():  # nothing was half-imported
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)


def test_import_maps_what_onnx_leaves_out_and_allows():
    """ONNX semantics: no B means zero biases, no P zero peepholes; an all-zero P into a plain
    lstm, the layout attribute and the default activations change nothing."""
    model = one_layer("lstm")
    model.import_params(_without(ONNX_LSTM, ".B"), "onnx")
    assert not np.any(model.params["l0.b_ih"]) and not np.any(model.params["l0.b_hh"])
    options = {"activations": ["Sigmoid", "Tanh", "Tanh"], "layout": 1, "clip": None}
    model.import_params({**ONNX_LSTM, "l0.P": np.zeros((1, 9))}, "onnx", **options)
    np.testing.assert_array_equal(model.params["l0.W_ih"], LSTM.params["l0.W_ih"])
    peephole = one_layer("lstm_peephole")
    peephole.import_params(ONNX_LSTM, "onnx")
    assert not np.any(peephole.params["l0.P"])
    gru = one_layer("gru_reset_before")
    gru.import_params(_without(GRU.export_params("onnx"), "linear_before_reset"), "onnx")
    np.testing.assert_array_equal(gru.params["l0.W_hh"], GRU.params["l0.W_hh"])
