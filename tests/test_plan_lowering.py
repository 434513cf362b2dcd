"""Facts the lowering's shortcuts rely on, each checked against the per-node derivation it
replaces, on tiny models of every built-in cell (the plan listings themselves are held to
the reference by `tests/test_plan_listing.py` and the numbers by `tests/test_plan.py`)."""

from __future__ import annotations

import pytest

from seqgraph import Model
from seqgraph.engine.ops.buffers import owner
from seqgraph.runtime import batch as batching
from seqgraph.spec.load import builtin_cells

STEPS, BATCH, INPUT, HIDDEN, VOCAB = 4, 2, 3, 5, 7


def plan_of(cell: str, pattern: str = "many_to_many"):
    raw = {
        "model": {
            "pattern": pattern,
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [{"cell": cell, "hidden": HIDDEN}] * 2,
        },
        "dtype": "float64",
    }
    model = Model(raw, dtype="float64")
    return model.plan(batching.dummy(model.spec, BATCH, STEPS))


@pytest.mark.parametrize("pattern", ["many_to_many", "many_to_one"])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_nodes_by_buffer_groups_every_value_by_the_array_that_owns_its_memory(cell, pattern):
    """`Layout.nodes_by_buffer` finds one owner per class; node by node it is the same map."""
    lay = plan_of(cell, pattern).layout
    per_node: dict = {}
    for k, value in lay.value.items():
        per_node.setdefault(id(owner(value)), set()).add(k)
    found = lay.nodes_by_buffer()
    assert {buffer: set(nodes) for buffer, nodes in found.items()} == per_node
    assert sum(len(nodes) for nodes in found.values()) == len(lay.value)  # each node once
