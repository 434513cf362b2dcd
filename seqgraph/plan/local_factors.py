"""Local derivatives known before backward starts, computed for all steps at once.

The VJP of y = tanh(x) or sigmoid(x) is g * f(y), with f(y) = 1 - y^2 or y (1 - y): three
calls per step (square, subtract, multiply). But f(y) depends only on forward values, which
are all known when backward starts, so one kernel over all steps computes it (`factors`) and
each step is left with the single multiply by g. A static graph knows this; a tape that
records one step at a time cannot.

Chains fold further (`fold`): where such a y's only reader is a product z = y * w of the
same shape, dL/dx = dL/dz * (w f(y)), and w f(y) is known before backward too. So
the factor buffer is multiplied by w once, over all steps, and each step skips dL/dx. In an
LSTM step this folds h = o * tanh(c), i * g and f * c_prev: 14 calls per step become 9.

Memory (`place`): a factor is as large as its value, but once the factors are made, most of
those values are read by nothing else: an LSTM's i, g, o and tanh(c) only fed the products
that folds replaced. So the factors are made one class after another, each in a buffer no
later kernel reads: its own value's where `local_out` may write over its input
(`Op.local_in_place`: tanh), else a value buffer freed by an earlier factor or a column
block that backward never reads (`liveness.dead_regions`: the GRU's r and z block of
h W_hh + b_hh), else a new one. An LSTM's five factors take one new buffer instead of five.

Rather than a new buffer, a factor goes where its input's gradient will be
(`gradient_regions`): dL/dx at step t is g * f(y) at step t, written by that one multiply and
by nothing before it, so the factor can wait in dL/dx's own place and the multiply write over
it, element by element (what hand-written NumPy does: `dG[t] *= 1 - h[t]**2`). The RNN's tanh
factor, the GRU's n and one LSTM gate's take no buffer at all. Only where no value buffer is
free: a gate's gradient is a column block of the gates' (strided), and NumPy fills a strided
block of an LSTM's 100 steps 2.5 times slower than a contiguous one (all four gates there:
+4.5 % CPU time for a medium step). The backward emitter checks that each such multiply is
the first and only write of its step (`check_in_gradients`) and, where one is not, emits
backward again without the rule. A factor smaller than GRADIENT_REGION_MIN_BYTES keeps its
own buffer: there the memory is nothing and the step is faster apart (tiny RNN, one step of
0.14 ms: 4 % slower with the factor in its gradient).

Where the plan's C kernels compile (`ckernels.py`), the plan makes no factors at all by
default (`Plan`, `batch_derivatives`): each step's compiled chain computes g * f(y) inline,
from y, in the loop it runs anyway (README, Speed, has the timing), and the values then
need no buffer that outlives them: an LSTM's activations and gate gradients take its
pre-activations' place (`Layout.activations`), an RNN's dL/dh takes dL/da's
(`Layout.under`). Asked for (`batch_derivatives=True`), the factors and folds of one shape
run there as one loop, each factor spelt by its op's `local_c_expr`
(`backward._local_factors`): one pass over the values instead of two or three NumPy passes
per factor and one per fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from seqgraph.engine import ops
from seqgraph.engine.ops.buffers import owner
from seqgraph.plan import liveness
from seqgraph.plan.analysis import class_of
from seqgraph.plan.layout import Ring, Slot, Stack
from seqgraph.plan.schedule import Schedule

# Below this a factor's stack (all its steps) is not worth a slower step (see the docstring);
# medium and larger models' factors are several MiB. The tests set it to 0, so tiny models
# take the rule as large ones do.
GRADIENT_REGION_MIN_BYTES = 1 << 20


@dataclass
class Factor:
    """The local factor of one class: its buffer, the kernel that fills it and, when it is
    folded into a product, that product's class, the position the class takes in it and the
    kernel multiplying the factor by the other operand (`other`: that operand's stack)."""

    cls: tuple
    stack: Stack
    kernel: object
    reader: tuple | None = None
    position: int = 0
    fold: object = None
    other: object = None
    in_gradient: bool = False  # the factor waits in its input's gradient (`gradient_regions`)


def factors(plan: Schedule, m, in_gradients: bool = True) -> list[Factor]:
    """The factor of every per-step class with a `local_out` whose input is differentiated,
    in the order their kernels must run (`plan`: the scheduled plan, `m`: its array module):
    each in a buffer chosen by `place` (`in_gradients`: its input's gradient may be one)."""
    an, lay = plan.an, plan.layout
    found = []
    for c in lay.classes:
        same = an.same_op(c)
        if c in plan.batched or same is None or same[1] or ops.OPS[same[0]].local_out is None:
            continue
        if not any(an.inputs(k)[0] in an.needs_grad for k in an.members[c].values()):
            continue
        if lay.value_stack[c].span(*lay.range[c]) is not None:
            found.append(c)
    folds = fold(plan, found)
    regions = gradient_regions(plan, found) if in_gradients else {}
    regions = {c: r for c, r in regions.items() if r.nbytes >= GRADIENT_REGION_MIN_BYTES}
    return place(plan, m, found, folds, regions)


def fold(plan: Schedule, found: list) -> dict:
    """Fold each factor class whose members are read only by a same-shape product, at the
    same step, into that product (see the module docstring): cls -> (product class, the
    position the class takes in it). The product's gradient must have a buffer per step
    (nothing overwrites a step's gradient once its VJP has read it)."""
    an, lay, out = plan.an, plan.layout, {}
    for c in found:
        product = _only_reader(an, lay, c)
        if product is None:
            continue
        reader, position = product
        grads = lay.grad_stack.get(reader)
        if grads is None or isinstance(grads, Slot) or lay.range[reader] != lay.range[c]:
            continue
        # a Ring keeps each step until backward is past it (`liveness.rolling_grads`)
        per_step = isinstance(grads, Ring) or grads.span(*lay.range[c]) is not None
        if lay.stacked(reader, 1 - position) is None or not per_step:
            continue
        out[c] = (reader, position)
    return out


def place(plan: Schedule, m, found: list, folds: dict, regions: dict | None = None) -> list:
    """Give each factor a buffer and order the kernels (see the module docstring): classes
    whose values die with their factors first, the products' operands side by side, a factor
    that cannot write over its input before its partner that can. `regions`: class -> the
    gradient region it may take (`gradient_regions`) rather than a new buffer."""
    regions = regions or {}
    an, lay = plan.an, plan.layout
    skips: dict = {}
    for reader, position in folds.values():
        skips.setdefault(reader, set()).add(position)
    dead = _dead_after_factors(plan, set(found), skips)
    in_place = {c: ops.OPS[an.same_op(c)[0]].local_in_place for c in found}
    order = sorted(
        found,
        key=lambda c: (
            not dead.get(id(owner(_value(lay, c)))),
            folds[c][0] if c in folds else c,
            in_place[c],
        ),
    )
    reads: dict = {}  # buffer -> reads by factor kernels still to run
    for c in order:
        for array in _factor_reads(lay, c, folds):
            reads[id(owner(array))] = reads.get(id(owner(array)), 0) + 1
    free = [region for _, _, region in liveness.dead_regions(an, lay)]
    out = []
    for c in order:
        value, own = _value(lay, c), id(owner(_value(lay, c)))
        reads[own] -= 1
        if in_place[c] and dead.get(own) and not reads[own]:
            buffer = value  # nothing reads the value after its factor: write over it
            dead[own] = False
        else:
            buffer = _take(free, value.shape, value.dtype)
            if buffer is None:  # its input's gradient, else a new one
                buffer = regions.get(c)
            if buffer is None:
                buffer = m.empty(value.shape, dtype=value.dtype)
        factor = _make(plan, m, c, buffer, value, folds)
        factor.in_gradient = buffer is regions.get(c)
        for array in _factor_reads(lay, c, folds)[1:]:  # the fold's other operand
            reads[id(owner(array))] -= 1
        for array in _factor_reads(lay, c, folds):
            root = owner(array)
            if dead.get(id(root)) and not reads[id(root)]:
                dead[id(root)] = False
                free.append(root)
        out.append(factor)
    return out


def gradient_regions(plan: Schedule, found: list) -> dict:
    """class -> the gradient of its input over its steps, for the factor classes whose
    factor can wait there (see the module docstring): at every step the input x is read by
    this class's node alone and no caller reads it, its gradient is its own (no add passes
    it on, no view of x has a region in it) or a view's that x alone reads, and a per-step
    stack of the factor's shape; a view region (an LSTM gate's block of the gate
    gradients) only of a gradient that nothing but non-overlapping views write
    (`Layout.covered`). Whether the multiply of each
    step is then the first write there, the emitter checks (`check_in_gradients`)."""
    an, lay, out = plan.an, plan.layout, {}
    for c in found:
        region = lay.stacked(c, 0, grad=True)
        value = _value(lay, c)
        if region is None or region.shape != value.shape or region.dtype != value.dtype:
            continue
        if all(_gradient_alone(an, lay, k, an.inputs(k)[0]) for k in an.members[c].values()):
            out[c] = region
    return out


def _gradient_alone(an, lay, k, x) -> bool:
    """Whether node k's VJP is the only kernel that can write dL/dx (see `gradient_regions`):
    dL/dx is x's own, or the region of a view that x, an add, alone reads and keeps its
    gradient in (`Layout._adopted_input`: the GRU's x_n + r * h_n)."""
    if an.consumers.get(x) != [(k, 0)] or x in an.outputs:
        return False
    cell = lay.cell.get(x)
    if cell != x and (
        cell is None
        or cell not in an.inputs(x)
        or cell in an.outputs
        or [user for user, _ in an.consumers.get(cell, [])] != [x]
    ):
        return False
    if lay.children.get(cell):
        return False
    parent = lay.parent.get(cell)
    if parent is None:
        return True
    return (
        parent in lay.covered
        and cell not in lay.overlapping
        and lay.parent.get(parent) is None
        and parent not in an.outputs
        and all(lay.parent.get(user) == parent for user, _ in an.consumers.get(parent, []))
    )


def check_in_gradients(lay, factors: dict, writes: dict, zero: set) -> bool:
    """Whether every factor placed in its input's gradient (`Factor.in_gradient`) is read
    by a multiply that writes that gradient first, at each of its steps (`writes`: (class,
    t) -> whether that step's multiply adds), in a buffer that is not zero-filled."""
    an = lay.an
    for c, f in factors.items():
        if not f.in_gradient:
            continue
        for t, k in an.members[c].items():
            if writes.get((c, t), True) or lay.base[an.inputs(k)[0]] in zero:
                return False
    return True


def _make(plan, m, c, buffer, value, folds) -> Factor:
    lay = plan.layout
    lo = lay.range[c][0]
    local_out = ops.OPS[plan.an.same_op(c)[0]].local_out
    factor = Factor(c, Stack(buffer, -lo), partial(local_out, m, buffer, value))
    if c in folds:
        factor.reader, factor.position = folds[c]
        factor.other = lay.stacked(factor.reader, 1 - factor.position)
        factor.fold = partial(m.multiply, buffer, factor.other, out=buffer)
    return factor


def _value(lay, c):
    return lay.value_stack[c].span(*lay.range[c])


def _factor_reads(lay, c, folds) -> list:
    """The arrays the kernels of c's factor read: its value, then a fold's other operand."""
    reads = [_value(lay, c)]
    if c in folds:
        reader, position = folds[c]
        reads.append(lay.stacked(reader, 1 - position))
    return reads


def _take(free: list, shape, dtype):
    for i, array in enumerate(free):
        if tuple(array.shape) == tuple(shape) and array.dtype == dtype:
            return free.pop(i)
    return None


def _dead_after_factors(plan: Schedule, found: set, skips: dict) -> dict:
    """id(buffer) -> True for the value buffers of factor classes that nothing reads once
    the factors are made: every node in the buffer computed by forward, no output, its own
    VJP the factor (or reading nothing), and each reader's VJP reading it only for an input
    that a fold made needless. Not a buffer that holds a gradient (`Layout.hosted`)."""
    an, lay = plan.an, plan.layout
    hosting = {id(owner(lay.grad_buffers[i])) for i in lay.hosted}
    nodes_of = lay.nodes_by_buffer()
    out = {}
    for c in found:
        root = id(owner(_value(lay, c)))
        nodes = nodes_of.get(root, [])
        out[root] = root not in hosting and all(_unread_later(an, k, found, skips) for k in nodes)
    return out


def _unread_later(an, k, found: set, skips: dict) -> bool:
    node = an.node[k]
    if node["kind"] != "op" or k in an.outputs or class_of(k) not in found:
        return False
    for user, i in an.consumers.get(k, []):
        entry = ops.OPS[an.node[user]["op"]]
        if an.node[user]["attrs"] or not entry.other_operand:
            if i not in entry.unread_inputs or an.node[user]["attrs"]:
                return False
            continue
        other = an.inputs(user)[1 - i]  # x * w reads x only for dL/dw
        if other in an.needs_grad and (1 - i) not in skips.get(class_of(user), ()):
            return False
    return True


def _only_reader(an, lay, c):
    """(class, position) if every member of `c` is read by exactly one plain `mul` of its
    own shape at its own step, all of one class, and its gradient is its own."""
    found = set()
    for t, k in an.members[c].items():
        uses = an.consumers.get(k, [])
        if len(uses) != 1 or k in an.outputs or lay.cell.get(k) != k or k in lay.children:
            return None
        user, position = uses[0]
        node = an.node[user]
        if node["op"] != "mul" or node["attrs"] or user[2] != t or an.meta[user] != an.meta[k]:
            return None
        if node["inputs"][0] == node["inputs"][1]:  # x * x: both positions read x
            return None
        other = node["inputs"][1 - position]
        if other[2] is not None and an.meta[other] != an.meta[k]:  # would not line up by step
            return None
        found.add((class_of(user), position))
    return found.pop() if len(found) == 1 else None
