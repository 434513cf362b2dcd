"""What a plan's buffers share (`liveness.dead_in_backward`, `liveness.overwritten_inputs`,
`local_factors.place`): structural facts of the layout, checked on tiny models; that the
numbers stay the interpreter's is `tests/test_plan.py`'s job, run with the same sharing."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model
from seqgraph.plan import listing
from seqgraph.runtime import batch as batching
from seqgraph.runtime.model import held_bytes

STEPS, BATCH, INPUT, HIDDEN, VOCAB = 6, 3, 2, 5, 7
F64 = 8


@pytest.fixture
def numpy_path(monkeypatch):
    """The plan of the NumPy path (`SEQGRAPH_CPU_KERNELS=0`, as where no C compiler is
    found): local factors made for all steps before the loop, and the layout that keeps
    activations and gradients apart. (Where the chains compile, they compute the local
    derivatives inline, and an LSTM's gate gradients go over its activations, which go
    over its pre-activations: the tests below the factors' own.)"""
    from seqgraph.plan import ckernels

    monkeypatch.setenv(ckernels.SWITCH, "0")


def plan_of(cell: str):
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [{"cell": cell, "hidden": HIDDEN}],
        },
        "dtype": "float64",
    }
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, BATCH, STEPS)
    return model, batch, model.plan(batch)


def class_reading(plan, op: str, operand=None):
    """The class of `op` nodes (reading the node `operand` second, if given)."""
    an = plan.an
    for c in plan.layout.classes:
        same = an.same_op(c)
        k0 = next(iter(an.members[c].values()))
        if same and same[0] == op and (operand is None or an.inputs(k0)[1] == operand):
            return c
    raise AssertionError(f"no {op} class")


def time_stacked_bytes(plan) -> int:
    """Bytes of the plan's arrays stacked over time (a leading axis of T or T + 1 steps)."""
    rows = listing.inventory(plan)
    stacked = [
        nbytes
        for _, nbytes, text in rows
        if text.split("[")[1].split(",")[0] in (str(STEPS), str(STEPS + 1)) and text.count(",") == 2
    ]
    return sum(stacked)


def test_lstm_gate_gradients_live_in_the_input_projection_buffer(numpy_path):
    """Backward never reads x W_ih + b (an add's VJP reads nothing), so the gates' gradient
    stack, of its very shape, takes its buffer."""
    _, _, plan = plan_of("lstm")
    lay = plan.layout
    projection = class_reading(plan, "matmul", ("l0", "W_ih", None))
    hosted = [i for i, c in lay.hosted.items() if c == projection]
    assert len(hosted) == 1
    gradient = lay.grad_buffers[hosted[0]]
    assert gradient is lay.value_stack[projection].arr
    assert gradient.shape == (STEPS, BATCH, 4 * HIDDEN)
    assert f"gradient, in the buffer of {projection[0]}.{projection[1]}" in str(plan)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_softmax_and_logit_gradient_live_in_the_logits_buffer(cell):
    _, _, plan = plan_of(cell)
    lay, an = plan.layout, plan.an
    logits = next(iter(plan.overwritten))
    reader = plan.overwritten[logits][0]
    assert an.same_op(reader)[0] == "softmax_ce"
    value = lay.value_stack[logits].arr
    ((saved_exp, _),) = plan.ctx.saved.values()
    assert np.shares_memory(saved_exp, value)
    assert lay.grad_stack[logits].arr is value
    assert value.shape == (STEPS, BATCH, VOCAB)


def factor_buffers(plan) -> list:
    """The buffer of each local factor, in run order (compiled, their kernels are one loop)."""
    lay = plan.layout
    return [f.stack.span(*lay.range[f.cls]) for f in plan.backward.factors]


def test_lstm_factors_take_no_new_buffer(numpy_path):
    """Of the five local factors (i, f, g, o, tanh c), tanh's two write over their values,
    two sigmoids' take values freed by earlier factors and the last, which found none free,
    waits in its gate's gradient (`local_factors.gradient_regions`), in the projection's
    buffer: not one new buffer."""
    _, _, plan = plan_of("lstm")
    lay = plan.layout
    values = [lay.value_stack[c].arr for c in lay.classes]
    factors = factor_buffers(plan)
    assert len(factors) == 5
    assert not [f for f in factors if not any(np.shares_memory(f, v) for v in values)]
    projection = lay.value_stack[class_reading(plan, "matmul", ("l0", "W_ih", None))].arr
    assert sum(np.shares_memory(f, projection) for f in factors) == 1


def test_lstm_time_stacked_bytes_match_the_hand_written_count(numpy_path):
    """The arrays stacked over time are those of a hand-written LSTM step (tools/
    numpy_hand.py: projection, gate gradients in its place, activations, tanh(c), h, c and
    h's gradient, logits, x, the padding mask; c's gradient takes two steps in turn); before
    the sharing there were the gate gradients, five factors, dc and two logit-sized buffers
    more."""
    T, B, H, C, n_in = STEPS, BATCH, HIDDEN, VOCAB, INPUT
    _, _, plan = plan_of("lstm")
    expected = T * B * 4 * H + 5 * T * B * H + 3 * (T + 1) * B * H + T * B * C + T * B * n_in
    mask = T * B  # bool, one per step and row
    assert time_stacked_bytes(plan) == F64 * expected + mask


def step_views(stack, steps) -> list:
    return [stack.at(t) for t in steps]


@pytest.mark.parametrize("cell, waiting", [("rnn", 1), ("gru", 1), ("lstm", 1)])
def test_a_local_factor_waits_in_its_input_gradient(cell, waiting, numpy_path):
    """A factor f(y) of y = tanh(x) (sigmoid) that finds no value buffer free lives where
    dL/dx will, at every step: the multiply of step t writes dL/dx = g * f(y) over it,
    element by element, as the first write there (the RNN's tanh, the GRU's n, one LSTM
    gate's)."""
    _, _, plan = plan_of(cell)
    an, lay = plan.an, plan.layout
    inside = [f for f in plan.backward.factors if f.in_gradient]
    assert len(inside) == waiting
    for f in inside:
        for t, k in an.members[f.cls].items():
            factor, grad = f.stack.at(t), lay.grad[an.inputs(k)[0]]
            assert np.shares_memory(factor, grad) and factor.shape == grad.shape


def test_a_factor_below_the_size_threshold_keeps_its_own_buffer(monkeypatch, numpy_path):
    """GRADIENT_REGION_MIN_BYTES (1 MiB; the suite sets 0): a tiny RNN's tanh factor (its
    stack of all steps far below it) keeps a buffer apart, as it does at exactly one byte
    more than its gradient region; at the region's size it waits there."""
    from seqgraph.plan import local_factors

    _, _, plan = plan_of("rnn")
    (factor,) = [f for f in plan.backward.factors if f.in_gradient]
    size = factor.stack.span(*plan.layout.range[factor.cls]).nbytes
    for threshold, inside in [(1 << 20, False), (size + 1, False), (size, True)]:
        monkeypatch.setattr(local_factors, "GRADIENT_REGION_MIN_BYTES", threshold)
        _, _, again = plan_of("rnn")
        assert [f.in_gradient for f in again.backward.factors] == [inside]


SQUARED_TANH = ["u = tanh(a)", "h = u * u + a * 0.5"]  # u's factor finds no free value


def test_a_factor_stays_apart_where_its_input_has_another_reader(numpy_path):
    """h = tanh(a)^2 + a / 2: dL/da is the sum of two VJPs' writes, so the tanh factor keeps
    a buffer of its own (and the plan still gives the interpreter's numbers)."""
    plan, model, batch = own_cell_plan(SQUARED_TANH)
    (factor,) = plan.backward.factors
    assert not factor.in_gradient
    assert_same_as_interpreter(model, batch)


def test_a_factor_overwritten_before_its_multiply_falls_back(monkeypatch, numpy_path):
    """Were the structural rule to let the tanh factor of h = tanh(a)^2 + a / 2 wait in
    dL/da, the VJP of a / 2 would write there first; the emitter sees that its multiply adds
    (`local_factors.check_in_gradients`) and emits backward again with the factor apart."""
    from seqgraph.plan import local_factors

    monkeypatch.setattr(local_factors, "_gradient_alone", lambda *args: True)
    plan, model, batch = own_cell_plan(SQUARED_TANH)
    (factor,) = plan.backward.factors
    assert not factor.in_gradient
    assert_same_as_interpreter(model, batch)


def cell_state_class(plan):
    return next(c for c in plan.layout.classes if c[1].startswith("c#"))


def test_lstm_cell_state_gradient_takes_two_steps_in_turn():
    """dc[t] is first written by the VJP of f * c at step t + 1 and last read at step t: a
    ring of two steps holds it (`liveness.rolling_grads`), as hand-written NumPy keeps one
    dc; dc[t] and dc[t + 2] share their place, dc[t] and dc[t + 1] do not, and dc0 (the
    initial state's, read after backward) takes the slot before dc[1]'s."""
    _, _, plan = plan_of("lstm")
    an, lay = plan.an, plan.layout
    c = cell_state_class(plan)
    (base,) = plan.rolled
    assert lay.grad_buffers[base].shape == (2, BATCH, HIDDEN)
    assert lay.grad_stack[c].base == base
    grads = [lay.grad[an.members[c][t]] for t in range(STEPS)]
    for t in range(STEPS - 2):
        assert np.shares_memory(grads[t], grads[t + 2])
        assert not np.shares_memory(grads[t], grads[t + 1])
    seed = next(k for k, (root, _) in lay.placed.items() if root == c)
    assert np.shares_memory(lay.grad[seed], grads[1])
    assert "two steps in turn" in str(plan)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_a_gradient_a_batched_kernel_writes_stays_stacked(cell):
    """dh of every step comes from the readout's one product over all steps: no ring."""
    _, _, plan = plan_of(cell)
    assert plan.rolled == {}


def test_a_ring_read_before_written_gets_its_stack_back(monkeypatch):
    """Where backward would zero-fill a ring once and add to it, the plan restores the full
    stack and emits backward again (forced here: the check says no)."""
    from seqgraph.plan import liveness

    monkeypatch.setattr(liveness, "rings_written_first", lambda *args: False)
    model, batch, plan = plan_of("lstm")
    assert plan.rolled == {}
    c = cell_state_class(plan)
    assert plan.layout.grad_stack[c].arr.shape == (STEPS + 1, BATCH, HIDDEN)
    assert "two steps in turn" not in str(plan)
    assert_same_as_interpreter(model, batch)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_rings_of_stacked_and_reversed_layers_give_the_interpreters_numbers(bidirectional):
    """Two layers, each direction its own ring (a reversed layer takes its steps from the
    last), ragged sequences: the interpreter's numbers, call after call. (The initial
    states' gradients, read from a ring after backward, are those of segment plans:
    tests/test_segments.py.)"""
    from support import make_batch, model_spec

    raw = model_spec("many_to_many", "lstm", bidirectional=bidirectional, hidden=4, layers=2)
    model = Model(raw, dtype="float64")
    batch = make_batch(model.spec, 3, STEPS)
    assert len(model.plan(batch).rolled) == (4 if bidirectional else 2)
    assert_same_as_interpreter(model, batch)


def own_cell_plan(equations: list):
    raw = {
        "cells": {
            "mine": {
                "inputs": ["x"],
                "state": ["h"],
                "output": "h",
                "params": {
                    "W": {"shape": ["input", "hidden"]},
                    "U": {"shape": ["hidden", "hidden"]},
                },
                "equations": ["a = x @ W + h @ U", *equations],
            }
        },
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [{"cell": "mine", "hidden": HIDDEN}],
        },
        "dtype": "float64",
    }
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, BATCH, STEPS)
    return model.plan(batch), model, batch


def assert_same_as_interpreter(model, batch, calls: int = 3) -> None:
    interp = Model(model.spec, dtype="float64", engine="interp")
    loss, grads = interp.loss_and_grads(batch)
    for _ in range(calls):
        got_loss, got = model.loss_and_grads(batch)
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_shared_buffers_give_the_same_numbers_call_after_call(cell):
    """A buffer that holds a value in forward and a gradient in backward is written afresh
    every call: three calls give the interpreter's loss and gradients each time."""
    model, batch, _ = plan_of(cell)
    interp = Model(model.spec, dtype="float64", engine="interp")
    loss, grads = interp.loss_and_grads(batch)
    for _ in range(3):
        got_loss, got = model.loss_and_grads(batch)
        assert got_loss == pytest.approx(loss, rel=1e-12)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12)


def test_inventory_counts_every_allocation_once():
    """`listing.inventory` names each array the plan holds once, views folded into it."""
    _, _, plan = plan_of("rnn")
    rows = listing.inventory(plan)
    labels = [label for label, _, _ in rows]
    assert "dl0.W_hh" in labels and "x.x[0:6]" in labels
    assert sum(1 for label in labels if label == "out.xW[0:6]") == 1
    # it walks the kernels too, so it finds at least the layout's and the context's arrays
    assert sum(nbytes for _, nbytes, _ in rows) >= held_bytes(plan) > 0


def test_gru_factors_take_no_new_buffer(numpy_path):
    """r and z's factor takes the r, z block of h W_hh + b_hh, a value region backward never
    reads (below); n's, finding none free, waits in the x_n block of the input projection's
    gradient, which x_n + r * h_n adopts (`Layout._adopted_input`)."""
    _, _, plan = plan_of("gru")
    assert [f.in_gradient for f in plan.backward.factors] == [False, True]
    x_n = plan.layout.grad_buffers
    assert all(any(np.shares_memory(f, g) for g in x_n) for f in factor_buffers(plan)[1:])


def test_gru_gate_factor_lives_in_the_unread_block_of_the_recurrent_projection(
    monkeypatch, numpy_path
):
    """Where a factor cannot wait in a gradient (the rule off here), backward reads only the
    n block of h W_hh + b_hh (for r * h_n): the r and z block holds the sigmoid's local
    factor, which has its shape."""
    from seqgraph.plan import local_factors

    monkeypatch.setattr(local_factors, "gradient_regions", lambda *args: {})
    _, _, plan = plan_of("gru")
    projection = plan.layout.value_stack[class_reading(plan, "matmul", ("l0", "W_hh", None))]
    inside = [f for f in factor_buffers(plan) if np.shares_memory(f, projection.arr)]
    assert len(inside) == 1
    assert inside[0].shape == (STEPS, BATCH, 2 * HIDDEN)


@pytest.mark.parametrize("layout", ["strided_g", "strided_dest", "add"])
def test_the_cross_entropy_gradient_over_its_own_logits_takes_any_layout(layout):
    """softmax_ce writes exp(z - max) over z where nothing else reads z; its gradient kernel
    must then take that saved buffer whatever the layout of g and dest (before: a strided g
    or dest sent it to the reference VJP, which would read z's buffer, now holding e)."""
    from seqgraph.engine import ops
    from seqgraph.plan import kernels

    rng = np.random.default_rng(0)
    z0, targets = rng.standard_normal((6, 5)), rng.integers(0, 5, size=6)
    g_full = rng.standard_normal((6, 2))
    g = g_full[:, 0] if layout == "strided_g" else np.ascontiguousarray(g_full[:, 0])
    want = ops.OPS["softmax_ce"].vjp(np, g, None, z0, targets)[0]
    ctx = kernels.Context(np, "numpy", keep_for_vjp=True)
    z, out = z0.copy(), np.empty(6)
    ctx.dead_inputs.add(ctx.address(z))
    kernels.forward(ctx, "softmax_ce", out, [z, targets], {})()
    assert not np.allclose(z, z0)  # e took z's place
    wide = np.zeros((6, 10))
    dest = wide[:, ::2] if layout == "strided_dest" else np.zeros((6, 5))
    start = rng.standard_normal((6, 5)) if layout == "add" else np.zeros((6, 5))
    dest[...] = start
    kernel = ops.OPS["softmax_ce"].vjp_kernel(ctx, 0, dest, layout == "add", g, out, [z, targets])
    kernel()
    np.testing.assert_allclose(dest, start + want if layout == "add" else want, rtol=1e-12)


def test_a_numpy_training_step_imports_no_scipy():
    """scipy.special (once the small-sigmoid kernel) costs 26 MiB of resident memory and a
    second OpenBLAS thread pool: a NumPy plan must not import it (regression)."""
    import subprocess
    import sys

    program = (
        "import sys, numpy as np\n"
        "from seqgraph import Model\n"
        "spec = {'model': {'pattern': 'many_to_many', 'layers': [{'cell': 'lstm', 'hidden': 5}],\n"
        "        'input': {'type': 'vectors', 'size': 3}, 'target': {'type': 'ids', 'vocab': 4}}}\n"
        "model = Model(spec, dtype='float32')\n"
        "x = np.ones((2, 4, 3), np.float32); y = np.zeros((2, 4), np.int64)\n"
        "loss, grads = model.loss_and_grads({'x': x, 'y': y})\n"
        "assert np.isfinite(loss) and grads\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    for cpu_kernels in ("1", "0"):  # compiled kernels, and the NumPy chain without them
        env = dict(__import__("os").environ, SEQGRAPH_CPU_KERNELS=cpu_kernels)
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=True
        )
        assert done.stdout.strip() == "[]"


def test_training_a_model_loads_neither_scipy_nor_array_api_compat():
    """A fresh process that builds a model and runs two training steps by its plan imports
    neither scipy.special nor array_api_compat.numpy (NumPy >= 2.1 is the namespace itself,
    `backend.numpy_namespace`; the wrapper loads every lazy NumPy submodule: 7 MiB)."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys\n"
        "import numpy as np\n"
        "from seqgraph import Model\n"
        "spec = {'model': {'pattern': 'many_to_many', 'input': {'type': 'vectors', "
        "'size': 24}, 'target': {'type': 'ids', 'vocab': 5}, "
        "'layers': [{'cell': 'lstm', 'hidden': 32}]}}\n"
        "model = Model(spec)\n"
        "rng = np.random.default_rng(0)\n"
        "batch = {'x': rng.normal(size=(20, 7, 24)), 'y': rng.integers(0, 5, (20, 7))}\n"
        "model.loss_and_grads(batch)\n"
        "model.loss_and_grads(batch)\n"
        "print(sorted(m for m in ('scipy.special', 'array_api_compat.numpy') "
        "if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True
    )
    loaded = result.stdout.strip().splitlines()[-1]
    expected = "[]" if getattr(np, "__array_api_version__", "") >= "2023.12" else None
    if expected is None:  # older NumPy: array_api_compat is the namespace
        assert "scipy.special" not in loaded
    else:
        assert loaded == expected


def test_building_and_training_a_model_loads_no_numpy_module_the_package_import_did_not():
    """numpy.random (every Model draws its initial parameters from it) comes with `import
    seqgraph`: loaded lazily by the first Model(...), its ~2 MiB of modules counted in that
    call's memory (tools/bench.py --memory measures above the imports)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import seqgraph\n"
        "import numpy as np\n"
        "loaded = set(sys.modules)\n"
        "spec = {'model': {'pattern': 'many_to_many', 'input': {'type': 'vectors', "
        "'size': 3}, 'target': {'type': 'ids', 'vocab': 4}, "
        "'layers': [{'cell': 'gru', 'hidden': 5}]}}\n"
        "model = seqgraph.Model(spec, dtype='float32')\n"
        "batch = {'x': np.ones((2, 4, 3), np.float32), 'y': np.zeros((2, 4), np.int64)}\n"
        "model.loss_and_grads(batch)\n"
        "print(sorted(m for m in set(sys.modules) - loaded if m.split('.')[0] == 'numpy'))\n"
    )
    run = [sys.executable, "-c", script]
    done = subprocess.run(run, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def transposes(plan) -> dict:
    """W -> the W^T buffer that backward refreshes when it starts (its `transpose` kernels)."""
    entries = plan.backward.kernels.entries()
    return {reads[0][0]: writes[0][1] for op, writes, reads, _ in entries if op == "transpose"}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_weights_transpose_waits_in_its_gradient_buffer(cell):
    """W^T, read by dh = g W^T in the loop and by the readout's batched product, lives in dW's
    buffer: dW is written once after its last read (the steps' sum in one product), so no
    array of its own holds W^T; three calls give the interpreter's numbers."""
    model, batch, plan = plan_of(cell)
    found = transposes(plan)
    assert {k[1] for k in found} == {"W_hh", "W"}
    for key, transposed in found.items():
        assert np.shares_memory(transposed, plan.layout.grad[key])
        assert transposed.shape == plan.layout.value[key].shape[::-1]
    labels = [label for label, _, _ in listing.inventory(plan)]
    assert not any(label.endswith("^T") for label in labels)
    assert_same_as_interpreter(model, batch)


def test_a_weight_used_twice_in_a_step_gives_the_interpreters_numbers():
    """U in two products of a step: dU is written by the first of two products after the
    loop and added to by the second, both after U^T's last read, so U^T waits in dU too."""
    plan, model, batch = own_cell_plan(["h = tanh(a) * sigmoid((h * 0.5) @ U)"])
    found = transposes(plan)
    assert np.shares_memory(found[("l0", "U", None)], plan.layout.grad[("l0", "U", None)])
    assert_same_as_interpreter(model, batch)


def test_a_transpose_read_after_its_gradient_is_written_gets_its_own_buffer(monkeypatch):
    """Where the order check says no (forced here), backward is emitted again with W^T in a
    buffer of its own, and the numbers stay the interpreter's."""
    from seqgraph.plan import backward

    monkeypatch.setattr(
        backward._Emitter, "check_transposes_in_gradients", lambda self: not self.hosted_transposes
    )
    model, batch, plan = plan_of("lstm")
    found = transposes(plan)
    assert found
    for key, transposed in found.items():
        assert not np.shares_memory(transposed, plan.layout.grad[key])
    assert "l0.W_hh^T" in [label for label, _, _ in listing.inventory(plan)]
    assert_same_as_interpreter(model, batch)


def test_building_a_runner_gives_the_heaps_free_pages_back_once(monkeypatch):
    """A new plan runner hands back what its lowering freed (`runtime/heap.py`); a cached one
    does nothing more, and the numbers stay the interpreter's, call after call."""
    from seqgraph.runtime import heap

    calls = []
    monkeypatch.setattr(heap, "give_back_free_pages", lambda: calls.append(1) or True)
    model, batch, _ = plan_of("lstm")
    assert len(calls) == 1
    assert_same_as_interpreter(model, batch)
    model.forward(batch)  # the forward-only plan is a second runner
    model.forward(batch)
    assert len(calls) == 2


def test_giving_the_free_pages_back_keeps_every_plan_buffer():
    """malloc_trim returns free chunks only: a plan's buffers keep their contents."""
    from seqgraph.runtime import heap

    model, batch, plan = plan_of("gru")
    model.loss_and_grads(batch)
    before = [np.array(b, copy=True) for b in plan.layout.grad_buffers]
    values = [np.array(s.arr, copy=True) for s in plan.layout.value_stack.values()]
    assert heap.give_back_free_pages() is heap.available()
    assert all(np.array_equal(a, b) for a, b in zip(before, plan.layout.grad_buffers))
    assert all(np.array_equal(a, s.arr) for a, s in zip(values, plan.layout.value_stack.values()))


def test_the_memory_account_names_each_part_once():
    """`tools/plan_memory.py --account` on the tiny RNN: the weights and the gradient copies
    are the parameter count in float32, the plan's arrays are `held_bytes`, and the Python
    objects still alive are named by the lines that made them, largest first."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import plan_memory

    parts = plan_memory.account("rnn", "tiny", lines=4)
    _, _, n_in, hidden, classes = plan_memory.CONFIGS["tiny"]
    count = n_in * hidden + hidden * hidden + 2 * hidden + hidden * classes + classes
    assert parts["params"] == parts["grad_copies"] == 4 * count
    model = plan_memory.bench_model("rnn", plan_memory.CONFIGS["tiny"])
    assert parts["plan_arrays"] == held_bytes(
        model.plan(plan_memory.make_data(plan_memory.CONFIGS["tiny"]))
    )
    sizes = [nbytes for _, nbytes in parts["top"]]
    assert len(sizes) == 4 and sizes == sorted(sizes, reverse=True)
    assert 0 < sum(sizes) <= parts["python_objects"]
    assert all(":" in line for line, _ in parts["top"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_batch_with_nan_or_inf_is_refused_by_name(bad):
    """The finiteness check of batch['x'] (least and greatest entries) still names the key."""
    from seqgraph.errors import DataError

    model, batch, _ = plan_of("rnn")
    x = np.array(batch["x"], copy=True)
    x[1, 2, 0] = bad
    with pytest.raises(DataError, match=r"batch\['x'\] contains NaN or Inf"):
        model.loss_and_grads({**batch, "x": x})
    extreme = np.full_like(x, np.finfo(np.float64).max)  # finite, though its sum is not
    assert batching.prepare(model.spec, {**batch, "x": extreme}).x is not None


def test_preparing_a_batch_allocates_nothing_the_size_of_the_batch():
    """Checking batch['x'] is two reductions: no temporary array as large as x at each step
    (where the plan's buffers are all in use)."""
    import tracemalloc

    model, _, _ = plan_of("rnn")
    x = np.random.default_rng(0).standard_normal((16, 50, INPUT))
    batch = {"x": x, "y": np.zeros((16, 50), dtype=np.int64)}
    batching.prepare(model.spec, batch)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    batching.prepare(model.spec, batch)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak < x.size  # a bool mask of x alone is x.size bytes


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_loss_and_grads_skips_the_state_copies_and_keeps_its_numbers(cell):
    """`loss_and_grads` copies no final states (it drops them); its loss and gradients are
    `train_step`'s bit for bit, call after call, and a dict it returned keeps its values when
    later calls run with other weights."""
    model, batch, _ = plan_of(cell)
    loss, grads = model.loss_and_grads(batch)
    kept = {name: g.copy() for name, g in grads.items()}
    for _ in range(2):
        step_loss, step_grads, states = model.train_step(batch)
        again_loss, again = model.loss_and_grads(batch)
        assert again_loss == step_loss == loss and states
        for name in grads:
            assert np.array_equal(again[name], step_grads[name])
            assert np.array_equal(again[name], kept[name])
    halved = {name: p * 0.5 for name, p in model.params.items()}
    model.set_params(halved)
    got_loss, got = model.loss_and_grads(batch)
    assert all(np.array_equal(grads[name], kept[name]) for name in grads)
    interp = Model(model.spec, dtype="float64", engine="interp")
    interp.set_params(halved)
    want_loss, want = interp.loss_and_grads(batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-12)


# ---- where the chains compile: activations over pre-activations, gradients over both ----

needs_compiler = pytest.mark.skipif(
    __import__("seqgraph.plan.ckernels").plan.ckernels.compiler() is None,
    reason="no C compiler ($CC, cc, gcc): the NumPy path keeps activations apart",
)


def same_view(a, b) -> bool:
    """The very same elements: start, shape and strides."""
    return (a.__array_interface__["data"][0], a.shape, a.strides) == (
        b.__array_interface__["data"][0],
        b.shape,
        b.strides,
    )


@needs_compiler
def test_lstm_activations_then_gate_gradients_take_the_pre_activations_place():
    """Compiled, the four gate activations are written over their pre-activation blocks of
    x W_ih + b + h W_hh (`Layout.activations`), and the gates' gradient over both
    (`liveness.gradients_over_activations`): dL/di at step t is the very view that holds
    sigmoid(i) at step t until its VJP reads it. One buffer of (T, B, 4H) for what the
    NumPy path keeps in five (pre-activations and gate gradients, four activations)."""
    _, _, plan = plan_of("lstm")
    an, lay = plan.an, plan.layout
    projection = lay.value_stack[class_reading(plan, "matmul", ("l0", "W_ih", None))].arr
    assert sorted(an.same_op(c)[0] for c in lay.activations) == ["sigmoid"] * 3 + ["tanh"]
    for c, view in lay.activations.items():
        assert lay.source[view][0] == "view"
        for k in an.members[c].values():
            pre = an.inputs(k)[0]
            assert same_view(lay.value[k], lay.value[pre])
            assert same_view(lay.grad[pre], lay.value[k])
            assert np.shares_memory(lay.value[k], projection)
    (base,) = [i for i, arr in enumerate(lay.grad_buffers) if arr is projection]
    assert lay.hosted[base] in lay.own_hosted
    assert not plan.backward.factors  # the chains compute g * f(y) inline, step by step


@needs_compiler
def test_lstm_time_stacked_bytes_compiled_are_below_the_hand_written_count():
    """Compiled: the pre-activations, activations and gate gradients in one (T, B, 4H)
    buffer, tanh(c), h, c and h's gradient, logits, x and the mask; a hand-written LSTM
    step (tools/numpy_hand.py) keeps gate gradients apart from its activations."""
    T, B, H, C, n_in = STEPS, BATCH, HIDDEN, VOCAB, INPUT
    _, _, plan = plan_of("lstm")
    expected = T * B * 4 * H + T * B * H + 3 * (T + 1) * B * H + T * B * C + T * B * n_in
    assert time_stacked_bytes(plan) == F64 * expected + T * B
    hand = expected + 4 * T * B * H  # its activations beside the gate gradients
    assert time_stacked_bytes(plan) < F64 * hand


GATED = ["p, q = split(a, 2)", "u = sigmoid(p)", "v = tanh(q)", "h = u * v + (1 - u) * h"]


def gated_cell(equations: list, layers: int = 1, bidirectional: bool = False):
    """A cell of the user's own: two gates over column blocks of one projection (and a
    matrix V, where the equations use one)."""
    params = {"W": {"shape": ["input", "2*hidden"]}, "U": {"shape": ["hidden", "2*hidden"]}}
    if any("V" in line for line in equations):
        params["V"] = {"shape": ["hidden", "hidden"]}
    cell = {
        "inputs": ["x"],
        "state": ["h"],
        "output": "h",
        "params": params,
        "equations": ["a = x @ W + h @ U", *equations],
    }
    return ragged_plan("mine", layers, bidirectional, {"mine": cell})


def ragged_plan(cell: str, layers: int = 1, bidirectional: bool = False, cells=None):
    """(plan, model, batch) of `layers` of `cell` over a ragged float64 batch."""
    layer = {"cell": cell, "hidden": HIDDEN, "bidirectional": bidirectional}
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [layer] * layers,
        },
        "dtype": "float64",
    }
    if cells:
        raw["cells"] = cells
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, BATCH, STEPS)
    batch["lengths"] = np.array([STEPS, 2, 4])
    return model.plan(batch), model, batch


def hosted_over_activations(plan) -> list:
    lay = plan.layout
    return [i for i, c in lay.hosted.items() if c in lay.own_hosted and c not in plan.overwritten]


@needs_compiler
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (2, True)])
def test_a_cells_own_gates_take_their_pre_activations_place(layers, bidirectional):
    """A cell written in the spec, two gates over column blocks of one projection, stacked
    and bidirectional, ragged: each layer and direction keeps its activations and their
    gradients over its pre-activations, and the plan gives the interpreter's numbers
    (float64) call after call."""
    plan, model, batch = gated_cell(GATED, layers, bidirectional)
    directions = layers * (2 if bidirectional else 1)
    assert len(plan.layout.activations) == 2 * directions
    assert len(hosted_over_activations(plan)) == directions
    assert_same_as_interpreter(model, batch)


@needs_compiler
def test_an_activation_read_after_its_gradient_is_written_keeps_a_gradient_apart():
    """u is read by u @ V, whose dV is one product over all steps after the loop
    (`schedule.deferred`), after each step's du took u's place: the emitter sees that read
    come after the write (`liveness.activation_reads_first`) and gives the gradient an array
    of its own (`Layout.unhost`); the activations stay over their pre-activations, and the
    numbers stay the interpreter's."""
    read_late = [*GATED[:3], "h = tanh(u @ V) * v + (1 - u) * h"]
    plan, model, batch = gated_cell(read_late)
    lay = plan.layout
    assert len(lay.activations) == 2
    assert hosted_over_activations(plan) == []
    for c in lay.activations:
        for k in plan.an.members[c].values():
            pre = plan.an.inputs(k)[0]
            assert same_view(lay.value[k], lay.value[pre])
            assert not np.shares_memory(lay.grad[pre], lay.value[k])
    assert_same_as_interpreter(model, batch)


@needs_compiler
def test_gradients_over_activations_that_fail_the_check_get_their_own_buffer(monkeypatch):
    """Forced here (the check says no): the LSTM's gate gradients move to an array of their
    own, every view of them made again there, and the numbers stay the interpreter's."""
    from seqgraph.plan import liveness

    real = liveness.activation_reads_first
    monkeypatch.setattr(liveness, "activation_reads_first", lambda an, lay, *rest: list(lay.hosted))
    model, batch, plan = plan_of("lstm")
    monkeypatch.setattr(liveness, "activation_reads_first", real)
    lay = plan.layout
    projection = lay.value_stack[class_reading(plan, "matmul", ("l0", "W_ih", None))].arr
    assert lay.activations and not any(arr is projection for arr in lay.grad_buffers)
    assert not any(np.shares_memory(g, projection) for g in lay.grad.values())
    assert "in the buffer of l0.gates" not in str(plan)
    assert_same_as_interpreter(model, batch)


def recurrent_class(plan, op: str):
    """The class of `op` on the recurrence (the RNN's h = tanh(...))."""
    an = plan.an
    return next(c for c in plan.layout.classes if c in an.recurrent and an.same_op(c)[0] == op)


@needs_compiler
def test_rnn_state_gradient_takes_the_pre_activation_gradients_place():
    """Compiled, dL/dh at step t lives where dL/da of h = tanh(a) goes (`Layout.under`), in
    the buffer of x W_ih + b (`liveness.dead_in_backward`): the step's VJP writes
    dL/da = dL/dh * (1 - h^2) over dL/dh element by element, as hand-written NumPy does
    `dG[t] *= 1 - h[t]**2`; the time-stacked arrays are then the hand-written step's."""
    T, B, H, C, n_in = STEPS, BATCH, HIDDEN, VOCAB, INPUT
    _, _, plan = plan_of("rnn")
    an, lay = plan.an, plan.layout
    h = recurrent_class(plan, "tanh")
    projection = lay.value_stack[class_reading(plan, "matmul", ("l0", "W_ih", None))].arr
    assert lay.under == {h: class_of_input(plan, h)}
    for k in an.members[h].values():
        assert same_view(lay.grad[k], lay.grad[an.inputs(k)[0]])
        assert np.shares_memory(lay.grad[k], projection)
    expected = T * B * H + (T + 1) * B * H + T * B * C + T * B * n_in
    assert time_stacked_bytes(plan) == F64 * expected + T * B


def class_of_input(plan, cls):
    from seqgraph.plan.analysis import class_of

    return class_of(plan.an.inputs(next(iter(plan.an.members[cls].values())))[0])


@needs_compiler
@pytest.mark.parametrize("cell", ["rnn", "own_sigmoid"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_gradients_under_their_inputs_give_the_interpreters_numbers(cell, bidirectional):
    """Two layers (each direction its own), ragged sequences: the interpreter's numbers,
    call after call, for the RNN and a cell of the user's own, h = sigmoid(x W + h U).
    (The initial states' gradients, each an array of its own here, not the slot before
    the shared stack, are those of segment plans: tests/test_segments.py.)"""
    from support import make_batch, model_spec

    cells = {
        "own_sigmoid": {
            "inputs": ["x"],
            "state": ["h"],
            "output": "h",
            "params": {"W": {"shape": ["input", "hidden"]}, "U": {"shape": ["hidden", "hidden"]}},
            "equations": ["h = sigmoid(x @ W + h @ U)"],
        }
    }
    raw = model_spec("many_to_many", cell, bidirectional=bidirectional, hidden=4, cells=cells)
    model = Model(raw, dtype="float64")
    batch = make_batch(model.spec, 3, STEPS)
    plan = model.plan(batch)
    assert len(plan.layout.under) == (4 if bidirectional else 2)
    assert_same_as_interpreter(model, batch)


# ---- where the chains compile: a column view read in backward under its own gradient ----


def hosted_read_views(plan) -> dict:
    """parent class -> its read view nodes, for the parents that hold their own gradient."""
    from seqgraph.plan import liveness

    return liveness.hosted_read_views(plan.layout)


@needs_compiler
def test_gru_recurrent_projection_holds_its_own_gradient():
    """Compiled, the GRU's h W_hh + b_hh keeps its gradient (stacked for the one dW_hh
    product after the loop) in its own buffer: backward never reads its r and z blocks, and
    reads its n block (h W_hn + b_hn) only in step t's chain, before the VJP of
    r * (h W_hn + b_hn) writes that block's gradient over it, element by element. dL/d(h
    W_hn + b_hn) at step t is the very view that holds its value at step t. 18.75 MiB less
    at the medium benchmark, and the interpreter's numbers call after call."""
    from seqgraph.plan import liveness

    model, batch, plan = plan_of("gru")
    lay = plan.layout
    assert lay.read_views == liveness.read_views(plan.an, lay)  # what the lowering kept
    (nodes,) = hosted_read_views(plan).values()
    assert nodes
    for k in nodes:
        assert same_view(lay.grad[k], lay.value[k])
    assert_same_as_interpreter(model, batch)


@needs_compiler
@pytest.mark.parametrize("layers, bidirectional", [(2, False), (2, True)])
def test_gru_stacked_and_bidirectional_hold_their_projection_gradients(layers, bidirectional):
    plan, model, batch = ragged_plan("gru", layers, bidirectional)
    assert len(hosted_read_views(plan)) == layers * (2 if bidirectional else 1)
    assert_same_as_interpreter(model, batch)


@needs_compiler
def test_a_view_read_after_its_gradient_is_written_keeps_a_gradient_apart():
    """p and q, blocks of the projection, are read in backward: q by the VJP of q * h in
    its step, p by p @ V, whose dV is one product over all steps after the loop, after each
    step's dp took p's place: the emitter sees that read come after the write
    (`liveness.activation_reads_first`), gives the gradient an array of its own
    (`Layout.unhost`), and the numbers stay the interpreter's."""
    plan, model, batch = gated_cell(["p, q = split(a, 2)", "h = tanh(p @ V + q * h)"])
    from seqgraph.plan import liveness

    read = liveness.read_views(plan.an, plan.layout)
    assert read, "p is a column view that backward reads"
    assert hosted_read_views(plan) == {}
    lay = plan.layout
    for nodes in read.values():
        for k in nodes:
            assert not np.shares_memory(lay.grad[k], lay.value[k])
    assert_same_as_interpreter(model, batch)
