"""The gradient ledger: per-step contributions sum to the gradient; ‖∂L/∂h_t‖ per step."""

from __future__ import annotations

import numpy as np

from seqgraph import Model
from seqgraph.cli import main
from seqgraph.inspect.gradflow import ledger

SPEC = {
    "model": {
        "pattern": "many_to_one",
        "input": {"type": "vectors", "size": 2},
        "target": {"type": "vectors", "size": 1},
        "layers": [{"cell": "rnn", "hidden": 6, "bidirectional": True}],
    }
}


def test_contributions_sum_to_the_gradient_and_states_cover_every_step():
    model = Model(SPEC, dtype="float64")
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(3, 7, 2)),
        "y": rng.normal(size=(3, 1)),
        "lengths": np.array([7, 4, 6]),
    }
    book = ledger(model, batch)
    _, grads = model.loss_and_grads(batch)
    for name, grad in grads.items():
        np.testing.assert_allclose(book.sums[name], np.asarray(grad), rtol=1e-12, atol=1e-15)
        assert np.isclose(book.totals[name], np.linalg.norm(np.asarray(grad)), rtol=1e-12)
    # W_hh of each direction is used at every step; the readout outside the time loop
    assert sorted(book.params["l0.fwd.W_hh"]) == list(range(7))
    assert list(book.params["out.W"]) == [None]
    rows, matrix = book.state_matrix()
    assert rows == ["l0.bwd.h", "l0.fwd.h"] and matrix.shape == (2, 7)
    assert np.all(np.isfinite(matrix)) and np.all(matrix >= 0)
    # the forward direction's gradient enters at each sequence's end and fades backwards
    assert matrix[1, 6] > matrix[1, 0]


def test_gradflow_command_writes_csv_and_heatmap(tmp_path, capsys):
    spec = tmp_path / "adding.yaml"
    spec.write_text(
        "model:\n  pattern: many_to_one\n  input: {type: vectors, size: 2}\n"
        "  target: {type: vectors, size: 1}\n  layers: [{cell: rnn, hidden: 8}]\n"
        "data: {source: adding, steps: 30, examples: 20}\n"
    )
    assert main(["gradflow", str(spec), "--out", str(tmp_path / "flow"), "--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "l0.h" in printed and "of 30 steps" in printed
    rows = (tmp_path / "flow" / "state_grads.csv").read_text().splitlines()
    assert rows[0] == "state,t,grad_norm" and len(rows) == 31
    assert (tmp_path / "flow" / "heatmap.png").stat().st_size > 1000
