"""The analysis a rewrite updates in place of deriving it again (`Analysis.update`) holds the
very facts a derivation from scratch gives (`Analysis.refresh`), after every rewrite of the
pipeline (`rewrites.rewrite`), on every kind of model the rewrites act on."""

from __future__ import annotations

import gc
import operator
import weakref

import numpy as np
import pytest

from seqgraph.engine.graph import collector_paused, topological_order
from seqgraph.plan import edits, rewrites, siblings
from seqgraph.plan.analysis import Analysis, AttrsKeys
from seqgraph.plan.lower import Plan
from seqgraph.runtime import batch as batching
from seqgraph.spec.load import load_spec
from seqgraph.spec.unroll import compile_graph
from tests.test_plan import check_same, spec

FIELDS = (
    "order",
    "pos",
    "live",
    "meta",
    "recurrent",
    "needs_grad",
    "class_edges",
    "outputs",
    "const_true",
    "state_inputs",
    "dtype",
)


def analysis_of(raw, steps=4, out_steps=None, state_grads=False, lengths=None) -> Analysis:
    model_spec = load_spec(raw)
    graph = compile_graph(model_spec, steps, out_steps, state_grads=state_grads)
    batch = batching.dummy(model_spec, 3, steps, out_steps=out_steps)
    if lengths is not None:
        batch["lengths"] = np.array(lengths)
    feeds = batching.feeds(model_spec, graph, batch)
    leaf_meta = {
        k: (v.shape, np.dtype("float64") if v.dtype.kind == "f" else v.dtype)
        for k, v in feeds.items()
    }
    return Analysis(graph, leaf_meta, [graph.loss], "float64", full=lengths is None)


def assert_same_facts(updated: Analysis, step: str) -> None:
    """Every derived fact of `updated` equals a derivation from scratch of the same graph,
    orders included (consumers by reader, members by step, classes by first member)."""
    fresh = updated.fork()
    fresh.refresh()
    assert updated.node == fresh.node
    for name in FIELDS:
        assert getattr(updated, name) == getattr(fresh, name), f"{step}: {name}"

    def consumers(an):
        return {k: list(v) for k, v in an.consumers.items() if v}

    assert consumers(updated) == consumers(fresh), f"{step}: consumers"
    by_op = {op: list(keys) for op, keys in fresh.by_op.items()}
    assert {op: updated.nodes_of(op) for op in by_op} == by_op, f"{step}: by_op"
    assert {op for op, keys in updated.by_op.items() if keys} == set(by_op), step
    members = [(c, list(m.items())) for c, m in updated.members.items() if m]
    assert members == [(c, list(m.items())) for c, m in fresh.members.items()], step
    for c in fresh.members:  # the facts later stages ask per class
        assert updated.same_op(c) == fresh.same_op(c), (step, c)
        # the member records kept from the derivation before are the graph's records now
        records = [updated.node[k] for k in fresh.members[c].values()]
        assert updated.member_inputs(c) == [r["inputs"] for r in records], (step, c)
        if c in updated.member_records:
            assert all(map(operator.is_, updated.member_records[c], records)), (step, c)
        if len(c) == 2:
            assert updated.stackable(c) == fresh.stackable(c), (step, c)
        k0 = next(iter(fresh.members[c].values()))
        for i in range(len(fresh.inputs(k0))):
            assert updated.input_pattern(c, i) == fresh.input_pattern(c, i), (step, c, i)


def attention() -> dict:
    raw = spec("gru", pattern="encoder_decoder", ids=True)
    raw["model"]["attention"] = {"type": "additive", "size": 4}
    return raw


def repeated_gate() -> dict:
    """A user cell that writes one gate twice and a step that recomputes `h @ U`, with its
    own bias per product (common subexpressions, gate fusion and both bias moves)."""
    weights = {"shape": ["input", "hidden"], "init": {"dist": "uniform", "scale": 0.4}}
    square = {"shape": ["hidden", "hidden"], "init": {"dist": "uniform", "scale": 0.4}}
    bias = {"shape": ["hidden"], "init": {"dist": "uniform", "scale": 0.4}}
    raw = spec("twice")
    raw["model"]["layers"][0]["cell"] = "twice"
    raw["cells"] = {
        "twice": {
            "inputs": ["x"],
            "state": ["h"],
            "output": "h",
            "params": {"W": weights, "V": weights, "U": square, "b": bias, "c": bias},
            "equations": [
                "a = tanh(x @ W + h @ U + b + c)",
                "z = tanh(x @ W + h @ U + b + c)",
                "v = sigmoid(x @ V + h @ U)",
                "h = a * z + v * sigmoid(h @ U)",
            ],
        }
    }
    return raw


CASES = {
    "user cell, repeated gate": (repeated_gate(), {"lengths": [4, 2, 3]}),
    "lstm": (spec("lstm"), {}),
    "gru": (spec("gru"), {"lengths": [4, 2, 3]}),
    "stacked lstm": (spec("lstm", 2), {}),
    "bidirectional gru": (spec("gru", 2, bidirectional=True), {"lengths": [4, 3, 1]}),
    "bidirectional lstm, summed": (spec("lstm", bidirectional=True, merge="sum"), {}),
    "encoder-decoder with attention": (attention(), {"out_steps": 3}),
    "user cell, one weight per gate": (spec("custom", 2), {}),
    "lstm, initial states differentiated": (spec("lstm"), {"state_grads": True}),
}


def sorted_order(an, before: dict) -> list:
    """What `edits.reorder` promises, by the whole-graph sort: old nodes by old position, a
    new node just before the first old node it stands in for."""
    rank = {k: (i, 0, "") for i, k in enumerate(an.order)}
    for key, olds in before.items():
        rank[key] = (min(an.pos[k] for k in olds), -1, repr(key))
    keys = list(an.order) + list(before)
    return topological_order(keys, lambda k: an.node[k]["inputs"], rank.__getitem__)


@pytest.fixture
def checked_reorder(monkeypatch):
    """`reorder` as the rewrites call it, checked against the whole-graph sort."""

    def reorder(an, before):
        got = edits.reorder(an, before)
        assert got == sorted_order(an, before)
        return got

    monkeypatch.setattr(rewrites, "reorder", reorder)
    monkeypatch.setattr(siblings, "reorder", reorder)


@pytest.mark.parametrize("case", list(CASES))
def test_updated_analysis_equals_a_fresh_one_after_every_rewrite(case, checked_reorder):
    raw, options = CASES[case]
    an = analysis_of(raw, **options).fork()
    changed = []
    for step in rewrites.steps():
        if step(an):
            changed.append(step.__name__)
            an.update()
            assert_same_facts(an, step.__name__)
    joined: set = set()
    while siblings.merge_siblings(an, joined):
        changed.append("merge_siblings")
        an.update()
        assert_same_facts(an, "merge_siblings")
    assert changed  # every case exercises at least one graph-changing rewrite


@pytest.mark.parametrize("case", list(CASES))
def test_the_duplicate_precheck_is_the_scan_over_every_node(case):
    """`rewrites._any_duplicate` (readers of one input at position 0, compared) says yes
    exactly where two live op nodes share op, attrs and inputs, found over every node; where
    it says no, the full scan merges nothing. Before and after the other rewrites."""
    raw, options = CASES[case]
    an = analysis_of(raw, **options).fork()
    keys = AttrsKeys()
    for step in [None, *rewrites.steps()]:
        if step is not None and step(an):
            an.update()
        seen, pair = set(), False
        for k in an.order:
            node = an.node[k]
            if k in an.live and node["kind"] == "op":
                found = (node["op"], keys(node["attrs"]), node["inputs"])
                pair = pair or found in seen
                seen.add(found)
        assert rewrites._any_duplicate(an) == pair
        if not pair:
            assert rewrites._duplicates(an, set()) == {}
    assert any(
        rewrites._any_duplicate(analysis_of(raw, **options)) for raw, options in CASES.values()
    )  # the cases hold one graph with duplicates (the repeated gate)


def rewritten_before_merges(case: str):
    """The analysis of CASES[case] after every rewrite but the sibling merges (as
    `rewrites.rewrite` leaves it before its first merge)."""
    raw, options = CASES[case]
    an = analysis_of(raw, **options).fork()
    for step in rewrites.steps():
        if step(an):
            an.update()
    return an


def test_sibling_sets_before_any_merge_are_the_groups_of_several_inputs():
    """Before any merge, `siblings._sibling_sets` leaves out one-input ops, which then
    merge nowhere (`merge_siblings`): exactly the groups of one read, found in full."""
    skipped = 0
    for case in ("gru", "user cell, one weight per gate", "lstm", "stacked lstm"):
        an = rewritten_before_merges(case)
        full = siblings._sibling_sets(an, True)
        several = {key: nodes for key, nodes in full.items() if len(key[2]) > 1}
        assert siblings._sibling_sets(an, False) == several, case
        skipped += len(full) - len(several)
    assert skipped  # the LSTM's gate activations: one-input groups there were to skip


def test_sibling_sets_without_the_readers_of_classes_that_cannot_merge_are_the_same(
    monkeypatch,
):
    """`siblings._sibling_sets` passes over the readers of a class of views that no class
    reading it may merge (`_class_may_merge`, by the reader classes' ops): the same sets as
    with every reader looked at, before and after each merge."""
    skipped = []
    for case in ("gru", "user cell, one weight per gate", "lstm", "stacked lstm"):
        an = rewritten_before_merges(case)
        joined: set = set()
        while True:
            for after_merges in (False, True):
                found = siblings._sibling_sets(an, after_merges)
                with monkeypatch.context() as every_reader:
                    every_reader.setattr(siblings, "_class_may_merge", lambda *_: True)
                    assert siblings._sibling_sets(an, after_merges) == found, case
                classes = {c for c in an.members if len(c) == 2}
                skipped += [c for c in classes if not siblings._class_may_merge(an, c, False)]
            if not siblings.merge_siblings(an, joined):
                break
            an.update()
    assert skipped  # the LSTM's gate activations: readers left out before any merge


def test_the_rewrites_change_what_the_update_must_follow():
    """The cases above are not vacuous: the user cell's gate fusion kills nodes and makes
    classes, the LSTM's bias moves change which nodes are live, and the GRU's sibling merge
    makes per-step classes on the recurrence."""
    before = analysis_of(spec("custom"))
    after = rewrites.rewrite(before)
    assert before.live - after.live and after.live - before.live
    assert set(after.members) - set(before.members)
    gru = rewrites.rewrite(analysis_of(spec("gru")))
    assert any("|" in c[1] for c in gru.recurrent if len(c) == 2)


def test_the_rewrite_leaves_the_analysis_it_was_given_as_it_was():
    an = analysis_of(spec("lstm", 2))
    fresh = analysis_of(spec("lstm", 2))
    rewrites.rewrite(an)
    for name in (*FIELDS, "node"):
        assert getattr(an, name) == getattr(fresh, name), name
    assert {k: v for k, v in an.consumers.items() if v} == {
        k: v for k, v in fresh.consumers.items() if v
    }
    assert an.members == fresh.members


def test_the_repeated_gate_cell_gives_the_interpreter_numbers():
    raw = repeated_gate()
    batch = batching.dummy(load_spec(raw), 3, 5)
    batch["lengths"] = np.array([5, 2, 4])
    check_same(raw, batch)


@pytest.mark.parametrize("enabled", [True, False])
def test_unrolling_and_lowering_leave_the_garbage_collector_as_they_found_it(enabled):
    """`collector_paused` switches the cyclic collector off for a build, back on after it
    (also when the build raises), and leaves it off if it was off."""
    raw = spec("gru")
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        seen = []
        with collector_paused():
            seen.append(gc.isenabled())
        an = analysis_of(raw)  # compile_graph
        Plan(an.graph, {k: an.meta[k] for k in an.graph.inputs}, np, "numpy", "float64")
        assert gc.isenabled() == enabled and seen == [False]
        with pytest.raises(KeyError), collector_paused():
            {}["missing"]
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()


def test_a_paused_build_hands_its_objects_to_the_oldest_generation_and_cycles_still_die():
    """On the way out `collector_paused` moves what the build made to the oldest generation
    (no young-generation pass walks it all at once), and a full pass still reclaims a
    garbage cycle made inside."""
    was = gc.isenabled()
    try:
        gc.enable()
        with collector_paused():
            kept = {"made": ["inside"]}
            cycle = _CycleProbe()
            cycle.self = cycle
        assert gc.isenabled()
        assert any(obj is kept for obj in gc.get_objects(generation=2))
        assert not any(obj is kept for obj in gc.get_objects(generation=0))
        assert gc.get_freeze_count() == 0  # nothing left exempt from collection
        probe = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert probe() is None
    finally:
        gc.enable() if was else gc.disable()


class _CycleProbe:
    """An object a weak reference can watch, to see a cycle through it collected."""


def test_a_paused_build_leaves_objects_the_process_froze_frozen():
    """A process that froze objects itself (before a fork, say) keeps them frozen: the
    build's hand-over to the oldest generation (gc.freeze + gc.unfreeze) is skipped."""
    was = gc.isenabled()
    try:
        gc.enable()
        gc.freeze()
        frozen = gc.get_freeze_count()
        with collector_paused():
            made = {"made": ["inside"]}
        assert gc.get_freeze_count() == frozen and gc.isenabled()
        assert not any(obj is made for obj in gc.get_objects(generation=2))  # not handed over
    finally:
        gc.unfreeze()
        gc.enable() if was else gc.disable()
