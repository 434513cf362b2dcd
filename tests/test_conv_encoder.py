"""A per-frame conv encoder (LRCN style): its kernel is one parameter that every time step
uses, its gradients match central differences, and the plan matches the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model, SpecError

SPEC = {
    "model": {
        "pattern": "many_to_one",
        "input": {"type": "images", "shape": [2, 4, 4]},
        "target": {"type": "ids", "vocab": 3},
        "encoders": [
            {"type": "conv", "channels": 3, "kernel": 3, "pool": 2},
            {"type": "dense", "size": 5, "activation": "tanh"},
        ],
        "layers": [{"cell": "gru", "hidden": 4}],
    }
}


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(3, 4, 2, 4, 4)),
        "y": rng.integers(0, 3, size=3),
        "lengths": np.array([4, 2, 3]),
    }


def test_conv_kernel_is_shared_and_gradients_match_differences():
    model = Model(SPEC, dtype="float64", engine="interp")
    graph = model.graph(steps=4)
    users = {dst[2] for _, dst in graph.out_edges(("enc0", "K", None))}
    assert users == {0, 1, 2, 3}  # one kernel node, an edge to every step's conv
    b = batch()
    loss, grads = model.loss_and_grads(b)
    rng = np.random.default_rng(1)
    for name in ("enc0.K", "enc0.b", "enc1.W", "l0.W_hh"):
        p0 = np.asarray(model.params[name]).copy()
        d = rng.normal(size=p0.shape)
        model.set_params({name: p0 + 1e-6 * d})
        up = model.forward(b)["loss"]
        model.set_params({name: p0 - 1e-6 * d})
        down = model.forward(b)["loss"]
        model.set_params({name: p0})
        fd, an = (up - down) / 2e-6, float(np.sum(np.asarray(grads[name]) * d))
        assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-9, name


def test_plan_matches_interpreter_on_conv_frames():
    b = batch(2)
    slow = Model(SPEC, dtype="float64", engine="interp").loss_and_grads(b)
    fast = Model(SPEC, dtype="float64", engine="plan").loss_and_grads(b)
    assert fast[0] == pytest.approx(slow[0], rel=1e-12)
    for name in slow[1]:
        np.testing.assert_allclose(fast[1][name], slow[1][name], rtol=1e-10, atol=1e-13)


def test_conv_needs_images_and_divisible_frames():
    bad = {"model": {**SPEC["model"], "input": {"type": "vectors", "size": 3}}}
    with pytest.raises(SpecError, match="conv encoders read image frames"):
        Model(bad)
    odd = {"model": {**SPEC["model"], "input": {"type": "images", "shape": [2, 5, 4]}}}
    with pytest.raises(SpecError, match="must divide the 5x4 frames"):
        Model(odd)


def test_dense_straight_on_images_is_refused_with_the_fix():
    raw = {"model": {**SPEC["model"], "encoders": [{"type": "dense", "size": 5}]}}
    with pytest.raises(SpecError, match=r"model.encoders\[0\].type.*put a `\{type: conv"):
        Model(raw)
