"""The forward half of a plan: one kernel list over the scheduled units, fused group by group.

`emit` takes the `Schedule` (units, batched classes, the layout's buffers), the backend
context and the fusion groups, and hands on a `Kernels`: the closures in run order, each
recorded with its unit, from which `describe` makes its listing entry (`listing.py`).
"""

from __future__ import annotations

from functools import partial

from seqgraph.plan import fusion, kernels, listing, stamps
from seqgraph.plan.listing import Kernels
from seqgraph.plan.schedule import Schedule


def emit(sched: Schedule, ctx: kernels.Context, groups: list, keep_all: bool) -> Kernels:
    """Every group's kernels in order; `keep_all`: backward will read every value."""
    out = Kernels(partial(describe, sched))
    fused = [run for run in groups if len(run) > 1]
    compiled = stamps.compile_groups(sched, fused, keep_all) if ctx.name == "numpy" else []
    compiled_of = {id(run): kernel for run, kernel in zip(fused, compiled, strict=True)}
    for run in groups:
        group(sched, ctx, run, keep_all, out, compiled_of.get(id(run)))
    return out


def group(sched: Schedule, ctx, run: list, keep_all: bool, out: Kernels, compiled=None) -> None:
    """A fused group's kernels (`fusion.py`): one on CuPy, one compiled C loop on NumPy
    (`compiled`, from `stamps.compile_groups`), else its ufunc calls. Each is recorded
    with its unit (or ("fused", run)) for `describe`."""
    if len(run) > 1 and ctx.name == "cupy":
        out.add(fusion.cupy_kernel(sched, run, keep_all), ("fused", run))
        return
    if compiled is not None:
        out.add(compiled, ("fused", run))
        return
    for unit in run:  # NumPy: the ufunc chain
        out.add(unit_kernel(sched, ctx, unit), unit)


def describe(sched: Schedule, record: tuple) -> tuple:
    """The listing entry (`listing.py`) of the kernel of a unit or of a fused group."""
    if record[0] != "fused":
        return _entry(sched, record)
    return listing.joined([_entry(sched, unit) for unit in record[1]])


def unit_kernel(sched: Schedule, ctx, unit):
    """The one kernel of a unit: a class over all its steps, or a single node."""
    an, lay = sched.an, sched.layout
    if unit[0] == "class":
        cls = unit[1]
        kind, attrs, ins = sched.batched[cls]
        out = lay.value_stack[cls].span(*lay.range[cls])
        op = an.same_op(cls)[0]
        if kind == "reduce_rest":
            return kernels.reduce_rest(ctx, op, out, ins[0])
        return kernels.forward(ctx, op, out, ins, attrs)
    k = unit[1]
    node = an.node[k]
    total = an.addn_of_class(k)
    if total is not None:
        stacked = lay.value_stack[total].span(*lay.range[total])
        out, m = lay.value[k], ctx.m
        return lambda: m.sum(stacked, axis=0, out=out)
    ins = [lay.value[i] for i in node["inputs"]]
    return kernels.forward(ctx, node["op"], lay.value[k], ins, node["attrs"])


def _entry(sched: Schedule, unit) -> tuple:
    """The listing entry of a unit's kernel (see `listing.Kernels`)."""
    an, lay = sched.an, sched.layout
    if unit[0] == "class":
        cls = unit[1]
        lo, hi = lay.range[cls]
        ins = sched.batched[cls][2]
        k0 = an.members[cls][lo]
        reads = tuple(
            (listing.input_name(an, cls, i), view) for i, view in enumerate(ins) if view is not None
        )
        writes = (((cls[0], cls[1], (lo, hi)), lay.value_stack[cls].span(lo, hi)),)
        return an.node[k0]["op"], writes, reads, (lo, hi)
    k = unit[1]
    node = an.node[k]
    total = an.addn_of_class(k)
    if total is not None:
        lo, hi = lay.range[total]
        reads = (((total[0], total[1], (lo, hi)), lay.value_stack[total].span(lo, hi)),)
    else:
        reads = tuple((i, lay.value[i]) for i in node["inputs"])
    return node["op"], ((k, lay.value[k]),), reads, k[2]
