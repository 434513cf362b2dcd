"""The plan runners a Model caches, one per batch shape, stay within a byte budget: beam search
over many sources made one per prefix width and row count and kept them all until the
process ran out of memory (1,800 sources x 5 beams x 41 steps: 23.9 GB)."""

from __future__ import annotations

import numpy as np

from seqgraph import Model
from seqgraph.runtime import batch as batching
from seqgraph.runtime import model as model_module

SPEC = {
    "seed": 0,
    "dtype": "float64",
    "model": {
        "pattern": "many_to_many",
        "input": {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": 4},
        "layers": [{"cell": "gru", "hidden": 5}],
    },
}
SHAPES = [(rows, steps) for steps in (2, 3, 4, 5) for rows in (1, 2, 3)]


def _losses(model: Model) -> list[float]:
    out = []
    for rows, steps in SHAPES * 2:  # every shape twice: the second time from the cache
        loss, _ = model.loss_and_grads(batching.dummy(model.spec, rows, steps))
        out.append(loss)
    return out


def test_runners_beyond_the_budget_are_dropped_least_recently_used_first(monkeypatch):
    unbounded = Model(SPEC)
    want = _losses(unbounded)
    assert len(unbounded._runners) == len(SHAPES)  # one per shape, all kept
    one = max(unbounded._runner_bytes.values())
    monkeypatch.setattr(model_module, "RUNNER_CACHE_BYTES", 3 * one)
    bounded = Model(SPEC)
    got = _losses(bounded)
    np.testing.assert_array_equal(got, want)  # rebuilt runners give the same numbers
    assert 1 <= len(bounded._runners) <= 3 and sum(bounded._runner_bytes.values()) <= 3 * one
    assert bounded._runners.keys() == bounded._runner_bytes.keys()
    # the most recent shapes stayed: running the last one again builds nothing
    kept = dict(bounded._runners)
    bounded.loss_and_grads(batching.dummy(bounded.spec, *SHAPES[-1]))
    assert all(bounded._runners[key] is runner for key, runner in kept.items())


def test_a_runner_larger_than_the_budget_is_still_kept(monkeypatch):
    monkeypatch.setattr(model_module, "RUNNER_CACHE_BYTES", 1)
    model = Model(SPEC)
    first, _ = model.loss_and_grads(batching.dummy(model.spec, 2, 3))
    runner = next(iter(model._runners.values()))
    again, _ = model.loss_and_grads(batching.dummy(model.spec, 2, 3))
    assert again == first and next(iter(model._runners.values())) is runner
    model.loss_and_grads(batching.dummy(model.spec, 2, 4))
    assert len(model._runners) == 1 and runner not in model._runners.values()
