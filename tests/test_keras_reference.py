"""Keras-convention weights checked against an independent NumPy Keras forward.

The round trips in test_interop.py cannot see a gate order that is wrong the same way in
export and import (e.g. GRU z and r swapped in both). Here the exported `kernel`,
`recurrent_kernel` and `bias` drive a NumPy forward written from the Keras documentation
(`keras.layers.LSTM`: gates i, f, c, o, one bias; `keras.layers.GRU` with reset_after=True:
gates z, r, h, bias of shape (2, 3*units), the reset gate applied after the recurrent
product, h = z*h_prev + (1-z)*hh), and its outputs must equal seqgraph's in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def keras_lstm(x, kernel, recurrent_kernel, bias):
    """keras.layers.LSTM(return_sequences=True, return_state=True), zero initial state."""
    units = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], units))
    c = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        z_i, z_f, z_c, z_o = (z[:, k * units : (k + 1) * units] for k in range(4))
        i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o)
        c = f * c + i * np.tanh(z_c)
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), {"h": h, "c": c}


def keras_gru(x, kernel, recurrent_kernel, bias):
    """keras.layers.GRU(reset_after=True, return_sequences=True), zero initial state."""
    units = recurrent_kernel.shape[0]
    input_bias, recurrent_bias = bias
    h = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        matrix_x = x[:, t] @ kernel + input_bias
        matrix_inner = h @ recurrent_kernel + recurrent_bias
        x_z, x_r, x_h = (matrix_x[:, k * units : (k + 1) * units] for k in range(3))
        rec_z, rec_r, rec_h = (matrix_inner[:, k * units : (k + 1) * units] for k in range(3))
        z = sigmoid(x_z + rec_z)
        r = sigmoid(x_r + rec_r)
        hh = np.tanh(x_h + r * rec_h)
        h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, axis=1), {"h": h}


KERAS = {"lstm": keras_lstm, "gru": keras_gru}


def spec(cell: str) -> dict:
    return {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "vectors", "size": 2},
            "encoders": [],
            "layers": [{"cell": cell, "hidden": 4}, {"cell": cell, "hidden": 5}],
        }
    }


@pytest.mark.parametrize("engine", ["plan", "interp"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras_weights_compute_what_keras_computes(cell, engine):
    model = Model(spec(cell), dtype="float64", seed=4, engine=engine)
    rng = np.random.default_rng(0)
    # biases are small at init; make them large enough that a swapped block shows
    model.set_params({k: v + rng.normal(0, 0.5, v.shape) for k, v in model.params.items()})
    weights = model.export_params("keras")
    x = rng.normal(size=(3, 6, 3))
    out = model.forward({"x": x})

    sequence, finals = x, []
    for layer in ("l0", "l1"):
        sequence, final = KERAS[cell](
            sequence,
            weights[f"{layer}.kernel"],
            weights[f"{layer}.recurrent_kernel"],
            weights[f"{layer}.bias"],
        )
        finals.append(final)
    readout = sequence @ weights["out.W"] + weights["out.b"]  # a linear readout, as in seqgraph

    np.testing.assert_allclose(out["predictions"], readout, rtol=1e-10, atol=1e-10)
    for layer, final in zip(("l0", "l1"), finals):
        for name, value in final.items():
            np.testing.assert_allclose(
                out["state"][f"{layer}.{name}0"], value, rtol=1e-10, atol=1e-10
            )


def test_keras_layouts_have_keras_shapes():
    lstm = Model(spec("lstm"), dtype="float64").export_params("keras")
    assert lstm["l0.kernel"].shape == (3, 16) and lstm["l0.recurrent_kernel"].shape == (4, 16)
    assert lstm["l0.bias"].shape == (16,)
    gru = Model(spec("gru"), dtype="float64").export_params("keras")
    assert gru["l1.kernel"].shape == (4, 15) and gru["l1.recurrent_kernel"].shape == (5, 15)
    assert gru["l1.bias"].shape == (2, 15)
