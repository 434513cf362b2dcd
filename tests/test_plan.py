"""The execution plan (`plan.py`) gives the interpreter's numbers (`autodiff.Program`).

Every case runs one spec through `Model(engine="plan")` and `Model(engine="interp")` in
float64 and compares the loss and every parameter gradient to ~1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model
from seqgraph import batch as batching

CUSTOM_LSTM = {  # a user cell with one weight per gate: nothing fused
    "inputs": ["x"],
    "state": ["h", "c"],
    "output": "h",
    "params": {
        **{
            f"W_{g}": {"shape": ["input", "hidden"], "init": {"dist": "uniform", "scale": 0.3}}
            for g in "ifgo"
        },
        **{
            f"U_{g}": {"shape": ["hidden", "hidden"], "init": {"dist": "uniform", "scale": 0.3}}
            for g in "ifgo"
        },
        "b": {"shape": ["hidden"], "init": {"dist": "uniform", "scale": 0.3}},
    },
    "equations": [
        "i = sigmoid(x @ W_i + h @ U_i + b)",
        "f = sigmoid(x @ W_f + h @ U_f)",
        "g = tanh(x @ W_g + h @ U_g)",
        "o = sigmoid(x @ W_o + h @ U_o)",
        "c = f * c + i * g",
        "h = o * tanh(c) / (1 + exp(-h))",
    ],
}


def spec(cell="lstm", layers=1, pattern="many_to_many", ids=False, **layer):
    model = {
        "pattern": pattern,
        "input": {"type": "ids", "vocab": 7} if ids else {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": 4},
        "layers": [{"cell": cell, "hidden": 5, **layer}] * layers,
    }
    if ids:
        model["encoders"] = [{"type": "embedding", "size": 6}]
    out = {"model": model, "dtype": "float64"}
    if cell == "custom":
        out["cells"] = {"custom": CUSTOM_LSTM}
    return out


def check_same(raw, batch, feedback="teacher", calls=2):
    plan = Model(raw, backend="numpy", dtype="float64", engine="plan")
    interp = Model(raw, backend="numpy", dtype="float64", engine="interp")
    loss, grads = interp.loss_and_grads(batch, feedback)
    for _ in range(calls):  # buffers are reused: the second call must not see the first
        got_loss, got = plan.loss_and_grads(batch, feedback)
        assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
        assert set(got) == set(grads)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12, err_msg=name)
    return plan


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "gru", "lstm", "custom"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_many_to_many_matches_interpreter(cell, layers, padded):
    raw = spec(cell, layers)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5)
    if padded:
        batch["lengths"] = np.array([5, 2, 4])
    check_same(raw, batch)


@pytest.mark.parametrize(
    "raw",
    [
        spec("lstm", pattern="many_to_one"),
        spec("gru", 2, bidirectional=True),
        spec("lstm", bidirectional=True, merge="sum"),
        spec("lstm", ids=True),
        spec("rnn", init_state="learned"),
    ],
)
def test_other_shapes_match_interpreter(raw):
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 4)
    batch["lengths"] = np.array([4, 3])
    check_same(raw, batch)


def test_feedback_patterns_match_interpreter():
    raw = spec("gru", pattern="encoder_decoder")
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, 2, 3, out_steps=4)
    check_same(raw, batch)
    check_same(raw, batch, feedback="free")
    raw = spec("lstm", pattern="one_to_many")
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 1, out_steps=3)
    check_same(raw, batch)


def test_carried_state_matches_interpreter():
    raw = spec("lstm")
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 3)
    rng = np.random.default_rng(1)
    batch["state"] = {"l0.h0": rng.normal(size=(2, 5)), "l0.c0": rng.normal(size=(2, 5))}
    check_same(raw, batch)


def test_time_batching_makes_one_product_per_projection():
    """Input projection and readout run once over all steps; the recurrence does not."""
    model = Model(spec("lstm", 2), dtype="float64")
    plan, _ = model.plan(batching.dummy(model.spec, 2, 6))
    assert {("l0", "t#1"), ("l1", "t#1"), ("out", "xW")} <= set(plan.batched)
    assert not any(c in plan.batched for c in plan.an.recurrent)
    products = [u for u in plan.units if plan.an.node.get(u[1], {}).get("op") == "matmul"]
    assert len(products) == 2 * 6  # h @ W_hh per layer and step; nothing else per step


def test_plan_is_cached_per_batch_shape():
    model = Model(spec("rnn"), dtype="float64")
    short, long = (batching.dummy(model.spec, 2, n) for n in (3, 6))
    first = model.plan(short)[0]
    assert model.plan(long)[0] is not first
    assert model.plan(batching.dummy(model.spec, 2, 3, seed=5))[0] is first


def test_single_sequence_batch_matches_interpreter():
    """Regression: with B=1 a per-step loss is 0-d, and its slot must stay a view."""
    raw = spec("gru")
    check_same(raw, batching.dummy(Model(raw, dtype="float64").spec, 1, 4))
