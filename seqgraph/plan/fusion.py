"""Elementwise fusion: a run of per-step elementwise nodes becomes one kernel.

After scheduling, one step of a gated cell is a matmul followed by a chain of elementwise ops
(bias add, gate nonlinearities, state update). A *group* is a maximal run of consecutive
per-node units whose ops have a C expression (`Op.c_expr`: elementwise ops) and whose outputs
share one shape and dtype; running
it where the run stood keeps every dependency. On CuPy a group is one `cupy.ElementwiseKernel`
(one launch instead of ~11 per LSTM step); the generated code keeps every intermediate in a
register and writes only the values someone reads later (all of them when backward will run).
On NumPy the same body runs as one compiled C loop (`ckernels.py`) where a C compiler is
found; without one the group stays the chain of `out=` ufunc calls into the layout's buffers.
"""

from __future__ import annotations

import numpy as np

from seqgraph.engine import ops
from seqgraph.plan.analysis import class_of
from seqgraph.plan.layout import Slot

C_TYPES = {"float32": "float", "float64": "double"}  # of the values computed in the body
# the same by dtype, and dtype names: `dtype.name` costs microseconds, a group asks ~20 times
_C_TYPE_OF = {np.dtype(name): c for name, c in C_TYPES.items()}
_NAMES: dict = {}


def _name(dtype) -> str:
    """np.dtype(dtype).name, remembered."""
    if dtype not in _NAMES:
        _NAMES[dtype] = np.dtype(dtype).name
    return _NAMES[dtype]


def _signature(plan, unit):
    """(shape, dtype) of a fusable unit's output, or None."""
    if unit[0] != "node":
        return None
    node = plan.an.node[unit[1]]
    fusable = ops.OPS[node["op"]].c_expr is not None  # elementwise, with a C expression
    if not fusable or node["attrs"] or plan.an.addn_of_class(unit[1]) is not None:
        return None
    shape, dtype = plan.an.meta[unit[1]]
    return (shape, dtype) if dtype.kind == "f" else None


_PER_NODE = object()  # a class whose steps' signatures `_signature` finds node by node


def _class_signature(an, cls: tuple):
    """`_signature` of every step of a class at once where the class facts say it: one op
    and attrs (`same_op`, not a sum: a sum's signature depends on what it sums) and one
    shape and dtype (`stackable`); else _PER_NODE."""
    same = an.same_op(cls)
    if same is None or not an.stackable(cls) or ops.OPS[same[0]].variadic_sum:
        return _PER_NODE
    if ops.OPS[same[0]].c_expr is None or same[1]:
        return None
    shape, dtype = an.meta[next(iter(an.members[cls].values()))]
    return (shape, dtype) if dtype.kind == "f" else None


def groups(plan) -> list[list]:
    """plan.units cut into runs: consecutive fusable units of one signature form a group."""
    out, run, current, members = [], [], None, set()
    by_class: dict = {}  # class -> its steps' signature (`_class_signature`)
    for unit in plan.units:
        signature = _PER_NODE
        if unit[0] == "node" and unit[1][2] is not None:  # a step of a class
            cls = unit[1][:2]
            signature = by_class.get(cls)
            if signature is None and cls not in by_class:
                signature = by_class[cls] = _class_signature(plan.an, cls)
        if signature is _PER_NODE:
            signature = _signature(plan, unit)
        if signature is not None and run and signature == current and _joins(plan, members, unit):
            run.append(unit)
            members.add(unit[1])
            continue
        if run:
            out.append(run)
        run, current, members = [unit], signature, {unit[1]}
    if run:
        out.append(run)
    return out


def _joins(plan, members: set, unit) -> bool:
    """False if `unit` reads a group member (`members`: the group's unit keys) through an
    alias or view (the kernel would read the buffer before it writes it), so the group
    must end before it."""
    for source in plan.an.inputs(unit[1]):
        key, hops = source, 0
        while key in plan.layout.alias_of:
            key, hops = plan.layout.alias_of[key], hops + 1
        if hops and key in members:
            return False
    return True


def source(plan, run, keep_all: bool) -> tuple:
    """The kernel pieces of one group: (in_params, out_params, body, inputs, outputs); the
    parameters are CuPy's, the body is C for CUDA and `ckernels` alike.

    `inputs` and `outputs` are the node keys bound to x0.. and y0..; a member is an output if
    a later kernel reads it (or always, with `keep_all`, when backward needs every value),
    unless a later member of the group overwrites its buffer."""
    an = plan.an
    members = [u[1] for u in run]
    local = {k: f"v{i}" for i, k in enumerate(members)}
    inputs: dict = {}
    lines = []
    for k in members:
        args = []
        for i in an.inputs(k):
            if i not in local and i not in inputs:
                inputs[i] = f"x{len(inputs)}"
            args.append(local.get(i) or inputs[i])
        ctype = _C_TYPE_OF[an.meta[k][1]]
        expr = ops.OPS[an.node[k]["op"]].c_expr.format(*args, t=ctype)
        lines.append(f"{ctype} {local[k]} = {expr};")
    outputs = written(plan, members, keep_all)
    lines += [f"y{j} = {local[k]};" for j, k in enumerate(outputs)]
    # parameter lists take NumPy dtype names ("float" would mean float64 there); the body C's
    in_params = ", ".join(f"{_name(an.meta[k][1])} {name}" for k, name in inputs.items())
    out_params = ", ".join(f"{_name(an.meta[k][1])} y{j}" for j, k in enumerate(outputs))
    return in_params, out_params, "\n".join(lines), list(inputs), outputs


def written(plan, members: list, keep_all: bool) -> list:
    """The members a group writes back (see `source`). With `keep_all` too, not a member
    whose class has one step's buffer that every step reuses (`layout.Slot`): liveness
    found nothing reads it after its own step, backward included (an LSTM's f * c_prev and
    i * g), so only a reader outside the group at that step needs it written."""
    an, inside, lay = plan.an, set(members), plan.layout
    in_place, stacks = lay.in_place, lay.value_stack
    # a member whose buffer a later member overwrites (layout's in-place chain) is dead
    overwritten = {
        an.members[in_place[class_of(k)]][k[2]] for k in members if class_of(k) in in_place
    }
    return [
        k
        for k in members
        if k not in overwritten
        and (
            (keep_all and not isinstance(stacks.get(class_of(k)), Slot))
            or k in plan.outputs
            or any(user not in inside for user, _ in an.consumers.get(k, ()))
        )
    ]


_COMPILED: dict = {}


def cupy_kernel(plan, run, keep_all: bool):
    """One launch computing the whole group (CuPy only)."""
    import cupy

    in_params, out_params, body, inputs, outputs = source(plan, run, keep_all)
    signature = (in_params, out_params, body)
    if signature not in _COMPILED:
        name = f"seqgraph_fused_{len(_COMPILED)}"
        _COMPILED[signature] = cupy.ElementwiseKernel(in_params, out_params, body, name)
    kernel, value = _COMPILED[signature], plan.layout.value
    args = [value[k] for k in inputs] + [value[k] for k in outputs]
    return lambda: kernel(*args)
