"""Facts the lowering's shortcuts rely on, each checked against the per-node derivation it
replaces, on tiny models of every built-in cell (the plan listings themselves are held to
the reference by `tests/test_plan_listing.py` and the numbers by `tests/test_plan.py`)."""

from __future__ import annotations

import functools
import itertools

import networkx as nx
import numpy as np
import pytest
from numpy.lib.array_utils import byte_bounds

from seqgraph import Model
from seqgraph.engine import ops
from seqgraph.engine.graph import topological_order
from seqgraph.engine.ops.buffers import owner
from seqgraph.errors import GraphError
from seqgraph.plan import (
    analysis,
    backward,
    ckernels,
    fusion,
    kernels_vjp,
    liveness,
    rewrites,
    siblings,
)
from seqgraph.plan import layout as layout_module
from seqgraph.plan import schedule as scheduling
from seqgraph.plan.analysis import AttrsKeys, attrs_key, positions
from seqgraph.plan.layout import Stack, resolve_cells
from seqgraph.plan.schedule import first_ready_order
from seqgraph.runtime import batch as batching
from seqgraph.spec.load import builtin_cells

STEPS, BATCH, INPUT, HIDDEN, VOCAB = 4, 2, 3, 5, 7


def plan_of(cell: str, pattern: str = "many_to_many", ragged: bool = False):
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
    batch = batching.dummy(model.spec, BATCH, STEPS)
    if ragged:  # sequences of different lengths: masks not known to be all true
        batch["lengths"] = np.array([STEPS, STEPS - 2])
    return model.plan(batch)


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


# ---- the second round's shortcuts (issue #17, lowering at T = 10,000) -------------------


def test_attrs_keys_are_the_repr_key_of_each_attrs_whatever_dict_holds_them():
    """`AttrsKeys` finds attrs of plain scalars by their items and types: each key is still
    `attrs_key` of that very dict, also where equal values have different reprs (True and
    1, 0.0 and -0.0) and for values that cannot be hashed (lists, arrays)."""
    cases = [
        {"start": 0, "stop": 5, "axis": -1},
        {"start": 0, "stop": 5, "axis": -1},  # the same items, another dict
        {"axis": -1, "stop": 5, "start": 0},  # the same items in another order
        {"axis": 1},
        {"axis": True},
        {"axis": 1.0},
        {"scale": 0.0},
        {"scale": -0.0},
        {"name": "x", "flag": None},
        {"parts": [1, 2]},
        {"value": np.arange(3.0)},
        {"shape": (2, 3)},
        {"shape": (2.0, 3)},
        {},
    ]
    keys = AttrsKeys()
    for _ in range(2):  # asked again: the held key, still the right one
        assert [keys(attrs) for attrs in cases] == [attrs_key(attrs) for attrs in cases]
    plan = plan_of("lstm_layer_norm")
    for node in plan.an.node.values():
        assert keys(node["attrs"]) == attrs_key(node["attrs"])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_layer_norm"])
def test_positions_has_grad_and_run_order_are_their_per_node_forms(cell):
    """`analysis.positions`, `Analysis.has_grad` (inputs that need a gradient found by a
    set intersection) and the run order the three liveness passes share, against the
    per-node derivations they replace."""
    plan = plan_of(cell)
    an, sched = plan.an, plan.schedule
    assert positions(an.order) == {k: i for i, k in enumerate(an.order)}
    assert an.pos == {k: i for i, k in enumerate(an.order)}
    has = {plan.graph.loss}
    for k in reversed(an.order):
        if k in has and an.node[k]["kind"] == "op":
            has.update([i for i in an.node[k]["inputs"] if i in an.needs_grad])
    assert an.has_grad(plan.graph.loss) == has
    run_order = liveness.unit_positions(sched)
    assert run_order == {u[1]: i for i, u in enumerate(sched.units) if u[0] == "node"}


@pytest.mark.parametrize(("pattern", "ragged"), [("many_to_many", True), ("many_to_one", False)])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_unread_by_columns_is_the_per_node_unread_in_backward(cell, pattern, ragged):
    """`_UnreadByClass.every` (a buffer's nodes' own records asked as columns) is
    `_unread_in_backward` of each node, for every node alone and every buffer's nodes;
    and the passes that ask it find what the per-node form finds."""
    plan = plan_of(cell, pattern, ragged)
    an, lay = plan.an, plan.layout
    unread = liveness._UnreadByClass(an)
    answers = {k: liveness._unread_in_backward(an, k) for k in an.live}
    assert {k: unread.every([k]) for k in an.live} == answers
    assert {k: unread(k) for k in an.live} == answers
    assert True in answers.values() and False in answers.values()
    for nodes in lay.nodes_by_buffer().values():
        assert unread.every(nodes) == all(answers[k] for k in nodes)
    assert unread.every([])
    per_node = [
        c
        for c in lay.classes
        if c not in lay.source
        and c not in lay.in_place
        and all(answers[k] for k in lay.nodes_by_buffer()[id(owner(lay.value_stack[c].arr))])
    ]
    assert liveness.dead_in_backward(an, lay) == per_node


def takes_turns_per_node(an, position: dict, slots: dict) -> bool:
    """`liveness._takes_turns` node by node: each node's touched positions, then spans."""
    spans: dict = {}
    for k, index in slots.items():
        touched = [position[k]] if k in position else []
        for user, _ in an.consumers.get(k, []):
            if user in position and an.addn_of_class(user) is None:
                touched.append(position[user])
            elif user not in slots:
                return False
        if an.node[k]["kind"] == "op":
            touched += [position[i] for i in an.node[k]["inputs"] if i in position]
        if not touched:
            return False
        lo, hi = spans.get(index, (touched[0], touched[0]))
        spans[index] = (min(lo, *touched), max(hi, *touched))
    seeds = {index for k, index in slots.items() if k[2] is None}
    for parity in (0, 1):
        runs = sorted((span, i) for i, span in spans.items() if i % 2 == parity)
        if any(a[0][1] >= b[0][0] for a, b in zip(runs, runs[1:])):
            return False
        if any(i in seeds for _, i in runs[1:]):
            return False
    return True


@pytest.mark.parametrize(("pattern", "ragged"), [("many_to_many", True), ("many_to_one", False)])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_turns_by_columns_are_the_per_node_turns(cell, pattern, ragged, monkeypatch):
    """`liveness._takes_turns` (positions looked up as columns, spans by NumPy) answers as
    its per-node form for every buffer `rolling_grads` asks about, and for the same nodes
    with their slots taken two by two (spans of one parity then overlap)."""
    asked = []
    by_columns = liveness._takes_turns

    def recorded(an, position, slots):
        asked.append((an, dict(position), dict(slots)))
        return by_columns(an, position, slots)

    monkeypatch.setattr(liveness, "_takes_turns", recorded)
    plan_of(cell, pattern, ragged)
    for an, position, slots in asked:
        assert by_columns(an, position, slots) == takes_turns_per_node(an, position, slots)
        paired = {k: index // 2 for k, index in slots.items()}
        assert by_columns(an, position, paired) == takes_turns_per_node(an, position, paired)


def test_turns_are_asked_of_buffers_that_take_turns_and_of_buffers_that_do_not(monkeypatch):
    """The check above meets both answers (an LSTM's dc takes turns, its dh does not)."""
    answers = []
    by_columns = liveness._takes_turns

    def recorded(an, position, slots):
        answers.append(by_columns(an, position, slots))
        return answers[-1]

    monkeypatch.setattr(liveness, "_takes_turns", recorded)
    plan_of("lstm")
    assert True in answers and False in answers


@pytest.mark.parametrize(("pattern", "ragged"), [("many_to_many", True), ("many_to_one", False)])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_class_reads_by_columns_are_their_per_node_forms(cell, pattern, ragged):
    """`Layout._each_read_alone` (a class's inputs and their consumers as columns) and
    `Analysis.reader_classes` (from the folded graph's edges) against the per-node
    derivations they replace, at every class and input position."""
    plan = plan_of(cell, pattern, ragged)
    an, lay = plan.an, plan.layout
    answers = []
    for cls in lay.classes:
        members = list(an.members[cls].values())
        readers = {analysis.class_of(u) for k in members for u, _ in an.consumers.get(k, [])}
        assert an.reader_classes(cls) == readers
        for position in range(len(an.inputs(members[0]))):
            if len({len(an.inputs(k)) for k in members}) != 1:
                continue
            alone = all(
                an.consumers.get(an.inputs(k)[position]) == [(k, position)]
                and an.inputs(k)[position] not in an.outputs
                and an.meta[an.inputs(k)[position]] == an.meta[k]
                for k in members
            )
            assert lay._each_read_alone(cls, position) == alone
            answers.append(alone)
    assert True in answers and False in answers


@pytest.mark.parametrize("pattern", ["many_to_many", "encoder_decoder"])
@pytest.mark.parametrize("cell", ["lstm", "gru_layer_norm", "rnn"])
def test_stackable_classes_are_those_with_one_shape_by_a_set(cell, pattern):
    """`Analysis.stackable` (every member's shape and dtype the first's, by list.count) is
    the per-class set of shapes of one element, over contiguous steps."""
    an = plan_of(cell, pattern).an
    answers = {}
    for cls, members in an.members.items():
        steps = sorted(members)
        answers[cls] = (
            None not in members
            and steps == list(range(steps[0], steps[-1] + 1))
            and len({an.meta[k] for k in members.values()}) == 1
        )
    assert {cls: an.stackable(cls) for cls in an.members} == answers
    assert True in answers.values() and False in answers.values()


def dead_soon_per_node(lay, c, position: dict, allowed, views: dict | None) -> bool:
    """`liveness._dead_soon` member by member, in the order they run."""
    an = lay.an
    steps = sorted(an.members[c].values(), key=lambda k: position.get(k, -1))
    for k, following in zip(steps, steps[1:] + [None]):
        if position.get(k) is None or k in an.outputs:
            return False
        readers = liveness._readers(an, k, views or {})
        if readers is None:
            return False
        for user, i in readers:
            place = position.get(user)
            if place is None or user[2] != k[2] or (allowed and not allowed(user, i)):
                return False
            if following is not None and place > position[following]:
                return False
    return True


@pytest.mark.parametrize(("pattern", "ragged"), [("many_to_many", True), ("many_to_one", False)])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_dead_soon_by_columns_is_the_per_member_walk(cell, pattern, ragged, monkeypatch):
    """`liveness._dead_soon` (places, readers and steps compared as columns) answers as
    the member-by-member walk for every class `dead_values` and `dead_grads` ask about,
    and for every laid-out class with no limit on its readers."""
    asked = []
    by_columns = liveness._dead_soon

    def recorded(lay, c, position, allowed=None, views=None):
        asked.append((lay, c, dict(position), allowed, views))
        return by_columns(lay, c, position, allowed, views)

    monkeypatch.setattr(liveness, "_dead_soon", recorded)
    plan = plan_of(cell, pattern, ragged)
    position = liveness.unit_positions(plan.schedule)
    asked += [(plan.layout, c, position, None, None) for c in plan.layout.classes]
    answers = []
    for lay, c, position, allowed, views in asked:
        answers.append(by_columns(lay, c, position, allowed, views))
        assert answers[-1] == dead_soon_per_node(lay, c, position, allowed, views)
    assert True in answers and False in answers


def test_graph_order_is_networkx_topological_sort_of_an_unrolled_graph():
    """`Graph.order` (the inputs table built with map and zip) is still networkx's order."""
    graph = plan_of("gru_layer_norm", "many_to_one").graph
    assert graph.order() == list(nx.topological_sort(graph.nx))


@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_resolved_cells_are_the_per_node_chain_ends(cell, monkeypatch):
    """`layout.resolve_cells` (every node its own cell in C, then the linked few followed)
    gives each node the end of its chain of links, in the gradients' order, as the per-node
    comprehension did, on the very links each built-in cell's layout makes."""
    seen = []

    def recording(links, keys):
        seen.append((dict(links), list(keys)))
        return resolve_cells(links, keys)

    monkeypatch.setattr(layout_module, "resolve_cells", recording)
    plan_of(cell)
    assert seen
    for links, keys in seen:

        def find(k, links=links):
            while links.get(k, k) != k:
                k = links[k]
            return k

        expected = {k: k if links.get(k, k) == k else find(k) for k in keys}
        found = resolve_cells(links, keys)
        assert list(found.items()) == list(expected.items())


def test_stack_views_of_steps_in_any_order_are_the_views_at_makes():
    """`Stack.views` zips the rows with the members where the steps come in order, and
    indexes them otherwise: both give each node its own step's row, in the members' order."""
    stack = Stack(np.arange(12.0).reshape(4, 3), offset=1)  # steps 0..2 at rows 1..3
    for members in ({0: "a", 1: "b", 2: "c"}, {2: "c", 0: "a", 1: "b"}, {1: "b", 2: "c"}):
        made = stack.views(members)
        assert list(made) == list(members.values())
        for t, k in members.items():
            assert made[k].__array_interface__ == stack.at(t).__array_interface__


def test_first_ready_order_is_the_topological_sort_by_unit_number():
    """`schedule.first_ready_order` (a heap of unit numbers) is `topological_order` with
    the unit number as priority, on random DAGs whose edges run both ways in the numbering
    (a batched class's unit is numbered at its first node but reads later ones)."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40, 200):
        rank = rng.permutation(n)  # a hidden dependency order, unrelated to the numbers
        deps = [
            {int(v) for v in np.flatnonzero(rank < rank[u]) if rng.random() < 0.1} for u in range(n)
        ]
        expected = topological_order(range(n), deps.__getitem__, lambda u: u)
        assert first_ready_order(deps) == expected


def test_first_ready_order_names_a_cycle():
    with pytest.raises(GraphError, match="cycle"):
        first_ready_order([{1}, {0}])


@pytest.mark.parametrize("pattern", ["many_to_many", "many_to_one", "encoder_decoder"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_layer_norm"])
def test_live_shapes_and_leftover_buffers_are_their_per_node_forms(cell, pattern):
    """`Analysis._live_in_order` (one backward sweep of set updates), the shapes `refresh` infers
    inline, and the nodes the layout finds outside every class buffer by set difference
    (`Layout.singles`, the gradients of their own), against the per-node walks they
    replace."""
    plan = plan_of(cell, pattern)
    an, lay = plan.an, plan.layout
    live, stack = set(an.outputs), list(an.outputs)  # the depth-first walk
    while stack:
        for source in an.node[stack.pop()]["inputs"]:
            if source not in live:
                live.add(source)
                stack.append(source)
    found, keys, records = an._live_in_order(list(an.outputs))
    assert found == live == an.live
    assert keys == [k for k in an.order if k in live]
    assert all(record is an.node[k] for k, record in zip(keys, records, strict=True))
    memo, meta = {}, {k: v for k, v in an.meta.items() if an.node[k]["kind"] == "input"}
    for k in an.order:
        if k in live and k not in meta:
            meta[k] = an._shape(an.node[k], meta, memo)
    fresh = an.fork()  # shapes inferred afresh, inline, from the data's alone
    fresh.meta = {k: v for k, v in an.meta.items() if an.node[k]["kind"] == "input"}
    fresh.refresh()
    assert {k: meta[k] for k in live} == {k: fresh.meta[k] for k in live}
    in_classes = {k for c in lay.classes for k in an.members[c].values()} | set(lay.placed)
    assert lay.singles == [k for k in an.order if k in live and k not in in_classes]
    own = [
        k
        for k in lay.grad
        if lay.base.get(k) is not None and lay.grad_buffers[lay.base[k]] is lay.grad[k]
    ]
    per_node = [
        k for k in an.order if k in an.needs_grad and k not in in_classes and k not in lay.alias_of
    ]
    assert [k for k in own if k in set(per_node)] == per_node


def units_node_by_node(an, lay, batched: dict) -> tuple[list, dict]:
    """What `schedule.number_units` finds, by testing every node in graph order."""
    units, unit_of, class_unit = [], {}, {}
    for k in an.order:
        if k not in an.live or k in lay.alias_of or an.node[k]["kind"] != "op":
            continue
        c = k if k[2] is None else k[:2]
        if c in batched and c not in class_unit:
            class_unit[c] = len(units)
            units.append(("class", c))
        elif c not in batched:
            units.append(("node", k))
        unit_of[k] = class_unit[c] if c in batched else len(units) - 1
    return units, unit_of


@pytest.mark.parametrize("pattern", ["many_to_many", "encoder_decoder"])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_units_by_class_are_the_per_node_units_and_reads(cell, pattern):
    """`schedule.number_units` (class by class, one sort) numbers the units as a test of
    every node in graph order does, and `schedule.unit_inputs` (each class's reads as
    columns made from its input patterns) gives every unit the units it reads, as
    following each node's inputs one by one does; ragged batches too (masks that are not
    all true keep `where` nodes of their own)."""
    for ragged in (False, True) if pattern == "many_to_many" else (False,):
        plan = plan_of(cell, pattern, ragged)
        an, lay, batched = plan.an, plan.layout, plan.schedule.batched
        units, unit_of = scheduling.number_units(an, lay, batched)
        assert (units, unit_of) == units_node_by_node(an, lay, batched)
        found = scheduling.unit_inputs(an, lay, units, unit_of)
        assert found == scheduling.unit_inputs_per_node(an, lay, units, unit_of)
        assert any(found)


def wanted_node_by_node(an, lay, k, skip: set) -> list:
    """The input positions `_Emitter._node_vjp` emits a kernel for, node `k` alone."""
    node, own = an.node[k], lay.cell[k]
    if ops.OPS[node["op"]].variadic_sum:
        return ["sum"]  # `_addn_vjp` may emit one
    return [
        i
        for i, source in enumerate(node["inputs"])
        if source in an.needs_grad and i not in skip and lay.cell[source] != own
    ]


@functools.cache
def shared_plan(cell: str, pattern: str, ragged: bool = False):
    """`plan_of`, made once for the tests that only read it."""
    return plan_of(cell, pattern, ragged)


@pytest.mark.parametrize(("pattern", "ragged"), [("many_to_many", True), ("many_to_one", False)])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_class_wanted_positions_are_each_steps_own(cell, pattern, ragged):
    """`backward.class_wanted` (decided over a class's columns) gives the positions that
    every step's node gets a VJP kernel for, node by node, where it gives any; it says so
    for most classes, and finds idle ones ([]: the views of every gated cell)."""
    plan = shared_plan(cell, pattern, ragged)
    an, lay = plan.an, plan.layout
    idle = known = classes = 0
    for c, members in an.members.items():
        if len(c) != 2 or c in plan.batched or an.kind(next(iter(members.values()))) != "op":
            continue
        classes += 1
        skip = set(plan.deferred.get(c, ()))
        wanted = backward.class_wanted(an, lay, c, skip)
        if wanted is None:
            continue
        known += 1
        idle += wanted == []
        assert all(wanted_node_by_node(an, lay, k, skip) == wanted for k in members.values()), c
    assert idle or cell.startswith("rnn")
    assert known > classes // 2


def readers_of_column_blocks_node_by_node(an) -> tuple[list, dict]:
    """`siblings._readers_of_column_blocks` as it was: every view node's block alone."""
    views = (name for name, op in ops.OPS.items() if op.view is not None)
    readers, blocks = set(), {}
    for v in an.nodes_of(*views):
        blocks[v] = siblings._column_block(an, v)
        if blocks[v] is not None:
            readers.update(k for k, _ in an.consumers.get(v, ()))
    return sorted(readers, key=an.pos.__getitem__), blocks


@pytest.mark.parametrize(
    ("cell", "pattern"),
    [(cell, "many_to_many") for cell in sorted(builtin_cells())] + [("gru", "encoder_decoder")],
)
def test_column_blocks_by_class_are_the_per_node_blocks(cell, pattern):
    """The sibling merge's column blocks, found class by class (`siblings._class_blocks`),
    and the readers it scans are the per-node ones, before and after the rewrites; the
    classes found whole hold every gated cell's gate views."""
    plan = shared_plan(cell, pattern)
    for an in (plan.an, rewritten_before_siblings(plan)):
        readers, blocks = readers_of_column_blocks_node_by_node(an)
        found: dict = {}
        assert siblings._readers_of_column_blocks(an, found) == readers
        assert {v: found[v] for v in blocks} == blocks
        assert {v: b for v, b in found.items() if b is not None} == {
            v: b for v, b in blocks.items() if b is not None
        }
        whole = [c for c in an.members if siblings._class_blocks(an, c, {})]
        assert whole or cell.startswith("rnn")


def rewritten_before_siblings(plan):
    """The plan's graph through the rewrites but before any sibling merge."""
    an = plan.an.__class__(
        plan.graph, dict(plan.an.meta), list(plan.outputs), plan.an.dtype, full=True
    ).fork()
    for step in rewrites.steps():
        if step(an):
            an.update()
    return an


def has_grad_walked(an, loss) -> set:
    """`Analysis.has_grad`'s walk back from the loss, node by node."""
    has = {loss}
    for k in reversed(an.order):
        if k in has and an.node[k]["kind"] == "op":
            has.update([i for i in an.node[k]["inputs"] if i in an.needs_grad])
    return has


@pytest.mark.parametrize("unread_output", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru_layer_norm", "rnn"])
def test_has_grad_without_the_walk_is_the_walk(cell, unread_output):
    """Where the first reader of every node that needs a gradient (but the loss and the
    nodes nothing reads, like the final states) needs one too, `has_grad` skips the walk
    (`Analysis.has_grad_by_first_readers`): the same set. With an output that needs a
    gradient and that is the first reader of the last hidden state (tanh of it, read by
    nothing), the walk decides."""
    plan = shared_plan(cell, "many_to_many")
    an, loss = plan.an.fork(), plan.graph.loss
    if unread_output:
        extra = ("extra", "tanh_h", None)
        last_h = next(k for k in reversed(an.order) if k[1] == "h" and k in an.needs_grad)
        an.order.insert(an.pos[an.consumers[last_h][0][0]], extra)  # read first by extra
        an.set_node(extra, {"kind": "op", "op": "tanh", "inputs": (last_h,), "attrs": {}})
        an.outputs = an.outputs | {extra}
        an.refresh()
        assert extra in an.needs_grad
    assert (an.has_grad_by_first_readers(loss) is None) is unread_output
    assert an.has_grad(loss) == has_grad_walked(an, loss)
    assert all(an.consumers.values())  # no empty list left by a lookup


@pytest.mark.parametrize("pattern", ["many_to_many", "encoder_decoder"])
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_input_patterns_by_columns_are_the_step_by_step_ones(cell, pattern):
    """`Analysis._input_pattern_by_columns` (a class's steps in order: its sources split into
    scope, name and step columns) finds the pattern the step-by-step form finds, for every
    input of every class; and for sources shifted by hand (a step off, another class, a
    boundary)."""
    an = shared_plan(cell, pattern).an
    checked = 0
    for c, members in an.members.items():
        steps = list(members)
        if len(c) != 2 or steps != list(range(steps[0], steps[0] + len(steps))):
            continue
        for i in range(len(an.inputs(members[steps[0]]))):
            read = [an.inputs(k)[i] for k in members.values()]
            if len(steps) < 2 or read.count(read[0]) == len(read):
                continue
            found = an._input_pattern_by_columns(read, steps[0])
            assert found == an._input_pattern_by_steps(steps, read), (c, i)
            checked += found is not None
    assert checked
    source = ("l0", "h", None)
    reads = {
        "same step": [("s", "x", t) for t in range(1, 5)],
        "step before, boundary": [("s", "h0", None)] + [("s", "h", t) for t in range(1, 4)],
        "step after, boundary": [("s", "h", t) for t in range(2, 5)] + [source],
        "a step off": [("s", "x", 1), ("s", "x", 2), ("s", "x", 4), ("s", "x", 4)],
        "another class": [("s", "x", 1), ("s", "x", 2), ("s", "y", 3), ("s", "x", 4)],
        "another scope": [("s", "x", 1), ("r", "x", 2), ("s", "x", 3), ("s", "x", 4)],
        "boundary in time": [("s", "h", 7)] + [("s", "h", t) for t in range(1, 4)],
    }
    for name, read in reads.items():
        by_steps = an._input_pattern_by_steps(list(range(1, 5)), read)
        assert an._input_pattern_by_columns(read, 1) == by_steps, name


@pytest.mark.parametrize(("cell", "pattern"), [("lstm", "many_to_many"), ("gru", "many_to_one")])
def test_addn_of_class_from_the_live_sums_is_the_per_node_answer(cell, pattern):
    """`Analysis.addn_of_class` looks only at the live nodes of summing ops (and keeps
    their answers): for every live node, the answer of the node's own record."""
    an = shared_plan(cell, pattern).an
    sums = 0
    for k in an.live:
        found = an.addn_of_class(k)
        assert found == an._addn_of_class(k) == an.addn_of_class(k), k
        sums += found is not None
    assert sums or pattern == "many_to_one"  # one loss: nothing sums the steps


def groups_unit_by_unit(plan) -> list:
    """`fusion.groups` with each unit's signature found from its own node."""
    out, run, current = [], [], None
    for unit in plan.units:
        signature = fusion._signature(plan, unit)
        members = {u[1] for u in run}
        if signature is not None and run and signature == current:
            if fusion._joins(plan, members, unit):
                run.append(unit)
                continue
        if run:
            out.append(run)
        run, current = [unit], signature
    return out + ([run] if run else [])


@pytest.mark.parametrize(
    ("pattern", "ragged"),
    [("many_to_many", False), ("many_to_many", True), ("many_to_one", False)],
)
@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_fusion_groups_by_class_signature_are_the_unit_by_unit_groups(cell, pattern, ragged):
    """`fusion.groups` (a class's steps' signature found once from its class facts) cuts
    the units where the signature of each unit's own node does; and fuses something."""
    plan = shared_plan(cell, pattern, ragged).schedule
    found = fusion.groups(plan)
    assert found == groups_unit_by_unit(plan)
    assert any(len(run) > 1 for run in found)


def statement_per_vjp(op: str, position: int, dest, add: bool, g, out, ins: list, attrs: dict):
    """`kernels_vjp.statement` as it was: the op's rule asked again at every VJP."""
    rules = ops.OPS[op].out_vjp
    if rules is None or attrs or tuple(g.shape) != tuple(dest.shape):
        return None
    rule = rules[position]
    if rule is None or rule == ops.NEGATE:
        return ckernels.Statement(dest, add, "{0}" if rule is None else "-{0}", (g,))
    entry = ops.OPS[op]
    if entry.local_c_expr is not None and rule is entry.out_vjp[0] and entry.local is not None:
        ctype = ckernels.C_TYPES.get(dest.dtype)
        if ctype is None:
            return None
        local = entry.local_c_expr.replace("{0}", "{1}").replace("{t}", ctype)
        return ckernels.Statement(dest, add, f"({local}) * {{0}}", (g, out))
    if isinstance(rule, ops.UfuncVJP) and rule.ufunc in kernels_vjp.UFUNC_C:
        operand = out if rule.operand == "out" else ins[rule.operand]
        return ckernels.Statement(
            dest, add, f"{{0}} {kernels_vjp.UFUNC_C[rule.ufunc]} {{1}}", (g, operand)
        )
    return None


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_statement_forms_found_once_are_the_per_vjp_statements(dtype):
    """`kernels_vjp.statement` (its form found once per op, position and dtype) is the
    statement the op's rules give at each VJP, for every op and input, asked twice (the
    second from the forms found), and None at another shape or with attrs."""
    rng = np.random.default_rng(0)
    lines = 0
    for op, entry in ops.OPS.items():
        for position in range(len(entry.out_vjp or (None,) * 2)):
            dest, g, out = (rng.standard_normal((2, 3)).astype(dtype) for _ in range(3))
            ins = [rng.standard_normal((2, 3)).astype(dtype) for _ in range(3)]
            cases = [(dest, g, {}), (dest[0], g, {}), (dest, g, {"axis": 0})]
            for (d, grad, attrs), add in itertools.product(cases, (False, True)):
                want = statement_per_vjp(op, position, d, add, grad, out, ins, attrs)
                for _ in range(2):
                    found = kernels_vjp.statement(op, position, d, add, grad, out, ins, attrs)
                    assert (found is None) == (want is None), (op, position)
                    if found is not None:
                        assert (found.expr, found.add, found.dest) == (want.expr, add, d)
                        assert list(map(id, found.operands)) == list(map(id, want.operands))
                        lines += 1
    assert lines > 20


def target_one_by_state(tracker, key) -> bool:
    """`Tracker.target_one` as it was: every cell's state asked."""
    lay = tracker.lay
    cell = lay.cell[key]
    state = tracker.state(cell)
    kids = lay.children.get(cell)
    if state is None or (cell in lay.children and not state):
        tracker.zero.add(lay.base[key])
        add = True
    else:
        add = bool(state)
    tracker.written.add(cell)
    if kids:
        tracker.written.update(kids)
    return add


@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_target_one_without_state_is_the_state_form(cell):
    """`Tracker.target_one` (a cell with no views and no view of another: written or not,
    without `state`) says add or write, and records writes and zero-fills, as asking each
    cell's state does, over every gradient of a plan in a shuffled order, twice."""
    lay = shared_plan(cell, "many_to_many", True).layout
    keys = [k for k in lay.cell if k in lay.base]
    order = [keys[i] for i in np.random.default_rng(1).permutation(len(keys))] * 2
    fast, by_state = backward.Tracker(lay), backward.Tracker(lay)
    answers = [fast.target_one(k) for k in order]
    assert answers == [target_one_by_state(by_state, k) for k in order]
    assert (fast.written, fast.zero) == (by_state.written, by_state.zero)
    assert any(answers) and not all(answers)
    assert any(c in lay.children or c in lay.parent for c in fast.written) or cell.startswith("rnn")
