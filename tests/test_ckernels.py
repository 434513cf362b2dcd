"""Compiled CPU kernels for fused groups (`seqgraph/plan/ckernels.py`).

With the kernels on, the plan must still give the interpreter's numbers in float64 (1e-11),
stay within float32 rounding of the NumPy chain, keep NaN and inf where the NumPy chain
does, and fall back to exactly the NumPy chain's numbers when no compiler works.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from support import VECTOR_MODELS, vector_spec

from seqgraph import Model
from seqgraph.engine import ops
from seqgraph.plan import ckernels, programs, stamps
from seqgraph.plan.layout import Slot
from seqgraph.runtime import batch as batching

needs_compiler = pytest.mark.skipif(
    ckernels.compiler() is None, reason="no C compiler ($CC, cc, gcc): nothing to compile"
)


def uniform(*shape) -> dict:
    return {"shape": list(shape), "init": {"dist": "uniform", "scale": 0.4}}


UNUSUAL = {  # every op with a C expression except where, a scalar and a bias row broadcast
    "inputs": ["x"],
    "state": ["h"],
    "output": "h",
    "params": {
        "W": uniform("input", "hidden"),
        "U": uniform("hidden", "hidden"),
        "V": uniform("input", "hidden"),
        "b": uniform("hidden"),
    },
    "equations": [
        "a = sigmoid(x @ W + h @ U)",
        "r = relu(x @ V - h) + b",
        "s = sqrt(1 + exp(-a) * r) * rsqrt(2 + a)",
        "n = log(1 + r * r) / s - a * b",
        "h = tanh(n) * a + (1 - a) * -h / s",
    ],
}
OVERFLOWING = {  # exp overflows to inf, inf / inf is NaN: they must come out as in NumPy
    "inputs": ["x"],
    "state": ["h"],
    "output": "h",
    "params": {"W": uniform("input", "hidden"), "U": uniform("hidden", "hidden")},
    "equations": [
        "e = exp(x @ W + h @ U)",
        "q = sqrt(e) / e + log(e) * sigmoid(-e) + relu(e / e - 1)",
        "h = tanh(q) * sigmoid(e)",
    ],
}


def spec(cell="lstm", layers=1, pattern="many_to_many", dtype="float64", **layer) -> dict:
    cells = {"unusual": UNUSUAL, "overflowing": OVERFLOWING}
    return vector_spec(cell, layers, pattern, dtype, cells, **layer)


CASES = {
    **VECTOR_MODELS,
    "rnn_relu": spec("rnn_relu"),
    "unusual_cell": spec("unusual"),
    "dropout_gru_layer_norm": spec("gru", layer_norm=True, recurrent_dropout=0.3),
}


def compiled_kernels(plan) -> int:
    kernels = plan.forward_kernels + plan.backward_kernels
    return sum(ckernels.is_compiled(kernel) for kernel in kernels)


def batch_for(raw, padded=True) -> dict:
    batch = batching.dummy(Model(raw).spec, 3, 5)
    if padded:
        batch["lengths"] = np.array([5, 2, 4])
    if "dropout" in str(raw["model"]["layers"]):
        batch["dropout"] = {"seed": 5, "step": 11}
    return batch


@pytest.fixture
def kernels(monkeypatch):
    """A function setting the switch: on (the default) or off (the NumPy chain)."""
    return lambda on: monkeypatch.setenv(ckernels.SWITCH, "1" if on else "0")


@needs_compiler
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_plan_matches_interpreter(name, kernels):
    """Loss, every gradient and the forward outputs of a plan whose fused groups run as C
    equal the interpreter's in float64."""
    kernels(True)
    raw = CASES[name]
    batch = batch_for(raw)
    plan = Model(raw, engine="plan")
    interp = Model(raw, engine="interp")
    loss, grads = interp.loss_and_grads(batch)
    for _ in range(2):  # buffers are reused from call to call
        got_loss, got = plan.loss_and_grads(batch)
        assert got_loss == pytest.approx(loss, rel=1e-11, abs=1e-12)
        for key in grads:
            np.testing.assert_allclose(got[key], grads[key], rtol=1e-11, atol=1e-12, err_msg=key)
    assert compiled_kernels(plan.plan(batch)) > 0
    # forward only: a group writes back only what later kernels read
    want = interp.forward(batch)
    got = plan.forward(batch)
    assert compiled_kernels(plan.plan(batch, grads=False)) > 0
    np.testing.assert_allclose(got["predictions"], want["predictions"], rtol=1e-11, atol=1e-12)
    for key in want["state"]:
        np.testing.assert_allclose(got["state"][key], want["state"][key], rtol=1e-11, atol=1e-12)


@needs_compiler
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "unusual_cell", "dropout"])
def test_float32_compiled_plan_is_within_rounding(name, kernels):
    """float32: the compiled plan is within float32 rounding of the NumPy chain and of the
    float64 interpreter (same parameters)."""
    raw = {**CASES[name], "dtype": "float32"}
    batch = batch_for(raw)
    exact = Model({**raw, "dtype": "float64"}, engine="interp")
    want_loss, want = exact.loss_and_grads(batch)
    results = {}
    for on in (True, False):
        kernels(on)
        model = Model(raw, engine="plan")
        model.set_params({k: v.astype(np.float32) for k, v in exact.params.items()})
        results[on] = model.loss_and_grads(batch)
        assert (compiled_kernels(model.plan(batch)) > 0) == on
    (loss, grads), (chain_loss, chain) = results[True], results[False]
    assert loss == pytest.approx(chain_loss, rel=1e-5)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    for key in want:
        assert grads[key].dtype == np.float32
        np.testing.assert_allclose(grads[key], chain[key], rtol=1e-4, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(grads[key], want[key], rtol=2e-3, atol=1e-4, err_msg=key)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inf_and_nan_come_out_as_in_the_numpy_chain(dtype, kernels):
    """Overflowing exp, inf / inf, log(inf), sigmoid(-inf) and NaN inputs: the compiler
    flags keep IEEE semantics, so every fused member holds what the NumPy chain writes."""
    raw = spec("overflowing", dtype=dtype)
    batch = batch_for(raw, padded=False)
    batch["x"][0, :, 0] = [300.0, 1e4, -1e4, -300.0, 0.0]
    batch["x"][1, 1, :] = [-300.0, 0.0, -0.0]
    values = {}
    for on in (True, False):
        kernels(on)
        model = Model(raw)
        plan = model.plan(batch)
        assert (compiled_kernels(plan) > 0) == on
        feeds = batching.feeds(model.spec, plan.graph, batch)
        step_2 = next(k for k in feeds if k[:2] == ("x", "x") and k[2] == 2)
        feeds[step_2] = feeds[step_2].copy()  # a view of the batch, which must stay finite
        feeds[step_2][:, 1] = [np.nan, np.inf, -np.inf]  # past the batch checks' refusal
        with np.errstate(all="ignore"):
            plan.run(feeds, model.params)
        members = [u[1] for run in plan.groups if len(run) > 1 for u in run]
        # not a step's scratch (`layout.Slot`, read by no later kernel): compiled, it stays
        # in a register
        members = [k for k in members if not isinstance(plan.layout.value_stack[k[:2]], Slot)]
        values[on] = {k: plan.layout.value[k].copy() for k in members}
        relus = [k for k in members if plan.an.node[k]["op"] == "relu"]
    assert values[True].keys() == values[False].keys()
    seen = np.concatenate([v.ravel() for v in values[False].values()])
    assert np.isnan(seen).any() and np.isinf(seen).any()
    # relu(NaN) is NaN on both paths (the C expression gave 0: a blow-up hidden as zeros)
    # relu(NaN) is NaN on both paths (its C expression gave 0: a blow-up hidden as zeros)
    assert relus and all(any(np.isnan(values[on][k]).any() for k in relus) for on in values)
    for key, chain in values[False].items():
        rtol = 1e-5 if dtype == "float32" else 1e-13
        np.testing.assert_allclose(values[True][key], chain, rtol=rtol, err_msg=str(key))


def fallback_numbers(raw, batch):
    model = Model(raw)
    loss, grads = model.loss_and_grads(batch)
    return loss, grads, compiled_kernels(model.plan(batch))


def test_no_compiler_gives_the_numpy_numbers(kernels, monkeypatch, caplog):
    """No compiler on PATH: the NumPy chain, bit for bit, and one line saying why; with
    the switch off, not even that."""
    raw, batch = CASES["stacked"], batch_for(CASES["stacked"])
    monkeypatch.setitem(ckernels._STATE, "warned", False)
    kernels(False)
    with caplog.at_level(logging.WARNING, logger="seqgraph"):
        want_loss, want, _ = fallback_numbers(raw, batch)
    assert not caplog.records
    kernels(True)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert not ckernels.enabled()
    with caplog.at_level(logging.WARNING, logger="seqgraph"):
        for _ in range(2):
            loss, grads, compiled = fallback_numbers(raw, batch)
    assert compiled == 0 and loss == want_loss
    for key in want:
        np.testing.assert_array_equal(grads[key], want[key])
    assert [r.getMessage() for r in caplog.records] == [
        "seqgraph: compiled CPU kernels off, NumPy runs the fused groups "
        "(no C compiler: $CC, cc or gcc on PATH)"
    ]


def test_failing_compiler_logs_one_line_and_gives_the_numpy_numbers(
    kernels, monkeypatch, tmp_path, caplog
):
    """A compiler that fails: one warning for the process, no traceback, the NumPy chain's
    numbers, and it is not run again for later plans (regression: it ran twice for every
    library of every plan, 12 times for three batch shapes). The plans were lowered for
    compiled chains (local derivatives inline in each step; the LSTM's activations, then
    its gate gradients, over its pre-activations; the RNN's dL/dh where dL/da goes), so
    NumPy runs those kernels: the numbers
    of the NumPy path but for the rounding of g * f(y) against a factor made before the loop."""
    kernels(False)
    cells = ("gru", "lstm", "rnn")
    wanted = {name: fallback_numbers(CASES[name], batch_for(CASES[name])) for name in cells}
    kernels(True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = tmp_path / "calls"
    failing = tmp_path / "failing-cc"
    failing.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'x.c:1: error: broken' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    monkeypatch.setitem(ckernels._STATE, "warned", False)
    monkeypatch.setitem(ckernels._STATE, "failed", set())
    with caplog.at_level(logging.WARNING, logger="seqgraph"):
        for name in cells:
            loss, grads, compiled = fallback_numbers(CASES[name], batch_for(CASES[name]))
            assert compiled == 0
            want_loss, want, _ = wanted[name]
            assert loss == want_loss
            for key in want:
                np.testing.assert_allclose(grads[key], want[key], rtol=1e-13, atol=1e-15)
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .endswith("NumPy runs the fused groups (x.c:1: error: broken)")
    )
    assert len(calls.read_text().splitlines()) == 2  # with libmvec, then without; never again
    assert not list(tmp_path.rglob("*.so"))


@needs_compiler
def test_libraries_are_cached_by_content_under_xdg_cache_home(kernels, monkeypatch, tmp_path):
    """The first plan builds its libraries (forward groups, backward runs, softmax_ce's two
    row kernels, the W^T refresh, the step programs' executor where NumPy's BLAS is found:
    `programs.py`) under $XDG_CACHE_HOME/seqgraph; a process that has not
    loaded them yet (here: the loaded table emptied) reads them back without building."""
    kernels(True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ckernels, "_LOADED", {})
    raw, batch = CASES["lstm"], batch_for(CASES["lstm"])
    first = fallback_numbers(raw, batch)
    built = list((tmp_path / "seqgraph").glob("groups-*.so"))
    assert len(built) == 5 + programs.enabled() and first[2] > 0

    def no_build(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(ckernels, "_LOADED", {})
    monkeypatch.setattr(ckernels, "_build", no_build)
    again = fallback_numbers(raw, batch)
    assert again[0] == first[0] and again[2] == first[2]


@needs_compiler
def test_the_cache_keeps_the_most_recently_used_libraries(kernels, monkeypatch, tmp_path):
    """Each model builds its own libraries; beyond KEEP_LIBRARIES the least recently used go
    (a library read from the cache counts as used), so the cache stops growing."""
    kernels(True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ckernels, "_LOADED", {})
    folder = tmp_path / "seqgraph"
    folder.mkdir()
    for i in range(4):  # older libraries of other models, the oldest first
        stale = folder / f"groups-{i:032x}.so"
        stale.write_bytes(b"")
        os.utime(stale, (1000 + i, 1000 + i))
    own = 5 + programs.enabled()  # the model's (see the test above)
    monkeypatch.setattr(ckernels._prune, "__defaults__", (own + 2,))  # and 2 stale
    fallback_numbers(CASES["lstm"], batch_for(CASES["lstm"]))
    kept = {f.name for f in folder.glob("groups-*.so")}
    old = [f"groups-{i:032x}.so" for i in range(4)]
    assert len(kept) == own + 2 and set(old[2:]) <= kept and not set(old[:2]) & kept


@pytest.mark.parametrize(
    "make, shape, want",
    [
        (lambda: np.zeros((4, 6)), (4, 6), (6, 1)),
        (lambda: np.zeros((4, 24))[:, 6:12], (4, 6), (24, 1)),  # a gate's column block
        (lambda: np.zeros(6), (4, 6), (0, 1)),  # a bias row
        (lambda: np.zeros((4, 1)), (4, 6), (1, 0)),  # a per-row mask
        (lambda: np.zeros(()), (4, 6), (0, 0)),  # a scalar
        (lambda: np.zeros((5, 4, 6))[2], (4, 6), (6, 1)),  # step 2 of a stacked buffer
        (lambda: np.zeros((2, 3, 6)), (2, 3, 6), (6, 1)),  # leading axes as rows
        (lambda: np.zeros((2, 4, 6))[:, :3], (2, 3, 6), None),  # rows unevenly spaced
        (lambda: np.zeros((6, 4)).T, (4, 6), None),  # columns strided
        (lambda: np.zeros((4, 1)), (4, 1), (1, 1)),
        (lambda: np.zeros(()), (), (0, 0)),
    ],
)
def test_operand_strides(make, shape, want):
    """(row, column) element strides of an operand broadcast to the group's shape."""
    assert ckernels.row_and_column(make(), shape) == want


# ---- backward: runs of elementwise VJP statements ---------------------------------------------


def test_chains_join_what_one_loop_can_run_in_order():
    """Disjoint column blocks of one buffer join (they interleave in memory but never
    meet); a read of a shifted view of a buffer the run wrote, or a statement whose dest
    overlaps its own operand, ends the run."""
    S = ckernels.Statement
    grads, g, factor = np.zeros((4, 24)), np.ones((4, 6)), np.full((4, 6), 2.0)
    i_block, f_block = grads[:, 0:6], grads[:, 6:12]
    stacked = np.zeros((5, 4, 6))
    joined = [
        S(i_block, False, "{0} * {1}", (g, factor)),
        S(f_block, True, "{0} * {1}", (g, i_block)),
    ]
    assert ckernels.chains([None, *joined, None]) == [(1, 3)]
    shifted = [S(stacked[1], False, "{0}", (g,)), S(g, False, "{0}", (stacked[1:, :, :][0].T.T,))]
    assert ckernels.chains(shifted) == [(0, 2)]  # the very same view: joins
    overlap = np.zeros((4, 7))
    split = [S(overlap[:, :6], False, "{0}", (g,)), S(factor, False, "{0}", (overlap[:, 1:],))]
    assert ckernels.chains(split) == []
    own = S(overlap[:, :6], False, "-{0}", (overlap[:, 1:],))
    assert ckernels.chains([own, S(g, False, "{0}", (factor,))]) == []


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_compiled_chain_computes_what_its_kernels_one_by_one_do(dtype, kernels):
    """Written and added, a broadcast row and a per-row column, a column block, a value
    the run wrote before: one loop gives the NumPy statements' numbers."""
    kernels(True)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 24)).astype(dtype)
    g, mask = rng.normal(size=(4, 6)).astype(dtype), rng.normal(size=(4, 1)).astype(dtype)
    bias, dest = rng.normal(size=6).astype(dtype), np.zeros((4, 6), dtype)
    S = ckernels.Statement
    run = [
        S(grads[:, 0:6], True, "{0} * {1}", (g, bias)),  # += g * a bias row
        S(grads[:, 6:12], False, "{0} / {1}", (grads[:, 0:6], mask)),  # reads what it wrote
        S(dest, False, "-{0}", (grads[:, 6:12],)),
        S(dest, True, "{0}", (g,)),
    ]
    want_grads, want_dest = grads.copy(), dest.copy()
    want_grads[:, 0:6] += g * bias
    want_grads[:, 6:12] = want_grads[:, 0:6] / mask
    want_dest[...] = -want_grads[:, 6:12] + g
    assert ckernels.chains(run) == [(0, 4)]
    (kernel,) = ckernels.compile_chains([run])
    kernel()
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(grads, want_grads, rtol=rtol)
    np.testing.assert_allclose(dest, want_dest, rtol=rtol)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_chain_writes_gradients_over_the_values_it_has_read(dtype, kernels):
    """The in-place rule of `Layout.activations` and `Layout.under`: a chain whose
    statements read a step's values, then each write a gradient over a value it reads
    itself (dL/dx = g * f(y) over y, and over g), gives what the statements give out of
    place: each C line reads its operands at an element before it writes there, and no
    line reads a value after another wrote over it (`liveness.activation_reads_first`,
    `liveness.check_gradients_under_inputs`)."""
    from seqgraph.plan import kernels_vjp

    kernels(True)
    rng = np.random.default_rng(5)
    gates = rng.uniform(0.05, 0.95, size=(4, 12)).astype(dtype)  # activations i | g
    dc, dh = rng.normal(size=(4, 6)).astype(dtype), rng.normal(size=(4, 6)).astype(dtype)
    h = rng.uniform(-0.9, 0.9, size=(4, 6)).astype(dtype)
    i, g = gates[:, :6], gates[:, 6:]
    di_part, dg_part = np.empty_like(dc), np.empty_like(dc)
    want_i = (dc * g) * ((1 - i) * i)  # sigmoid's VJP of d(i * g)/di, as the interpreter
    want_g = (dc * i) * (1 - g * g)
    want_h = (1 - h * h) * dh
    S = ckernels.Statement
    run = [
        S(di_part, False, "{0} * {1}", (dc, g)),
        S(dg_part, False, "{0} * {1}", (dc, i)),
        kernels_vjp.statement("sigmoid", 0, i, False, di_part, i, [None], {}),  # over y
        kernels_vjp.statement("tanh", 0, g, False, dg_part, g, [None], {}),
        kernels_vjp.statement("tanh", 0, dh, False, dh, h, [None], {}),  # over g
    ]
    assert ckernels.chains(run) == [(0, 5)]
    (kernel,) = ckernels.compile_chains([run])
    kernel()
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(g, want_g)
    np.testing.assert_array_equal(dh, want_h)


@needs_compiler
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ["lstm", "unusual"])
def test_a_value_does_not_depend_on_where_it_lies(dtype, cell, kernels):
    """Equal inputs give equal bits in a full block of a row and in its partial last one:
    every element goes through the same vector code (a vectorised exp and the scalar one
    of a loop's remainder differ in the last bit; then a sequence predicted alone and in a
    batch would differ by where its values fall)."""
    from seqgraph.plan import fusion

    kernels(True)
    raw = spec(cell, dtype=dtype)
    raw["model"]["layers"][0]["hidden"] = 21  # per row a block of 16 and one of 5
    model = Model(raw)
    batch = batching.dummy(model.spec, 3, 4)
    plan = model.plan(batch, grads=False)
    plan.run(batching.feeds(model.spec, plan.graph, batch), model.params)
    checked = 0
    for kernel, record in zip(plan.forward.kernels, plan.forward.records, strict=True):
        if not ckernels.is_compiled(kernel) or record[0] != "fused":  # (softmax_ce's own)
            continue
        _, _, _, inputs, outputs = fusion.source(plan, record[1], False)
        if plan.an.meta[outputs[0]][0][-1] != 21:  # x W + b + h U: one row of 4 * 21
            continue
        for key in inputs:
            x = plan.layout.value[key]
            if x.shape and x.shape[-1] == 21:
                x[..., 18] = x[..., 2]  # column 2 lies in the full block, 18 in the last
        kernel()
        for key in outputs:
            y = plan.layout.value[key]
            np.testing.assert_array_equal(y[..., 18], y[..., 2])
            checked += 1
    assert checked


TEMPLATED = [
    "lstm",
    "gru",
    "stacked",
    "bidirectional",
    "many_to_one_bidirectional",
    "layer_norm",
    "dropout",
    "dropout_gru_layer_norm",
]


@pytest.mark.parametrize("grads", [True, False])
@pytest.mark.parametrize("name", TEMPLATED)
def test_groups_bound_from_a_template_equal_each_group_bound_alone(name, grads, monkeypatch):
    """`bind_groups` binds a cell's first group in full and derives the other steps' from
    it: the same functions, argument blocks and buffers as `bind` of each group alone, with
    fewer full bindings than groups."""
    raw = CASES[name]
    model = Model(raw)
    plan = model.plan(batch_for(raw), grads=grads)
    fused = [run for run in plan.groups if len(run) > 1]
    alone = [ckernels.bind(plan.schedule, run, grads) for run in fused]
    full_bindings = []
    bind = ckernels.bind
    monkeypatch.setattr(ckernels, "bind", lambda *a: full_bindings.append(1) or bind(*a))
    derived = ckernels.bind_groups(plan.schedule, fused, grads)
    assert 0 < len(full_bindings) < len(fused)
    assert sum(b is not None for b in alone) == len(fused)
    assert_same_bindings(derived, alone)


def assert_same_bindings(derived: list, alone: list) -> None:
    """Each derived kernel has the function, argument block and buffers of its own binding."""
    for one, other in zip(derived, alone, strict=True):
        assert (one.name, one.text) == (other.name, other.text)
        np.testing.assert_array_equal(one.args, other.args)
        assert one.args.dtype == other.args.dtype == np.int64
        assert len(one.arrays) == len(other.arrays)
        assert all(a is b for a, b in zip(one.arrays, other.arrays, strict=True))


def backward_statements(raw: dict, monkeypatch, padded: bool = True) -> tuple:
    """(statements, alone): what a plan of `raw` hands `stamps.compile_chains`."""
    seen = []
    compile_chains = stamps.compile_chains
    monkeypatch.setattr(
        stamps, "compile_chains", lambda *args: seen.append(args) or compile_chains(*args)
    )
    Model(raw).plan(batch_for(raw, padded))
    ((statements, alone),) = seen
    return statements, alone


@pytest.mark.parametrize("name", TEMPLATED)
def test_chains_bound_from_a_template_equal_each_chain_bound_alone(name, monkeypatch):
    """`bind_chains` makes each backward chain's C function once and derives the other
    steps' argument blocks: the same as `bind_chain` of each run alone."""
    statements, alone = backward_statements(CASES[name], monkeypatch)
    found = ckernels.chains(statements, alone=alone)
    runs = [statements[lo:hi] for lo, hi in found]
    alone = [ckernels.bind_chain(statements) for statements in runs]
    derived = ckernels.bind_chains(runs)
    assert len({b.name for b in alone}) < len(runs)  # steps share functions
    assert_same_bindings(derived, alone)


def fake_plan(layouts: list) -> tuple:
    """A plan-like object with one group per step: a = tanh(x), y = a * x, every buffer
    (B, H) float64; layouts[t] makes (x, a, y) of step t from a base array. Returns the
    plan and the groups."""
    from types import SimpleNamespace

    node, meta, value, runs = {}, {}, {}, []
    for t, make in enumerate(layouts):
        x, a, y = ("c", "x", t), ("c", "a", t), ("c", "y", t)
        node[x] = {"kind": "input", "op": None, "inputs": (), "attrs": {}}
        node[a] = {"kind": "op", "op": "tanh", "inputs": (x,), "attrs": {}}
        node[y] = {"kind": "op", "op": "mul", "inputs": (a, x), "attrs": {}}
        value[x], value[a], value[y] = make()
        for k in (x, a, y):
            meta[k] = (value[k].shape, value[k].dtype)
        runs.append([("node", a), ("node", y)])
    an = SimpleNamespace(node=node, meta=meta, inputs=lambda k: node[k]["inputs"])
    layout = SimpleNamespace(value=value, in_place={}, value_stack={})
    plan = SimpleNamespace(an=an, layout=layout, outputs=set())
    return plan, runs


def separate():
    return [np.zeros((3, 4)) for _ in range(3)]


def strided():  # every buffer a column block of a wider one: other row strides
    wide = np.zeros((3, 12))
    return [wide[:, :4], wide[:, 4:8], wide[:, 8:]]


def overlapping():  # y written over x shifted by one element: neither x nor apart
    base = np.zeros(40)
    return [base[:12].reshape(3, 4), np.zeros((3, 4)), base[1:13].reshape(3, 4)]


def test_bind_groups_falls_back_where_a_step_differs_from_its_template(monkeypatch):
    """A step whose buffers have other strides than the template's is bound in full (other
    row strides), one whose output overlaps an input keeps its NumPy chain (None), as
    `bind` decides for each alone."""
    plan, runs = fake_plan([separate, strided, separate, overlapping, strided])
    alone = [ckernels.bind(plan, run, True) for run in runs]
    full_bindings = []
    bind = ckernels.bind
    monkeypatch.setattr(ckernels, "bind", lambda *a: full_bindings.append(a[1]) or bind(*a))
    derived = ckernels.bind_groups(plan, runs, True)
    assert full_bindings == [runs[0], runs[1], runs[4]]  # the template, other strides twice
    assert [b is None for b in alone] == [False, False, False, True, False]
    assert not np.array_equal(alone[0].args[3::2], alone[1].args[3::2])  # row strides differ
    for one, other in zip(derived, alone, strict=True):
        if other is None:
            assert one is None
            continue
        assert (one.name, one.text) == (other.name, other.text)
        np.testing.assert_array_equal(one.args, other.args)
        assert all(a is b for a, b in zip(one.arrays, other.arrays, strict=True))


LOCAL_OPS = [name for name, entry in sorted(ops.OPS.items()) if entry.local_out is not None]


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", LOCAL_OPS)
def test_local_factor_c_expression_gives_local_outs_bits(name, dtype, kernels):
    """Every op with a local derivative spells it in C too (`Op.local_c_expr`), and one
    compiled loop of it, in place over y and into another buffer, gives the bits the NumPy
    `local_out` gives (the plan's factors then run as one loop; the numbers stay the same)."""
    kernels(True)
    entry = ops.OPS[name]
    assert entry.local_c_expr is not None, f"{name}: local_out without local_c_expr"
    rng = np.random.default_rng(3)
    y = rng.uniform(0.05, 0.95, size=(5, 7, 19)).astype(dtype)  # sigmoid-, tanh-, sqrt-like
    want = np.empty_like(y)
    entry.local_out(np, want, y)
    expr = entry.local_c_expr.replace("{t}", ckernels.C_TYPES[np.dtype(dtype)])
    apart, in_place = np.empty_like(y), y.copy()
    run = [
        ckernels.Statement(apart, False, expr, (y,)),
        ckernels.Statement(in_place, False, expr, (in_place,)),
    ]
    assert ckernels.chains(run) == [(0, 2)]
    (kernel,) = ckernels.compile_chains([run])
    kernel()
    np.testing.assert_array_equal(apart, want)
    np.testing.assert_array_equal(in_place, want)


@needs_compiler
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_local_factors_run_as_one_loop(cell, kernels):
    """Compiled, a plan asked for local factors of all steps (`batch_derivatives`; by
    default the compiled chains compute them inline, step by step) runs them and their
    folds as one loop per shape before the loop over steps (a lone factor too: its NumPy
    form is 2-3 passes), and gives the interpreter's numbers (float64, two calls)."""
    from seqgraph.plan.lower import Plan

    kernels(True)
    raw = spec(cell)
    batch = batch_for(raw, padded=False)
    model, interp = Model(raw), Model(raw, engine="interp")
    loss, grads = interp.loss_and_grads(batch)
    inline = model.plan(batch)
    assert not inline.backward.factors
    an = inline.an
    leaf_meta = {k: v for k, v in an.meta.items() if an.kind(k) == "input"}
    plan = Plan(inline.graph, leaf_meta, np, "numpy", "float64", full=True, batch_derivatives=True)
    feeds = batching.feeds(model.spec, inline.graph, batch)
    for _ in range(2):
        got_loss = plan.run(feeds, model.params)
        got = plan.gradients()
        assert got_loss == pytest.approx(loss, rel=1e-11, abs=1e-12)
        for key in grads:
            np.testing.assert_allclose(got[key], grads[key], rtol=1e-11, atol=1e-12, err_msg=key)
    entries = plan.backward.kernels.entries()
    assert not [e for e in entries if e[0] == "local factor"]
    fused = [e[0] for e in entries if e[0].startswith("fused(local factor")]
    assert sum(op.count("local factor") for op in fused) == len(plan.backward.factors) > 0
    # the LSTM's five are of one shape: one loop; the GRU's r|z and n blocks differ
    assert len(fused) == {"lstm": 1, "gru": 2, "rnn": 1}[cell]


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dead", [False, True])
def test_softmax_ce_row_kernels_give_the_numpy_kernels_numbers(dtype, dead, kernels):
    """softmax_ce's compiled forward and VJP (one pass per row) against its NumPy kernels:
    loss and dz within a few ulp, NaN and inf rows as NumPy has them, exp(z - max) kept in
    z's own buffer where z is dead (`dead`), and a target outside the row a NaN loss."""
    from seqgraph.plan.kernels import Context

    entry = ops.OPS["softmax_ce"]
    rng = np.random.default_rng(5)
    z0 = (3 * rng.normal(size=(7, 19))).astype(dtype)
    z0[1, 4], z0[2, 0], z0[3, :] = np.nan, np.inf, -np.inf
    targets = rng.integers(0, 19, size=7).astype(np.int64)
    g = rng.normal(size=7).astype(dtype)
    got = {}
    for on in (True, False):
        kernels(on)
        ctx, z = Context(np, "numpy"), z0.copy()
        if dead:
            ctx.dead_inputs.add(ctx.address(z))
        loss, dz = np.empty(7, dtype), np.empty_like(z)
        forward = entry.out_forward(ctx, loss, z, targets)
        backward = entry.vjp_kernel(ctx, 0, dz, False, g, loss, [z, targets])
        assert ckernels.is_compiled(forward) == ckernels.is_compiled(backward) == on
        with np.errstate(invalid="ignore"):  # inf - inf in the NumPy kernel, as meant
            forward()
            backward()
        got[on] = loss, dz, z
    rtol = 1e-13 if dtype == np.float64 else 1e-5
    for compiled, numpy in zip(got[True][:2], got[False][:2], strict=True):
        np.testing.assert_allclose(compiled, numpy, rtol=rtol, atol=rtol)  # NaN where NaN
    # z's buffer (exp(z - max) where z is dead): the NaN row's maximum may pass the NaN by
    # (its loss and dz are NaN all the same), so only the other rows hold the same there
    rows = [0, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(got[True][2][rows], got[False][2][rows], rtol=rtol, atol=rtol)
    assert np.isnan(got[True][0][[1, 2, 3]]).all() and np.isfinite(got[True][0][[0, 4, 5, 6]]).all()
    kernels(True)
    ctx, z, loss = Context(np, "numpy"), z0.copy(), np.empty(7, dtype)
    entry.out_forward(ctx, loss, z, np.where(np.arange(7) == 0, 19, targets))()
    assert np.isnan(loss[0]) and np.isfinite(loss[4:]).all()


@needs_compiler
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_recurrent_product_adds_in_the_next_steps_chain(cell, kernels):
    """dh += dgates W_hh^T: the product into scratch, the add the first line of the compiled
    chain of the step before (no NumPy add per step); the numbers stay the interpreter's."""
    kernels(True)
    raw = spec(cell)
    batch = batch_for(raw, padded=False)
    steps = batch["x"].shape[1]
    model, interp = Model(raw), Model(raw, engine="interp")
    loss, grads = interp.loss_and_grads(batch)
    got_loss, got = model.loss_and_grads(batch)
    assert got_loss == pytest.approx(loss, rel=1e-11, abs=1e-12)
    for key in grads:
        np.testing.assert_allclose(got[key], grads[key], rtol=1e-11, atol=1e-12, err_msg=key)
    entries = model.plan(batch).backward.kernels.entries()
    ops_ = [e[0] for e in entries]
    assert "vjp[0] matmul +=" not in ops_
    assert sum(op.startswith("fused(add +=,") for op in ops_) == steps - 1
    parts = [e for e in entries if e[1][0][0][1][1] == "h.part"]
    assert len(parts) == steps - 1 and all(e[0] == "vjp[0] matmul" for e in parts)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (5, 70), (33, 32), (64, 100)])
def test_the_transpose_kernel_writes_w_transposed(shape, dtype, kernels):
    """W^T for dx = g W^T, tile by tile (`backward.TRANSPOSE_C`): every element, for sizes
    that fill 32 x 32 tiles and sizes that leave partial ones."""
    from seqgraph.plan import backward

    kernels(True)
    w = np.random.default_rng(1).normal(size=shape).astype(dtype)
    wt = np.full(shape[::-1], np.nan, dtype)
    text = backward.TRANSPOSE_C.replace("{t}", ckernels.C_TYPES[np.dtype(dtype)])
    ckernels.function_kernel(text, [*shape, w, wt])()
    np.testing.assert_array_equal(wt, w.T)
