"""The execution plan (`seqgraph/plan/lower.py`) gives the interpreter's numbers
(`autodiff.Program`).

Every case runs one spec through `Model(engine="plan")` and `Model(engine="interp")` in
float64 and compares the loss and every parameter gradient to ~1e-12, with the fused groups
run as compiled C kernels and as NumPy ufunc chains (the `cpu_kernels` fixture).
"""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model
from seqgraph.plan import ckernels, rewrites
from seqgraph.plan.layout import Slot
from seqgraph.runtime import batch as batching

pytestmark = pytest.mark.usefixtures("cpu_kernels")

CUSTOM_LSTM = {  # a user cell with one weight per gate: nothing fused
    "inputs": ["x"],
    "state": ["h", "c"],
    "output": "h",
    "params": {
        **{
            f"W_{g}": {"shape": ["input", "hidden"], "init": {"dist": "uniform", "scale": 0.3}}
            for g in "ifgo"
        },
        **{
            f"U_{g}": {"shape": ["hidden", "hidden"], "init": {"dist": "uniform", "scale": 0.3}}
            for g in "ifgo"
        },
        "b": {"shape": ["hidden"], "init": {"dist": "uniform", "scale": 0.3}},
    },
    "equations": [
        "i = sigmoid(x @ W_i + h @ U_i + b)",
        "f = sigmoid(x @ W_f + h @ U_f)",
        "g = tanh(x @ W_g + h @ U_g)",
        "o = sigmoid(x @ W_o + h @ U_o)",
        "c = f * c + i * g",
        "h = o * tanh(c) / (1 + exp(-h))",
    ],
}


def spec(cell="lstm", layers=1, pattern="many_to_many", ids=False, **layer):
    model = {
        "pattern": pattern,
        "input": {"type": "ids", "vocab": 7} if ids else {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": 4},
        "layers": [{"cell": cell, "hidden": 5, **layer}] * layers,
    }
    if ids:
        model["encoders"] = [{"type": "embedding", "size": 6}]
    out = {"model": model, "dtype": "float64"}
    if cell == "custom":
        out["cells"] = {"custom": CUSTOM_LSTM}
    return out


def check_same(raw, batch, feedback="teacher", calls=2):
    plan = Model(raw, backend="numpy", dtype="float64", engine="plan")
    interp = Model(raw, backend="numpy", dtype="float64", engine="interp")
    loss, grads = interp.loss_and_grads(batch, feedback)
    for _ in range(calls):  # buffers are reused: the second call must not see the first
        got_loss, got = plan.loss_and_grads(batch, feedback)
        assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
        assert set(got) == set(grads)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12, err_msg=name)
    return plan


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "gru", "lstm", "custom"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_many_to_many_matches_interpreter(cell, layers, padded):
    raw = spec(cell, layers)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5)
    if padded:
        batch["lengths"] = np.array([5, 2, 4])
    check_same(raw, batch)


@pytest.mark.parametrize(
    "raw",
    [
        spec("lstm", pattern="many_to_one"),
        spec("gru", 2, bidirectional=True),
        spec("lstm", bidirectional=True, merge="sum"),
        spec("lstm", ids=True),
        spec("rnn", init_state="learned"),
    ],
)
def test_other_shapes_match_interpreter(raw):
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 4)
    batch["lengths"] = np.array([4, 3])
    check_same(raw, batch)


def test_feedback_patterns_match_interpreter():
    raw = spec("gru", pattern="encoder_decoder")
    model = Model(raw, dtype="float64")
    batch = batching.dummy(model.spec, 2, 3, out_steps=4)
    check_same(raw, batch)
    check_same(raw, batch, feedback="free")
    raw = spec("lstm", pattern="one_to_many")
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 1, out_steps=3)
    check_same(raw, batch)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_attention_matches_interpreter(kind):
    """Every decoder step reads all encoder steps (padded ones masked): loss and gradients,
    teacher-forced and free-running, and the attention weights forward returns."""
    raw = spec("gru", pattern="encoder_decoder", ids=True)
    raw["model"]["attention"] = {"type": kind, "size": 4}
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5, out_steps=4)
    batch["lengths"] = np.array([5, 2, 4])
    plan = check_same(raw, batch)
    check_same(raw, batch, feedback="free")
    interp = Model(raw, backend="numpy", dtype="float64", engine="interp")
    interp.set_params(plan.params)
    for feedback in ("teacher", "free"):
        got = plan.forward(batch, feedback)["attention"]
        want = interp.forward(batch, feedback)["attention"]
        assert got.shape == (3, 4, 5)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_carried_state_matches_interpreter():
    raw = spec("lstm")
    batch = batching.dummy(Model(raw, dtype="float64").spec, 2, 3)
    rng = np.random.default_rng(1)
    batch["state"] = {"l0.h0": rng.normal(size=(2, 5)), "l0.c0": rng.normal(size=(2, 5))}
    check_same(raw, batch)


def test_time_batching_makes_one_product_per_projection():
    """Input projection and readout run once over all steps; the recurrence does not."""
    model = Model(spec("lstm", 2), dtype="float64")
    plan = model.plan(batching.dummy(model.spec, 2, 6))
    assert {("l0", "t#1"), ("l1", "t#1"), ("out", "xW")} <= set(plan.batched)
    assert not any(c in plan.batched for c in plan.an.recurrent)
    products = [u for u in plan.units if plan.an.node.get(u[1], {}).get("op") == "matmul"]
    assert len(products) == 2 * 6  # h @ W_hh per layer and step; nothing else per step


def test_plan_is_cached_per_batch_shape():
    model = Model(spec("rnn"), dtype="float64")
    short, long = (batching.dummy(model.spec, 2, n) for n in (3, 6))
    first = model.plan(short)
    assert model.plan(long) is not first
    assert model.plan(batching.dummy(model.spec, 2, 3, seed=5)) is first


def test_single_sequence_batch_matches_interpreter():
    """Regression: with B=1 a per-step loss is 0-d, and its slot must stay a view."""
    raw = spec("gru")
    check_same(raw, batching.dummy(Model(raw, dtype="float64").spec, 1, 4))


def pair(raw):
    return (Model(raw, backend="numpy", dtype="float64", engine=e) for e in ("plan", "interp"))


def assert_close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12, err_msg=what)


def check_train_step(raw, batch, feedback="teacher", state_at=None, calls=2):
    plan, interp = pair(raw)
    loss, grads, states = interp.train_step(batch, feedback, state_at)
    for _ in range(calls):
        got_loss, got_grads, got_states = plan.train_step(batch, feedback, state_at)
        assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
        assert set(got_grads) == set(grads) and list(got_states) == list(states)
        for name in grads:
            assert_close(got_grads[name], grads[name], name)
        for name in states:
            assert_close(got_states[name], states[name], name)


def check_forward(raw, batch, feedback="teacher", calls=2):
    plan, interp = pair(raw)
    want = interp.forward(batch, feedback)
    for _ in range(calls):
        got = plan.forward(batch, feedback)
        assert got["predictions"].shape == want["predictions"].shape
        assert_close(got["predictions"], want["predictions"], "predictions")
        if want["loss"] is None:
            assert got["loss"] is None
        else:
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-12, abs=1e-12)
        assert list(got["state"]) == list(want["state"])
        for name in want["state"]:
            assert_close(got["state"][name], want["state"][name], name)
    forward_only = plan.plan(batch, feedback, grads=False)
    assert not forward_only.backward_kernels and not forward_only.layout.grad_buffers


@pytest.mark.parametrize("state_at", [None, 1, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_train_step_matches_interpreter(cell, state_at):
    raw = spec(cell, 2)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5)
    rng = np.random.default_rng(2)
    batch["state"] = {"l0.h0": rng.normal(size=(3, 5))}
    batch["loss_from"] = 2
    check_train_step(raw, batch, state_at=state_at)
    batch["lengths"] = np.array([5, 2, 4])
    check_train_step(raw, batch, state_at=state_at)


@pytest.mark.parametrize(
    "raw",
    [
        spec("lstm"),
        spec("gru", 2, bidirectional=True),
        spec("lstm", pattern="many_to_one"),
        spec("lstm", ids=True),
        spec("custom"),
    ],
)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("targets", [True, False])
def test_forward_matches_interpreter(raw, padded, targets):
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 4)
    if padded:
        batch["lengths"] = np.array([4, 1, 3])
    if not targets:
        del batch["y"]
    check_forward(raw, batch)


@pytest.mark.parametrize("feedback", ["teacher", "free", "scheduled"])
@pytest.mark.parametrize("pattern", ["encoder_decoder", "one_to_many"])
def test_feedback_forward_and_train_step_match_interpreter(pattern, feedback):
    raw = spec("lstm", pattern=pattern)
    steps = 1 if pattern == "one_to_many" else 3
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, steps, out_steps=4)
    batch["use_model"] = np.random.default_rng(3).random((3, 4)) < 0.5
    batch["y_lengths"] = np.array([4, 2, 3])
    check_forward(raw, batch, feedback)
    check_train_step(raw, batch, feedback)
    check_train_step(raw, batch, feedback, state_at=2)


# ---- elementwise fusion (fusion.py) --------------------------------------------------------


def run_c_body(body: str, env: dict) -> dict:
    """Evaluate the generated CUDA body with NumPy: the statements are `T v = expr;`,
    `y = v;`, with +-*/, unary minus, exp/tanh/log/sqrt, casts `(T)1` and `a ? b : c`."""
    import re

    for line in body.splitlines():
        target, expr = line.rstrip(";").split(" = ", 1)
        expr = re.sub(r"\((?:double|float)\)(\d)", r"\1.0", expr)
        for fn in ("exp", "tanh", "log", "sqrt"):
            expr = re.sub(rf"\b{fn}\(", f"np.{fn}(", expr)
        ternary = re.fullmatch(r"(.+) \? (.+) : (.+)", expr)
        if ternary:
            expr = "np.where({}, {}, {})".format(*ternary.groups())
        env[target.split()[-1]] = eval(expr, {"np": np}, env)
    return env


@pytest.fixture
def cupy_like_plans(monkeypatch):
    """Plans built as on CuPy (no sibling merge), here with NumPy."""
    import functools

    from seqgraph.plan.lower import Plan
    from seqgraph.runtime import runner

    monkeypatch.setattr(runner, "Plan", functools.partial(Plan, merge_siblings=False))


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "gru", "lstm", "custom"])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_groups_generate_the_plan_values(cell, padded, cupy_like_plans):
    """Each fused group's CUDA body, evaluated on the CPU, gives what the NumPy chain wrote;
    for training every member is written back, for forward only what others read."""
    from seqgraph.plan import forward, fusion, listing

    raw = spec(cell)
    model = Model(raw, backend="numpy", dtype="float64")
    batch = batching.dummy(model.spec, 3, 4)
    if padded:
        batch["lengths"] = np.array([4, 2, 3])
    for grads in (True, False):
        plan = model.plan(batch, grads=grads)
        plan.run(batching.feeds(model.spec, plan.graph, batch), model.params)
        value, fused = plan.layout.value, 0
        for run in plan.groups:  # forward again, group by group
            if len(run) > 1:
                fused += 1
                _, _, body, inputs, outputs = fusion.source(plan, run, grads)
                # inputs as the kernel sees them: an in-place chain overwrites some
                env = {f"x{i}": value[k].copy() for i, k in enumerate(inputs)}
            group = listing.Kernels()
            forward.group(plan.schedule, plan.ctx, run, grads, group)
            for kernel in group.kernels:
                kernel()
            if len(run) > 1:
                run_c_body(body, env)
                keys, lay, an = [u[1] for u in run], plan.layout, plan.an
                dead = {
                    an.members[lay.in_place[k[:2]]][k[2]] for k in keys if k[:2] in lay.in_place
                }
                # a step's scratch (one buffer every step reuses) is read by no later kernel:
                # in training too, only a reader outside the group has it written
                scratch = {k for k in keys if isinstance(lay.value_stack[k[:2]], Slot)}
                read_outside = {
                    k for k in keys for user, _ in an.consumers.get(k, ()) if user not in keys
                }
                unwritten = dead | (scratch - read_outside - plan.outputs)
                assert not grads or set(keys) - set(outputs) == unwritten & set(keys)
                for j, k in enumerate(outputs):
                    np.testing.assert_allclose(env[f"y{j}"], value[k], rtol=1e-13, atol=1e-14)
        assert fused, "a cell step has at least one elementwise chain"


def test_lstm_step_fuses_gate_chain(cupy_like_plans, cpu_kernels):
    """Per LSTM step: one product, the adds, then the sigmoid/tanh gates, c and h in one
    group (the gate slices are views, so the group starts after them). Where groups are
    compiled, x W + b runs step by step, in one group with + h U (`schedule.feeds_one_step`);
    else it is one batched add over all steps and each step has its one add."""
    from seqgraph.plan import fusion

    model = Model(spec("lstm"), dtype="float64")
    plan = model.plan(batching.dummy(model.spec, 2, 5), grads=False)
    fused = [run for run in plan.groups if len(run) > 1]
    compiled = cpu_kernels == "compiled" and ckernels.enabled()
    assert [len(run) for run in fused] == ([2, 9] if compiled else [9]) * 5
    per_step = [u for u in plan.units if u[0] == "node" and u[1][2] == 2]
    adds = ["add", "add"] if compiled else ["add"]
    assert [plan.an.node[u[1]]["op"] for u in per_step[: 1 + len(adds)]] == ["matmul", *adds]
    if compiled:  # the bias add joins the step's add: both read and write one (B, 4H) block
        first = fused[0]
        assert [plan.an.node[u[1]]["op"] for u in first] == ["add", "add"]
        assert first[0][1][:2] not in plan.batched and first[0][1][2] == 0
    fused = [run for run in fused if len(run) == 9]
    _, _, body, _, outputs = fusion.source(plan, fused[0], False)
    assert [k[1] for k in outputs] == ["c#15", "h#18"]  # the state; the rest stays in registers
    assert body.count("exp(") == 3 and body.count("tanh(") == 2


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("option", ["fuse", "batch_derivatives", "merge_siblings"])
def test_plan_without_a_pass_matches_the_plan_with_it(cell, option, cpu_kernels):
    """Elementwise fusion, the batched local derivatives (tanh/sigmoid VJP factors for all
    steps before the backward loop, folded into the products they feed) and the sibling
    merge (the GRU's r and z gates as one op over both column blocks) change the kernels,
    never the numbers."""
    model = Model(spec(cell, 2), dtype="float64")
    batch = batching.dummy(model.spec, 2, 4)
    plan = model.plan(batch)
    loss, grads = model.loss_and_grads(batch)
    from seqgraph.plan.lower import Plan

    an = plan.an
    leaf_meta = {k: v for k, v in an.meta.items() if an.kind(k) == "input"}
    plain = Plan(plan.graph, leaf_meta, np, "numpy", "float64", full=True, **{option: False})
    feeds = batching.feeds(model.spec, plan.graph, batch)
    assert plain.run(feeds, model.params) == pytest.approx(loss, rel=1e-14)
    for name, g in plain.gradients().items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-13, atol=1e-15, err_msg=name)
    if option == "fuse":
        assert all(len(run) == 1 for run in plain.groups)
        assert len(plain.groups) > len(plan.groups)  # NumPy runs both as flat calls
    elif option == "merge_siblings":  # per step and layer: the GRU's r+z add and sigmoid
        merged = {"gru": 2, "lstm": 0}[cell] * 4 * 2
        assert len(plain.units) - len(plan.units) == merged
        if merged and cpu_kernels == "numpy":  # compiled, the local factors of all classes
            # run as one loop before backward either way (`Op.local_c_expr`)
            assert _backward_calls(plain) > _backward_calls(plan)
    elif cpu_kernels == "numpy":  # (compiled, a step's elementwise VJPs make no NumPy call)
        # each step's tanh/sigmoid VJP: 3 calls -> 1 (+ 2 per class before the loop);
        # each fold skips one product VJP per step (+ 1 call before the loop). Per layer:
        # GRU r|z (one class, merge_siblings) and n, n folded into (1 - z) * n; LSTM i, f,
        # g, o, tanh(c), all folded (into i * g, f * c_prev and o * tanh(c)).
        steps, layers = 4, 2
        classes, folds = {"gru": (2, 1), "lstm": (5, 5)}[cell]
        saved = (2 * classes + folds) * (steps - 1) * layers
        assert _backward_calls(plain) - _backward_calls(plan) == saved


def _backward_calls(plan) -> int:
    """NumPy calls one backward pass makes (counted by wrapping the plan's array module)."""
    calls = 0

    class Counting:
        def __getattr__(self, name):
            def counted(*args, **kwargs):
                nonlocal calls
                calls += 1
                return getattr(np, name)(*args, **kwargs)

            return counted

    saved = plan.ctx.m
    plan.ctx.m = Counting()
    try:
        plan.emit_backward()
        calls = 0  # not the allocations
        plan.gradients()
    finally:
        plan.ctx.m = saved
        plan.emit_backward()
    return calls


def test_reused_runner_reloads_what_changed():
    """Masks, weights and absent states are kept between calls only while their inputs
    (lengths, loss_from, coins, which states are given) stay the same."""
    raw = spec("lstm", pattern="encoder_decoder")
    plan, interp = pair(raw)
    base = batching.dummy(plan.spec, 3, 4, out_steps=3)
    rng = np.random.default_rng(4)
    variants = [
        {"lengths": np.array([4, 2, 3]), "y_lengths": np.array([3, 1, 2])},
        {"lengths": np.array([1, 4, 2]), "y_lengths": np.array([2, 3, 1]), "loss_from": 1},
        {
            "lengths": np.array([1, 4, 2]),
            "y_lengths": np.array([2, 3, 1]),
            "state": {"l0.h0": rng.normal(size=(3, 5))},
        },
        {"lengths": np.array([4, 2, 3]), "y_lengths": np.array([3, 1, 2])},
    ]
    for extra in variants:
        batch = {**base, **extra}
        for feedback in ("teacher", "scheduled"):
            batch["use_model"] = rng.random((3, 3)) < 0.5
            loss, grads, _ = interp.train_step(batch, feedback)
            got_loss, got, _ = plan.train_step(batch, feedback)
            assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
            for name in grads:
                assert_close(got[name], grads[name], name)


def test_bias_adds_run_in_place():
    """x W_ih + b_ih + h W_hh + b_hh: b_hh joins the projection (`rewrites.reassociate`),
    then the two biases are summed once (`rewrites.join_biases`), so one add over all steps
    puts both on the projection, overwriting its buffer (whose value nothing reads again);
    the gates keep their own buffers. Where fused groups are compiled, that add runs at each
    step, in one loop with the step's + h W_hh (`schedule.feeds_one_step`)."""
    batch = batching.dummy(Model(spec("lstm"), dtype="float64").spec, 2, 5)
    plan = check_same(spec("lstm"), batch).plan(batch)  # the interpreter's numbers
    lay, an = plan.layout, plan.an
    assert (("l0", "t#4+b_hh") in plan.batched) is not ckernels.enabled()
    assert an.inputs(an.members[("l0", "t#4+b_hh")][0]) == (
        ("l0", "t#1", 0),
        ("l0", "b_ih+b_hh", None),
    )
    assert an.node[("l0", "b_ih+b_hh", None)]["inputs"] == (
        ("l0", "b_ih", None),
        ("l0", "b_hh", None),
    )
    for dead in (("l0", "t#4"), ("l0", "t#2")):  # the sums they replaced
        assert dead not in an.members
    for cls in [("l0", "t#4+b_hh"), ("l0", "gates#5")]:
        assert lay.value_stack[cls].arr is lay.value_stack[("l0", "t#1")].arr
    assert lay.value_stack[("l0", "t#12")].arr is not lay.value_stack[("l0", "t#1")].arr
    assert lay.value_stack[("l0", "t#3")].arr is not lay.value_stack[("l0", "t#1")].arr


def test_common_subexpressions_merge_into_one_class():
    """A user cell that writes the same gate twice (and a step that recomputes `h @ U`):
    `rewrites.merge_common` keeps one class of each, drops the copies, and the numbers stay
    the interpreter's."""
    cell = {
        "inputs": ["x"],
        "state": ["h"],
        "output": "h",
        "params": {
            "W": {"shape": ["input", "hidden"], "init": {"dist": "uniform", "scale": 0.4}},
            "U": {"shape": ["hidden", "hidden"], "init": {"dist": "uniform", "scale": 0.4}},
        },
        "equations": [
            "a = tanh(x @ W + h @ U)",
            "b = tanh(x @ W + h @ U)",
            "h = a * b + sigmoid(h @ U)",
        ],
    }
    raw = spec("twice")
    raw["model"]["layers"][0]["cell"] = "twice"
    raw["cells"] = {"twice": cell}
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5)
    batch["lengths"] = np.array([5, 2, 4])
    plan = check_same(raw, batch).plan(batch)

    def classes(op, nodes):  # the per-step classes of layer l0 that apply `op`
        return {
            k[:2] for k in nodes if k[0] == "l0" and k[2] == 0 and plan.an.node[k].get("op") == op
        }

    unrolled = list(plan.an.graph.nx.nodes)
    live = [k for k in unrolled if k in plan.an.live]
    assert len(classes("tanh", unrolled)) == 2 and len(classes("tanh", live)) == 1  # a, b: one
    assert len(classes("matmul", unrolled)) == 5  # x@W, h@U, x@W, h@U, h@U (in the sigmoid)
    assert len(classes("matmul", live)) == 2  # ... computed once each


def test_gate_fusion_joins_one_weight_per_gate(monkeypatch):
    """CUSTOM_LSTM has one W and one U per gate: `rewrites.fuse_gates` turns the four x @ W_j
    into one product with [W_i W_f W_g W_o], the four h @ U_j likewise, and since every gate
    adds its two products, one sum of the fused products whose slices are the gates. The
    numbers stay the interpreter's (also padded, bidirectional, two layers) and each step
    runs fewer kernels than without the pass."""
    raw = spec("custom", layers=2, bidirectional=True)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 5)
    batch["lengths"] = np.array([5, 2, 4])
    plan = check_same(raw, batch).plan(batch)
    names = [c[1] for c in plan.an.members if c[0] == "l0.fwd"]
    assert sum(n.startswith("cat(") for n in names) == 2  # [W_*] and [U_*], built once a call
    products = [n for n in names if n.endswith("|fused") and "+" not in n]
    assert len(products) == 2
    # the gates' sums: one add per step (merge_siblings reads a column block of it: "[a:b]")
    sums = [n for n in names if "|fused+" in n and "[" not in n]
    assert len(sums) == 1 and sorted(sums[0].split("+")) == sorted(products)
    monkeypatch.setattr(rewrites, "fuse_gates", lambda an: False)
    unfused = Model(raw, dtype="float64").plan(batch)
    assert not any("|fused" in c[1] for c in unfused.an.members)
    assert len(plan.forward_kernels) < len(unfused.forward_kernels)
    assert len(plan.backward_kernels) < len(unfused.backward_kernels)


def test_dead_values_and_gradients_reuse_one_step_buffer():
    """`liveness`: in an LSTM step, h @ W_hh is read once by the add after it (whose VJP
    reads nothing), so all steps share one buffer for it; the gate activations' gradients
    live within their step, so they share one buffer too. What is read after its step (the
    gates, c and h, and the stacked gradient W_hh's sum reads) keeps a buffer per step."""
    model = Model(spec("lstm", layers=2), dtype="float64")
    batch = batching.dummy(model.spec, 3, 6)
    batch["lengths"] = np.array([6, 2, 5])
    plan = check_same(spec("lstm", layers=2), batch).plan(batch)
    lay, an = plan.layout, plan.an
    recurrent_product = [c for c in plan.compacted if an.same_op(c)[0] == "matmul"]
    assert {c[0] for c in recurrent_product} == {"l0", "l1"}
    for c in plan.compacted:
        assert lay.value_stack[c].arr.shape[0] == 1
    for c in plan.grad_compacted:
        assert lay.grad_stack[c].arr.shape[0] == 1
    assert {an.same_op(c)[0] for c in plan.grad_compacted} >= {"sigmoid", "tanh"}
    for kept in (("l0", "h"), ("l0", "c")):
        assert kept not in plan.compacted and lay.value_stack[kept].arr.shape[0] >= 6


def test_merged_gru_gates_share_one_step_gradient_buffer():
    """`merge_siblings` joins the GRU's r and z (one add, one sigmoid over both column
    blocks); r and z are column views of the joined sigmoid, and its gradient still lives
    within its step: one buffer, its views re-pointed into it."""
    raw = spec("gru", layers=2)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 6)
    batch["lengths"] = np.array([6, 2, 5])
    plan = check_same(raw, batch).plan(batch)
    lay, an = plan.layout, plan.an
    joined = [c for c in an.members if c[0] == "l0" and an.same_op(c) == ("sigmoid", {})]
    assert [c[1] for c in joined] == ["r#12|z#14"]
    assert joined[0] in plan.grad_compacted
    arr = lay.grad_stack[joined[0]].arr
    for view in ("r#12", "z#14"):
        stack = lay.grad_stack[("l0", view)]
        assert stack.arr.shape == (1, 3, 5) and np.shares_memory(stack.arr, arr)


def test_add_adopts_the_gradient_region_of_a_view_it_alone_reads():
    """n = tanh(x_n + r * h_n): x_n is a column block of the time-batched projection, read
    by that add alone, so the add's gradient (and r * h_n's, equal to it) is that block of
    the projection's gradient: backward writes it in place and copies nothing."""
    raw = spec("gru", layers=2)
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 6)
    plan = check_same(raw, batch).plan(batch)
    lay, an = plan.layout, plan.an
    projection = lay.grad_stack[("l0", "split#2")].arr
    for cls in (("l0", "t#16"), ("l0", "t#15")):
        assert np.shares_memory(lay.grad_stack[cls].arr, projection)
    for t, k in an.members[("l0", "t#16")].items():
        assert lay.cell[k] == an.members[("l0", "x_n#5")][t]


ADOPTING_CELL = {  # p and q merge into one mul (column views); p + h adopts p's region
    "inputs": ["x"],
    "state": ["h"],
    "output": "h",
    "params": {
        "U": {"shape": ["hidden", "2*hidden"], "init": {"dist": "uniform", "scale": 0.5}},
        "W": {"shape": ["input", "2*hidden"], "init": {"dist": "uniform", "scale": 0.5}},
    },
    "equations": [
        "a, b = split(h @ U, 2)",
        "c, d = split(x @ W, 2)",
        "p = a * c",
        "q = b * d",
        "n = tanh(p + h)",
        "h = n * sigmoid(q)",
    ],
}


def test_views_of_a_compacted_class_keep_an_adopted_gradient():
    """A merged sibling class whose column view another add adopted keeps a buffer per step
    (compacting it would leave the add writing into the discarded one); the numbers stay
    the interpreter's."""
    raw = {**spec("rnn", layers=2), "cells": {"adopting": ADOPTING_CELL}}
    raw["model"]["layers"] = [{"cell": "adopting", "hidden": 5}] * 2
    batch = batching.dummy(Model(raw, dtype="float64").spec, 3, 6)
    plan = check_same(raw, batch).plan(batch)
    lay = plan.layout
    merged = [c for c in lay.classes if c[0] == "l0" and c[1] == "p#7|q#8"]
    assert merged and merged[0] not in plan.grad_compacted
    adopter = [c for c in lay.classes if c[0] == "l0" and lay.grad_source(c)]
    assert any(lay.grad_source(c)[0] == "adopt" for c in adopter)
