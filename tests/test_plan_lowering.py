"""Facts the lowering's shortcuts rely on, each checked against the per-node derivation it
replaces, on tiny models of every built-in cell (the plan listings themselves are held to
the reference by `tests/test_plan_listing.py` and the numbers by `tests/test_plan.py`)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.array_utils import byte_bounds

from seqgraph import Model
from seqgraph.engine.ops.buffers import owner
from seqgraph.plan import ckernels
from seqgraph.plan.layout import Stack
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


def test_graph_records_are_the_graphs_own_node_dicts_in_insertion_order():
    """A copy of the table (rewrites edit the copy), of the graph's very records, in the
    order networkx (built on demand) lists the nodes, with the same data."""
    graph = plan_of("gru").graph
    records = graph.records()
    assert records is not graph.nodes
    assert list(records) == list(graph.nx.nodes)
    assert all(records[k] is graph.nodes[k] for k in records)
    assert all(records[k] == data for k, data in graph.nx.nodes(data=True))


def test_a_views_record_spans_its_bytes_whatever_its_strides():
    """`ckernels.Views.record`'s first and one-past-last byte (cached per geometry) are
    NumPy's own bounds, for reversed, strided, broadcast, 0-d and empty views."""
    base = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    views = [
        base,
        base[1],
        base[:, ::-1, 1:3],
        base[::-1, :, ::2],
        np.broadcast_to(base[0, 0], (5, 4)),
        base[1, 2, 3, ...],
        base[:, 1:1],
    ]
    found = ckernels.Views()
    for view in views:
        _, (start, strides, shape, dtype), low, high = found.record(view)
        assert (start, strides, shape, dtype) == (
            view.__array_interface__["data"][0],
            view.strides,
            view.shape,
            view.dtype,
        )
        if view.size:
            assert (low, high) == byte_bounds(view)
        else:
            assert low == high == start


@pytest.mark.parametrize("cell", ["lstm", "gru_layer_norm"])
def test_stack_views_are_the_views_at_makes(cell):
    """`Stack.views` (one iteration over a class's rows) gives, node by node, the very view
    `Stack.at` indexes: same memory, shape, strides and base; and falls back to `at` where
    the steps are not rows (a 0-d step) or run past the buffer."""
    lay = plan_of(cell).layout
    stacks = [(lay.value_stack, c) for c in lay.classes]
    stacks += [(lay.grad_stack, c) for c in lay.classes if c in lay.grad_stack]
    for table, c in stacks:
        members = lay.an.members[c]
        made = table[c].views(members)
        assert list(made) == list(members.values())
        for t, k in members.items():
            expected = table[c].at(t)
            assert made[k].__array_interface__ == expected.__array_interface__
            assert made[k].base is expected.base
    scalars = Stack(np.arange(5.0), offset=0)
    assert [v.shape for v in scalars.views({0: "a", 4: "b"}).values()] == [(), ()]
    past = Stack(np.zeros((3, 2)), offset=1)  # steps 0..2 at rows 1..3
    with pytest.raises(IndexError):
        past.views({0: "a", 1: "b", 2: "c"})  # as `at(2)` does: row 3 is not there
