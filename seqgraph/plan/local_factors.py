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
"""

from __future__ import annotations

from functools import partial

from seqgraph.engine import ops
from seqgraph.plan.analysis import class_of
from seqgraph.plan.layout import Slot, Stack
from seqgraph.plan.schedule import Schedule


def factors(plan: Schedule, m) -> dict:
    """cls -> (Stack of dy/dx, kernel computing it) for every per-step tanh or sigmoid
    class whose input is differentiated, `plan` being the scheduled plan and `m` its
    array module. Costs one buffer per class."""
    an, lay, out = plan.an, plan.layout, {}
    for c in lay.classes:
        same = an.same_op(c)
        if c in plan.batched or same is None or same[1] or ops.OPS[same[0]].local_out is None:
            continue
        if not any(an.inputs(k)[0] in an.needs_grad for k in an.members[c].values()):
            continue
        lo, hi = lay.range[c]
        value = lay.value_stack[c].span(lo, hi)
        if value is None:
            continue
        factor = m.empty(value.shape, dtype=value.dtype)
        local_out = ops.OPS[same[0]].local_out
        out[c] = (Stack(factor, -lo), partial(local_out, m, factor, value))
    return out


def fold(plan: Schedule, m, found: dict) -> dict:
    """Fold each factor class whose members are read only by a same-shape product, at the
    same step, into that product (see the module docstring): cls -> (product class, the
    position the class takes in it, kernel multiplying its factor buffer by the other
    operand). The product's gradient must have a buffer per step (nothing overwrites a
    step's gradient once its VJP has read it)."""
    an, lay, out = plan.an, plan.layout, {}
    for c, (stack, _) in found.items():
        product = _only_reader(an, lay, c)
        if product is None:
            continue
        reader, position = product
        grads = lay.grad_stack.get(reader)
        if grads is None or isinstance(grads, Slot) or lay.range[reader] != lay.range[c]:
            continue
        other = lay.stacked(reader, 1 - position)
        span = stack.span(*lay.range[c])
        if other is None or grads.span(*lay.range[c]) is None:
            continue
        out[c] = (reader, position, partial(m.multiply, span, other, out=span))
    return out


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
