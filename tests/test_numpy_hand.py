"""tools/numpy_hand.py (the hand-written NumPy baseline of tools/bench.py) computes the same
loss and gradients as seqgraph, so the benchmark compares equal work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from seqgraph import Model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import numpy_hand  # noqa: E402


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_hand_written_matches_seqgraph(cell):
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": 4},
            "layers": [{"cell": cell, "hidden": 5}],
        }
    }
    model = Model(raw, backend="numpy", dtype="float64", engine="interp")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 6, 3)), rng.integers(0, 4, size=(3, 6))
    loss, grads = model.loss_and_grads({"x": x, "y": y})
    params = {k: np.asarray(v) for k, v in model.params.items()}
    got_loss, got = numpy_hand.loss_and_grads(cell, params, x, y)
    assert got_loss == pytest.approx(loss, rel=1e-12)
    assert set(got) == set(grads)
    for name in grads:
        np.testing.assert_allclose(got[name], grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
