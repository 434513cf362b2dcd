"""Cells: every built-in cell (and cells written only in YAML) under every pattern, checked
against central differences of the model's own loss, and against hand-written PyTorch
references in float64 (weights stored input-major: seqgraph's W_ih is torch's weight_ih^T)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from support import (
    BIDIRECTIONAL_OK,
    BUILTIN_CELLS,
    PATTERNS,
    check_param_grads,
    host,
    make_batch,
    model_spec,
    ragged_lengths,
    record,
)

from seqgraph import Model, load_spec

# Cells that exist only as YAML: adding a cell needs no Python.
USER_CELLS_YAML = """
mgu:
  doc: minimal gated unit, one forget gate
  inputs: [x]
  state: [h]
  output: h
  params:
    W_f: {shape: [input, hidden], init: {dist: uniform, scale: 1/sqrt(hidden)}}
    U_f: {shape: [hidden, hidden], init: {dist: uniform, scale: 1/sqrt(hidden)}}
    b_f: {shape: [hidden], init: {dist: uniform, scale: 0.5}}
    W: {shape: [input, hidden], init: {dist: xavier}}
    U: {shape: [hidden, hidden], init: {dist: orthogonal}}
    b: {shape: [hidden], init: {dist: normal, scale: 0.1}}
  equations:
    - f = sigmoid(x @ W_f + h @ U_f + b_f)
    - n = tanh(x @ W + (f * h) @ U + b)
    - h = (1 - f) * h + f * n
peephole:
  doc: LSTM whose gates also read the cell state
  inputs: [x]
  state: [h, c]
  output: h
  params:
    W: {shape: [input, 4*hidden], init: {dist: uniform, scale: 1/sqrt(hidden)}}
    U: {shape: [hidden, 4*hidden], init: {dist: uniform, scale: 1/sqrt(hidden)}}
    b: {shape: [4*hidden], init: {dist: uniform, scale: 0.3}}
    p_i: {shape: [hidden], init: {dist: uniform, scale: 0.5}}
    p_f: {shape: [hidden], init: {dist: uniform, scale: 0.5}}
    p_o: {shape: [hidden], init: {dist: uniform, scale: 0.5}}
  equations:
    - zi, zf, zg, zo = split(x @ W + h @ U + b, 4)
    - i = sigmoid(zi + p_i * c)
    - f = sigmoid(zf + p_f * c)
    - c = f * c + i * tanh(zg)
    - o = sigmoid(zo + p_o * c)
    - h = o * tanh(c)
"""
USER_CELLS = yaml.safe_load(USER_CELLS_YAML)

CASES = [
    (cell, pattern, bidirectional)
    for cell in (*BUILTIN_CELLS, *USER_CELLS)
    for pattern in PATTERNS
    for bidirectional in ((False, True) if pattern in BIDIRECTIONAL_OK else (False,))
]


def _case_id(case) -> str:
    cell, pattern, bidirectional = case
    return f"{cell}-{pattern}-{'bi' if bidirectional else 'uni'}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_parameter_gradients_match_central_differences(case):
    cell, pattern, bidirectional = case
    cells = {cell: USER_CELLS[cell]} if cell in USER_CELLS else None
    spec = load_spec(model_spec(pattern, cell, bidirectional, cells=cells))
    if pattern == "one_to_one":
        # one step from a zero state never reaches W_hh: learn a (nonzero) initial state
        for layer in spec.raw["model"]["layers"]:
            layer["init_state"] = "learned"
        spec = load_spec(spec.raw)
    model = Model(spec, dtype="float64")
    rng = np.random.default_rng(5)
    model.set_params(
        {
            name: rng.normal(size=info.shape)
            for name, info in model.param_info.items()
            if info.init.get("dist") == "zeros"
        }
    )
    batch = make_batch(spec, size=3, steps=4, out_steps=3)
    check_param_grads(
        model, batch, "cells: every param, directional FD (rel)", label=_case_id(case)
    )


def test_user_cells_unroll_with_their_own_params():
    spec = load_spec(model_spec("many_to_many", "peephole", cells=USER_CELLS))
    model = Model(spec, dtype="float64")
    assert {name for name in model.params if name.startswith("l0.")} == {
        "l0.W",
        "l0.U",
        "l0.b",
        "l0.p_i",
        "l0.p_f",
        "l0.p_o",
    }
    assert model.param_info["l1.W"].shape == (3, 12)  # input = layer 0's hidden, 4*hidden
    assert set(model.forward(make_batch(spec))["state"]) == {"l0.h0", "l0.c0", "l1.h0", "l1.c0"}


def test_lstm_forget_bias_option_fills_the_forget_slice():
    hidden = 4
    spec = model_spec("many_to_many", "lstm", hidden=hidden, layers=1)
    spec["model"]["layers"][0]["options"] = {"forget_bias": 1.0}
    params = {k: host(v) for k, v in Model(spec, dtype="float64").params.items()}
    b_ih, b_hh = params["l0.b_ih"], params["l0.b_hh"]
    np.testing.assert_array_equal(b_ih[hidden : 2 * hidden], 1.0)
    np.testing.assert_array_equal(b_hh[hidden : 2 * hidden], 0.0)
    for bias in (b_ih, b_hh):  # the other gates keep PyTorch's uniform init
        others = np.concatenate([bias[:hidden], bias[2 * hidden :]])
        assert np.all(np.abs(others) <= 1 / np.sqrt(hidden)) and np.unique(others).size == 12

    plain = Model(model_spec("many_to_many", "lstm", hidden=hidden, layers=1), dtype="float64")
    forget = host(plain.params["l0.b_ih"])[hidden : 2 * hidden]
    assert np.unique(forget).size == hidden and np.all(np.abs(forget) < 1 / np.sqrt(hidden))


# ---- PyTorch references ----------------------------------------------------------------------

TORCH_CELLS = {
    "rnn": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "gru": ("GRU", {}),
    "lstm": ("LSTM", {}),
}


def _torch_pair(cell: str, bidirectional: bool, n_in=3, hidden=3, layers=2):
    """A seqgraph Model and an nn.RNN/GRU/LSTM with the same float64 weights."""
    torch = pytest.importorskip("torch", reason="PyTorch is the independent reference")
    out = hidden * (2 if bidirectional else 1)
    spec = {
        "seed": 7,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": n_in},
            "target": {"type": "vectors", "size": out},
            "readout": "identity",
            "layers": [{"cell": cell, "hidden": hidden, "bidirectional": bidirectional}] * layers,
        },
    }
    model = Model(spec, dtype="float64")
    kind, kwargs = TORCH_CELLS[cell]
    net = getattr(torch.nn, kind)(
        n_in,
        hidden,
        num_layers=layers,
        batch_first=True,
        bidirectional=bidirectional,
        dtype=torch.float64,
        **kwargs,
    )
    names = _name_map(layers, bidirectional)
    with torch.no_grad():
        for ours, theirs in names.items():
            value = host(model.params[ours])
            getattr(net, theirs).copy_(torch.from_numpy(value.T.copy()))
    return torch, model, net, names


def _name_map(layers: int, bidirectional: bool) -> dict[str, str]:
    """seqgraph parameter name -> torch parameter name."""
    out = {}
    for layer in range(layers):
        directions = ((".fwd", ""), (".bwd", "_reverse")) if bidirectional else (("", ""),)
        for ours, theirs in directions:
            for w in ("W_ih", "W_hh", "b_ih", "b_hh"):
                kind = "weight" if w.startswith("W") else "bias"
                out[f"l{layer}{ours}.{w}"] = f"{kind}_{w[2:]}_l{layer}{theirs}"
    return out


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(TORCH_CELLS))
def test_matches_pytorch_forward_and_gradients(cell, bidirectional):
    """Two stacked layers, ragged lengths (torch: packed sequences), loss = sum over real
    steps of mean squared error, averaged over the batch."""
    torch, model, net, names = _torch_pair(cell, bidirectional)
    size, steps = 3, 5
    rng = np.random.default_rng(11)
    lengths = ragged_lengths(size, steps)
    x = rng.normal(size=(size, steps, 3))
    y = rng.normal(size=(size, steps, net.hidden_size * (2 if bidirectional else 1)))
    batch = {"x": x, "y": y, "lengths": lengths}

    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    packed_out, final = net(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(
        packed_out, batch_first=True, total_length=steps
    )
    real = torch.from_numpy(np.arange(steps)[None, :] < lengths[:, None])
    loss_t = ((((out - torch.from_numpy(y)) ** 2).mean(-1)) * real).sum() / size
    loss_t.backward()

    result = model.forward(batch)
    mask = np.arange(steps)[None, :] < lengths[:, None]
    np.testing.assert_allclose(
        host(result["predictions"])[mask], out.detach().numpy()[mask], rtol=1e-12, atol=1e-13
    )
    assert result["loss"] == pytest.approx(loss_t.item(), rel=1e-12)
    finals = final if isinstance(final, tuple) else (final,)
    for var, theirs in zip(("h", "c"), finals, strict=False):
        for layer in range(2):
            dirs = (".fwd", ".bwd") if bidirectional else ("",)
            for d, suffix in enumerate(dirs):
                ours = host(result["state"][f"l{layer}{suffix}.{var}0"])
                expected = theirs[layer * len(dirs) + d].detach().numpy()
                np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-13)

    loss, grads = model.loss_and_grads(batch)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    worst = 0.0
    for ours, theirs in names.items():
        expected = getattr(net, theirs).grad.numpy().T
        got = host(grads[ours])
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=ours)
        worst = max(worst, float(np.max(np.abs(got - expected))))
    record("cells: grads vs PyTorch float64 (abs)", worst, f"{cell} {bidirectional=}")
