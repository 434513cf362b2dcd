"""The backward's chains stamped over the steps (`seqgraph/plan/stamps.py`): on plans of
several cells and on hand-made steps (a stack, a scratch buffer, a ring, an overlap in one
step only, memory no ndarray owns), the runs and argument blocks are those that
`ckernels.chains` and `ckernels.bind_chain` find statement by statement."""

from __future__ import annotations

import numpy as np
import pytest
from support import VECTOR_MODELS

from seqgraph import Model
from seqgraph.plan import ckernels, fusion, stamps
from seqgraph.runtime import batch as batching

S = ckernels.Statement


SPECS = VECTOR_MODELS


def per_statement(statements: list, alone: frozenset = frozenset()) -> tuple:
    """The reference: the runs `ckernels.chains` finds and each bound alone."""
    runs = ckernels.chains(statements, alone=alone)
    return runs, [ckernels.bind_chain(statements[lo:hi]) for lo, hi in runs]


def assert_same(found: tuple, want: tuple) -> None:
    """The same runs, C functions, argument blocks and (the very same) arrays."""
    assert found[0] == want[0]
    for one, other in zip(found[1], want[1], strict=True):
        assert (one.name, one.text) == (other.name, other.text)
        np.testing.assert_array_equal(one.args, other.args)
        assert one.args.dtype == np.int64
        assert len(one.arrays) == len(other.arrays)
        assert all(a is b for a, b in zip(one.arrays, other.arrays, strict=True))


def found_in_full(monkeypatch) -> list:
    """A list that gets the length of each segment `stamps.chains` finds in full."""
    calls = []
    chains = ckernels.chains
    monkeypatch.setattr(
        ckernels, "chains", lambda segment, *a: calls.append(len(segment)) or chains(segment, *a)
    )
    return calls


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_stamped_chains_equal_the_chains_found_statement_by_statement(name, ragged, monkeypatch):
    """A plan's backward statements: stamped runs and argument blocks are the reference's,
    with fewer segments found in full than segments (the steps share descriptions)."""
    raw = SPECS[name]
    seen = []
    compile_chains = stamps.compile_chains
    monkeypatch.setattr(
        stamps, "compile_chains", lambda *args: seen.append(args) or compile_chains(*args)
    )
    batch = batching.dummy(Model(raw).spec, 3, 6)
    if ragged:
        batch["lengths"] = np.array([6, 2, 4])
    if "dropout" in name:
        batch["dropout"] = {"seed": 5, "step": 11}
    Model(raw).plan(batch)
    ((statements, alone),) = seen
    want = per_statement(statements, alone)
    full = found_in_full(monkeypatch)
    found = stamps.chains(statements, alone)
    assert_same(found, want)
    assert want[0], "no chains: nothing was compared"
    segments = sum(
        s is not None and (i == 0 or statements[i - 1] is None) for i, s in enumerate(statements)
    )
    assert 0 < len(full) < segments


def steps(make, count: int = 6) -> list:
    """Statements of `count` steps, each a segment [None, three statements] over the
    arrays make(t) hands: (dest gradient, read gradient, scratch)."""
    out = []
    for t in range(count):
        dest, g, scratch = make(t)
        out += [
            None,
            S(scratch, False, "{0} * {1}", (g, g)),
            S(dest, True, "{0} * {1}", (scratch, g)),
            S(g, False, "-{0}", (dest,)),
        ]
    return out


STACK = np.zeros((7, 3, 4))  # a class's gradients, one step a row
READS = np.zeros((7, 3, 8))  # another class, its steps' column blocks
SCRATCH = np.zeros((3, 4))
RING = np.zeros((2, 3, 4))


def stacked(t):
    return STACK[t], READS[t][:, :4], SCRATCH


def ringed(t):  # the read gradient and the scratch swap the two rows of a ring each step
    return STACK[t], RING[t % 2], RING[(t + 1) % 2]


def overlapping_once(t):  # at step 3 the dest is the read shifted by one column: no run
    if t == 3:
        return READS[t][:, 1:5], READS[t][:, :4], SCRATCH
    return stacked(t)


def not_owned(t):  # views over a bytearray: two such blocks might share memory
    memory = np.frombuffer(bytearray(3 * 4 * 8 * 3), np.float64).reshape(3, 3, 4)
    return memory[0], memory[1], memory[2]


@pytest.mark.parametrize(
    "make, full",
    [(stacked, 1), (ringed, 2), (overlapping_once, 2), (not_owned, 6)],
    ids=["stack", "ring", "overlap once", "not owned"],
)
def test_hand_made_steps_are_stamped_where_their_offsets_agree(make, full, monkeypatch):
    """One segment found in full for a stack's steps, one per parity of a ring, one more
    for the step whose dest overlaps a read; every segment over memory no ndarray owns;
    each the reference's runs and argument blocks."""
    statements = steps(make)
    want = per_statement(statements)
    calls = found_in_full(monkeypatch)
    assert_same(stamps.chains(statements), want)
    assert len(calls) == full
    if make is overlapping_once:
        assert want[0] == [(4 * t + 1, 4 * t + 4) for t in (0, 1, 2, 4, 5)]  # 3: no run
    else:
        assert want[0] == [(4 * t + 1, 4 * t + 4) for t in range(6)]


def test_alone_statements_tell_their_segments_apart(monkeypatch):
    """Whether a statement must be a run even by itself (a local factor) belongs to its
    segment's description: the steps with one are found apart from the others."""
    statements = steps(stacked)
    alone = frozenset({1, 9})  # the first statement of steps 0 and 2
    want = per_statement(statements, alone)
    calls = found_in_full(monkeypatch)
    assert_same(stamps.chains(statements, alone), want)
    assert len(calls) == 2
    assert want[0][:2] == [(1, 4), (5, 8)]


@pytest.mark.skipif(ckernels.compiler() is None, reason="no C compiler: nothing to run")
def test_compile_chains_gives_the_per_statement_kernels_numbers():
    """The stamped kernels, run, write what the per-statement kernels write."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal(STACK.shape), rng.standard_normal(READS.shape)
    results = []
    for stamped in (True, False):
        STACK[:], READS[:], SCRATCH[:] = *start, 0
        statements = steps(stacked)
        if stamped:
            runs, kernels = stamps.compile_chains(statements)
        else:
            runs = ckernels.chains(statements)
            kernels = ckernels.compile_chains([statements[lo:hi] for lo, hi in runs])
        assert len(kernels) == 6 and all(k is not None for k in kernels)
        for kernel in kernels:
            kernel()
        results.append((STACK.copy(), READS.copy()))
    assert not np.array_equal(results[0][0], start[0])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---- forward: fused groups ------------------------------------------------------------------


def bound_alone_and_stamped(plan, runs: list, keep_all: bool, monkeypatch) -> tuple:
    """(each group bound alone, `stamps.bind_groups`, the groups it bound in full)."""
    alone = [ckernels.bind(plan, run, keep_all) for run in runs]
    full = []
    bind = ckernels.bind
    monkeypatch.setattr(ckernels, "bind", lambda *a: full.append(a[1]) or bind(*a))
    return alone, stamps.bind_groups(plan, runs, keep_all), full


def assert_same_bounds(found: list, want: list) -> None:
    for one, other in zip(found, want, strict=True):
        if other is None:
            assert one is None
            continue
        assert_same(([], [one]), ([], [other]))


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("grads", [True, False])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_stamped_groups_equal_each_group_bound_alone(name, grads, ragged, monkeypatch):
    """A plan's fused groups: the stamped `Bound`s are each group's own, with fewer groups
    bound in full than groups (the steps share a structure and description)."""
    raw = SPECS[name]
    batch = batching.dummy(Model(raw).spec, 3, 6)
    if ragged:
        batch["lengths"] = np.array([6, 2, 4])
    if "dropout" in name:
        batch["dropout"] = {"seed": 5, "step": 11}
    plan = Model(raw).plan(batch, grads=grads)
    fused = [run for run in plan.groups if len(run) > 1]
    alone, found, full = bound_alone_and_stamped(plan.schedule, fused, grads, monkeypatch)
    assert_same_bounds(found, alone)
    assert sum(b is not None for b in alone) > 0
    assert 0 < len(full) < len(fused)


def gate_groups(steps: int = 10) -> tuple:
    """(schedule, the fused groups, those of the LSTM's gates by step) of a float64 plan."""
    raw = SPECS["lstm"]
    plan = Model(raw).plan(batching.dummy(Model(raw).spec, 3, steps))
    fused = [run for run in plan.groups if len(run) > 1]
    gates = {run[0][1][2]: run for run in fused if len(run) > 3}
    assert sorted(gates) == list(range(steps))
    return plan.schedule, fused, gates


def test_groups_with_other_buffers_are_bound_alone(monkeypatch):
    """Step 0 reads the initial state and step 1 is the first of the others: both bound in
    full; so are step 2, whose outputs lie at other strides (column blocks of a wider
    array), step 3, whose output is written over an input shifted by one element (an
    overlap: no kernel), and step 4, over memory no ndarray owns; steps 5-9 are stamped.
    Every group's `Bound` is its own."""
    sched, fused, gates = gate_groups()
    value = sched.layout.value
    _, _, _, inputs, outputs = fusion.source(sched, gates[2], True)
    wide = np.zeros((3, 12 * len(outputs)))
    for j, k in enumerate(outputs):
        value[k] = wide[:, 12 * j : 12 * j + 6]
    _, _, _, inputs, outputs = fusion.source(sched, gates[3], True)
    shifted = np.zeros(19)
    value[inputs[0]] = shifted[:-1].reshape(3, 6)
    value[outputs[0]] = shifted[1:].reshape(3, 6)
    _, _, _, inputs, outputs = fusion.source(sched, gates[4], True)
    memory = np.frombuffer(bytearray(8 * 18 * len(outputs)), np.float64)
    for j, k in enumerate(outputs):
        value[k] = memory[18 * j : 18 * (j + 1)].reshape(3, 6)
    alone, found, full = bound_alone_and_stamped(sched, fused, True, monkeypatch)
    assert_same_bounds(found, alone)
    assert alone[fused.index(gates[3])] is None  # the overlap: NumPy runs that group
    assert [t for t in sorted(gates) if gates[t] in full] == [0, 1, 2, 3, 4]
