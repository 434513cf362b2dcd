"""The numbers README.md quotes about the plan and the benchmark peers, measured here.

- "an LSTM step's backward is 9 calls, the hand-written one 24": NumPy calls made by the
  plan's backward kernels of one LSTM step (counted through the plan's array module), and
  NumPy operations in one step of tools/numpy_hand.py's LSTM backward loop (counted in its
  source: calls of `np.*`, augmented assignments and binary operators on arrays).
- "same losses as seqgraph's to 1e-5": tools/jax_peer.py's loss against seqgraph's on the
  benchmark's own models and data (tools/bench_peers.py), float32, every cell.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seqgraph import Model
from seqgraph.plan import ckernels, kernels
from seqgraph.runtime import batch as batching

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import numpy_hand  # noqa: E402


class _CountingNumpy:
    """NumPy with every function call counted (types and constants pass through)."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def _step_of(entry: str) -> str:
    return entry.strip().split()[0]


LSTM_6 = {
    "model": {
        "pattern": "many_to_many",
        "input": {"type": "vectors", "size": 4},
        "target": {"type": "ids", "vocab": 5},
        "layers": [{"cell": "lstm", "hidden": 6}],
    }
}


@pytest.mark.skipif(ckernels.compiler() is None, reason="no C compiler ($CC, cc, gcc)")
def test_an_lstm_step_is_3_kernels_forward_and_2_backward_with_compiled_kernels(monkeypatch):
    """With the compiled CPU kernels: the product, the gate add and one C loop forward; the
    product and one C loop backward (the README's Speed section)."""
    monkeypatch.setenv(ckernels.SWITCH, "1")
    model = Model(LSTM_6, dtype="float32")
    plan = model.plan(batching.dummy(model.spec, 3, 6))
    for entries, want in ((plan.forward.entries(), 3), (plan.backward.kernels.entries(), 2)):
        assert {sum(entry[3] == t for entry in entries) for t in range(1, 5)} == {want}


def test_an_lstm_step_backward_is_9_numpy_calls(monkeypatch):
    counter = _CountingNumpy()
    monkeypatch.setattr(kernels, "np", counter)  # the plan's array module on NumPy
    monkeypatch.setenv(ckernels.SWITCH, "0")  # NumPy calls: the compiled kernels make none
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 4},
            "target": {"type": "ids", "vocab": 5},
            "layers": [{"cell": "lstm", "hidden": 6}],
        }
    }
    model = Model(raw, dtype="float32")
    batch = batching.dummy(model.spec, 3, 6)
    model.train_step(batch)  # fills every buffer the backward kernels read
    plan = model.plan(batch)
    listing = str(plan).split("\nbackward:\n", 1)[1].splitlines()
    entries = [line for line in listing if line.startswith("  ")]
    assert len(entries) == len(plan.backward_kernels)
    per_step: dict[str, int] = {}
    for entry, kernel in zip(entries, plan.backward_kernels):
        before = counter.calls
        kernel()
        per_step[_step_of(entry)] = per_step.get(_step_of(entry), 0) + counter.calls - before
    # an inner step: the last has no cell gradient from a later step to add to (8 calls), the
    # first no earlier state to pass a gradient to
    assert {per_step[f"t={t}"] for t in range(1, 5)} == {9}
    assert sum(_step_of(e) == "t=3" for e in entries) == 7  # 7 kernels, two of them adding


def _is_numpy_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "np"
    )


def test_the_hand_written_lstm_step_backward_is_24_numpy_operations():
    tree = ast.parse(textwrap.dedent(inspect.getsource(numpy_hand.lstm)))
    loops = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.For) and "reversed" in ast.unparse(node.iter)
    ]
    assert len(loops) == 1
    body = ast.Module(body=loops[0].body, type_ignores=[])
    # index arithmetic (`a[:, 2 * H : 3 * H]`, `dhs[t - 1]`) works on ints, not arrays
    indices = {
        id(n) for s in ast.walk(body) if isinstance(s, ast.Subscript) for n in ast.walk(s.slice)
    }
    operations = 0
    for node in ast.walk(body):
        if id(node) in indices:
            continue
        if isinstance(node, ast.BinOp | ast.AugAssign) or _is_numpy_call(node):
            operations += 1
    assert operations == 24


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("config", ["tiny", "small"])
def test_jax_peer_gives_seqgraphs_loss(cell, config, tmp_path, capsys):
    pytest.importorskip("jax", reason="the JAX peer of tools/bench.py needs JAX")
    import bench_peers

    ours = bench_peers.seqgraph_step(cell, config)()
    # seqgraph's initial weights reach the JAX worker through a file, as in the benchmark
    saved = tmp_path / "params.npz"
    assert bench_peers.main(["params", cell, config, str(saved)]) == 0
    with np.load(saved) as arrays:
        params = dict(arrays)
    theirs = bench_peers.jax_step(cell, config, params=params)()
    # float32 sums in another order: measured up to 2.9e-7 here (4 ulps at a loss of ~208);
    # 1e-5 leaves room for another CPU's BLAS and XLA build
    assert theirs == pytest.approx(ours, rel=1e-5)
