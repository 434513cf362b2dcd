"""A compiled plan prints like a jaxpr (`seqgraph/plan/listing.py`): its buffers, then its
kernels in run order, forward then backward, each with the buffers it reads and writes,
their shapes and dtypes, and whether it runs at one step or once over all steps."""

from __future__ import annotations

import re

from seqgraph import Model
from seqgraph.runtime import batch as batching

STEPS, BATCH, INPUT, HIDDEN, VOCAB = 4, 3, 2, 5, 7


def rnn_plan(grads: bool = True, dtype: str = "float64"):
    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [{"cell": "rnn", "hidden": HIDDEN}],
        },
        "dtype": dtype,
    }
    model = Model(raw, dtype=dtype)
    return model.plan(batching.dummy(model.spec, BATCH, STEPS), grads=grads)


def section(text: str, name: str) -> list[str]:
    """The lines of one section (`forward:`, `backward:`, `buffers:`) of a listing."""
    lines, inside = [], False
    for line in text.splitlines():
        if not line.startswith(" "):
            inside = line == f"{name}:"
        elif inside:
            lines.append(line.strip())
    return lines


def test_listing_names_the_recurrent_product_per_step_and_the_projection_batched():
    plan = rnn_plan()
    forward = section(str(plan), "forward")
    assert len(forward) == len(plan.forward_kernels)
    h, w = f"f64[{BATCH},{HIDDEN}]", f"f64[{HIDDEN},{HIDDEN}]"
    for t in range(STEPS):  # h @ W_hh: one matmul per step, reading the state before it
        state = "l0.h0" if t == 0 else f"l0.h[{t - 1}]"
        line = f"t={t} .* = matmul {re.escape(state)}:{re.escape(h)} l0.W_hh:{re.escape(w)}$"
        assert sum(bool(re.match(line, entry)) for entry in forward) == 1, line
    # x @ W_ih: one kernel over every step, on the stacked inputs
    projection = [e for e in forward if e.startswith("t=0..3 batched") and "l0.W_ih" in e]
    assert projection == [
        f"t=0..3 batched     l0.t#1[0:4]:f64[{STEPS},{BATCH},{HIDDEN}] = matmul "
        f"x.x[0:4]:f64[{STEPS},{BATCH},{INPUT}] l0.W_ih:f64[{INPUT},{HIDDEN}]"
    ]


def test_listing_follows_the_kernels_forward_then_backward():
    plan = rnn_plan()
    text = str(plan)
    backward = section(text, "backward")
    assert len(backward) == len(plan.backward_kernels)
    assert text.index("\nforward:") < text.index("\nbackward:")
    assert backward[0] == "once               dloss.total:f64[] = fill 1"
    # dL/dW_hh: one product over the stacked steps after the loop, not one per step
    summed = [e for e in backward if e.split(" = ")[0].endswith(f"dl0.W_hh:f64[{HIDDEN},{HIDDEN}]")]
    assert len(summed) == 1 and summed[0].startswith("t=0..3 batched") and " matmul " in summed[0]
    # dL/dh through the recurrent product: per step, from the last step back (compiled, into
    # scratch `dl0.h.part`, whose add joins the next step's compiled chain)
    through = [
        e for e in backward if re.match(r"t=\d .*dl0\.h(\.part)?\[\d\]:.* = vjp\[0\] matmul", e)
    ]
    assert [int(e[2]) for e in through] == list(range(STEPS - 1, 0, -1))


def test_listing_lists_buffers_with_shapes_dtypes_and_sharing():
    plan = rnn_plan(dtype="float32")
    buffers = section(str(plan), "buffers")
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in buffers}
    assert rows["x.x[0:4]"] == [f"f32[{STEPS},{BATCH},{INPUT}]", "stacked"]
    assert rows["y.y[0:4]"][0] == f"i64[{STEPS},{BATCH}]"
    assert rows["l0.h[0:4]"] == [f"f32[{STEPS + 1},{BATCH},{HIDDEN}]", "alias of l0.h#6"]
    assert rows["l0.t#3[0:4]"] == [f"f32[1,{BATCH},{HIDDEN}]", "one step, reused"]
    assert rows["dl0.W_hh"] == [f"f32[{HIDDEN},{HIDDEN}]", "gradient"]


def test_forward_only_plan_prints_no_backward_and_repr_is_one_line():
    plan = rnn_plan(grads=False)
    text = str(plan)
    assert "backward:" not in text and "forward:" in text
    summary = repr(plan)
    assert "\n" not in summary
    assert summary == (
        f"<Plan numpy float64: {STEPS} steps, {len(plan.forward_kernels)} forward + 0 "
        f"backward kernels, {len(plan.layout.classes)} classes, 0 gradient buffers>"
    )
    assert text.splitlines()[0] == summary


def test_a_fused_group_lists_as_one_kernel_reading_only_from_outside():
    """On CuPy a fusion group is one kernel; its entry names every member's op and output,
    and reads only what comes from outside the group (checked here on a NumPy plan)."""
    from seqgraph.plan import forward

    raw = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": INPUT},
            "target": {"type": "ids", "vocab": VOCAB},
            "layers": [{"cell": "lstm", "hidden": HIDDEN}],
        },
        "dtype": "float64",
    }
    model = Model(raw, dtype="float64")
    plan = model.plan(batching.dummy(model.spec, BATCH, STEPS))
    run = next(run for run in plan.groups if len(run) > 2)
    op, writes, reads, when = forward.describe(plan.schedule, ("fused", run))
    ops = [plan.an.node[unit[1]]["op"] for unit in run]
    assert op == f"fused({','.join(ops)})" and when == run[0][1][2]
    assert [name for name, _ in writes] == [unit[1] for unit in run]
    assert not {name for name, _ in reads} & {unit[1] for unit in run}
    assert all(array.shape == (BATCH, HIDDEN) for _, array in writes)
