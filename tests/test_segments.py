"""Recomputing activations in segments (`runtime/segments.py`) gives the full gradient: the same
loss, parameter gradients and carried states as one pass over the whole sequence."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model, SpecError
from seqgraph.runtime import batch as batching


def spec(cell, layers=2, segment=None, **model):
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": 7},
            "target": {"type": "ids", "vocab": 7},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": cell, "hidden": 5}] * layers,
            **model,
        },
        "dtype": "float64",
    }
    if segment:
        raw["train"] = {"segment_steps": segment}
    return raw


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("segment", [1, 4, 5])
def test_segments_give_the_full_gradient(cell, segment):
    whole, parts = Model(spec(cell)), Model(spec(cell, segment=segment))
    batch = batching.dummy(whole.spec, 3, 13)
    rng = np.random.default_rng(1)
    batch["state"] = {name: rng.normal(size=(3, 5)) for name in _state_names(cell)}
    batch["loss_from"] = 6  # truncated BPTT: the first steps only warm the state up
    for state_at in (None, 8, 10):  # inside a segment, and on a boundary (segment 5)
        loss, grads, states = whole.train_step(batch, state_at=state_at)
        got_loss, got, got_states = parts.train_step(batch, state_at=state_at)
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-10, atol=1e-13)
        for name in states:
            np.testing.assert_allclose(got_states[name], states[name], rtol=1e-12, atol=1e-14)


def _state_names(cell):
    return [f"l{i}.{v}0" for i in range(2) for v in (("h", "c") if cell == "lstm" else ("h",))]


def test_segments_refuse_what_they_cannot_do_exactly():
    both_ways = spec("gru", segment=3)
    both_ways["model"]["layers"] = [{"cell": "gru", "hidden": 5, "bidirectional": True}]
    with pytest.raises(SpecError, match="train.segment_steps.*bidirectional"):
        Model(both_ways)
    with pytest.raises(SpecError, match="many_to_one"):
        Model(spec("gru", segment=3, pattern="many_to_one"))
    model = Model(spec("lstm", segment=3))
    batch = batching.dummy(model.spec, 2, 7)
    batch["lengths"] = np.array([7, 4])
    with pytest.raises(SpecError, match="without padding"):
        model.train_step(batch)
