"""The backward half of a plan: VJP kernels in reverse unit order, written or accumulated.

Buffers are reused from call to call, so every gradient must be *written* by its first
contribution and *added to* by later ones. Which is which is decided here, once, by walking
the kernels in the order they will run (`Tracker`); a buffer that some reader could see before
anything is written (an unused state, a slice nobody differentiates) is zero-filled at the
start of backward instead.
"""

from __future__ import annotations

from functools import partial

from seqgraph.errors import GraphError
from seqgraph.plan import kernels_vjp, local_factors
from seqgraph.plan.analysis import class_of


class Tracker:
    """Which gradient cells have been written so far, in emission order."""

    def __init__(self, layout):
        self.lay = layout
        self.written: set = set()
        self.zero: set = set()  # indices of gradient buffers to zero-fill first

    def _state(self, cell) -> bool | None:
        kids = self.lay.children.get(cell)
        if cell in self.written or (kids and all(k in self.written for k in kids)):
            return True
        if kids and any(k in self.written for k in kids):
            return None
        return False

    def target(self, keys) -> bool:
        """Record a contribution to these nodes' gradients; True if it must add."""
        cells = {self.lay.cell[k] for k in keys}
        states = [self._state(c) for c in cells]
        mixed = None in states or any(c in self.lay.children for c in cells) and not all(states)
        if mixed or (any(states) and not all(states)):
            self.zero.update(self.lay.base[k] for k in keys)
            add = True
        else:
            add = bool(states and states[0])
        for c in cells:
            self.written.add(c)
            self.written.update(self.lay.children.get(c, ()))
        return add

    def ready(self, keys) -> None:
        """These gradients are about to be read: zero-fill any that nothing wrote."""
        for k in keys:
            if not self._state(self.lay.cell[k]):
                self.zero.add(self.lay.base[k])


def emit(plan) -> None:
    """Fill plan.backward_kernels and plan.zero (and plan.has, plan.transposes)."""
    an, lay, m = plan.an, plan.layout, plan.ctx.m
    loss = plan.graph.loss
    plan.has = an.has_grad(loss)
    tracker = Tracker(lay)
    seed = lay.grad[loss]
    out = [lambda: seed.fill(1)]
    tracker.written.add(lay.cell[loss])
    plan.transposes = {}  # filled by _transposed while the VJPs are emitted
    factors, folds, skips = _local_factors(plan, out)
    deferred = _deferred(plan)
    remaining = {c: len(an.members[c]) for c in deferred}
    for unit in reversed(plan.units):
        if unit[0] == "class":
            out.extend(_class_vjp(plan, tracker, unit[1], skips.get(unit[1], set())))
            continue
        k = unit[1]
        c = class_of(k)
        if k in plan.has:
            factor = factors[c][0].at(k[2]) if c in factors else None
            fold = folds.get(c)
            upstream = an.members[fold[0]][k[2]] if fold else None  # the product it feeds
            skip = set(deferred.get(c, ())) | skips.get(c, set())
            out.extend(_node_vjp(plan, tracker, k, skip, factor, upstream))
        if c in remaining:
            remaining[c] -= 1
            if not remaining[c]:
                out.extend(_deferred_vjp(plan, tracker, c, deferred[c]))
    out[1:1] = [partial(m.copyto, bt, value.T) for bt, value in plan.transposes.values()]
    tracker.ready([k for k in plan.graph.params.values() if k in lay.grad])
    tracker.ready([k for k in plan.state_inputs() if k in lay.grad])
    plan.backward_kernels, plan.zero = out, tracker.zero


def _local_factors(plan, out: list) -> tuple:
    """(factors, folds, skips) of `local_factors`, their kernels appended to `out`; skips:
    product class -> the input positions whose gradient a fold makes needless."""
    if not plan.batch_derivatives:
        return {}, {}, {}
    factors = local_factors.factors(plan)
    folds = local_factors.fold(plan, factors)
    out.extend(kernel for _, kernel in factors.values())
    out.extend(kernel for _, _, kernel in folds.values())  # after the factors they scale
    skips: dict = {}
    for reader, position, _ in folds.values():
        skips.setdefault(reader, set()).add(position)
    return factors, folds, skips


def _transposed(plan, op: str, position: int, inputs: tuple):
    """For dx of x @ W with W outside time (a parameter, a fused gate matrix): a buffer that
    holds W^T contiguous, refreshed once when backward starts (`emit`). OpenBLAS multiplies
    by a transposed view more slowly: 55 vs 35 us per (32, 512) x (512, 128) step here, and
    the recurrent product runs once per step."""
    right = inputs[1] if op == "matmul" and position == 0 and len(inputs) == 2 else None
    if right is None or right[2] is not None or len(plan.an.meta[right][0]) != 2:
        return None
    if right not in plan.transposes:
        value = plan.layout.value[right]
        buffer = plan.ctx.m.empty(value.shape[::-1], dtype=value.dtype)
        plan.transposes[right] = (buffer, value)
    return plan.transposes[right][0]


def _deferred(plan) -> dict:
    """Per-step classes whose gradients for a shared input (a parameter, or a matrix made of
    parameters outside time) are summed once, after the loop, as one batched product."""
    an, lay, out = plan.an, plan.layout, {}
    for c in lay.classes:
        same = an.same_op(c)
        if c in plan.batched or c in lay.source or same is None or c not in lay.grad_stack:
            continue
        op, k0, in_nd, rule, patterns = plan.class_rule(c, same)
        if rule is None or rule[0] != "same":
            continue
        if plan._stacked_inputs(c, op, in_nd, k0) is None:
            continue
        positions = [
            i
            for i, p in enumerate(patterns)
            if p and p[0] == "shared" and p[1] in an.needs_grad  # a parameter, or a node
            # outside time made of them (a fused gate matrix): gradient summed over steps
        ]
        if positions:
            out[c] = positions
    return out


def _node_vjp(plan, tracker, k, skip, factor=None, upstream=None) -> list:
    """VJP kernels of node k; with `factor` (local_factors) its input's gradient is g times
    the factor, g being k's gradient or, where k is folded into the product `upstream`,
    that product's."""
    an, lay, ctx = plan.an, plan.layout, plan.ctx
    node, g = an.node[k], lay.grad[upstream if upstream is not None else k]
    tracker.ready([upstream if upstream is not None else k])
    total = an.addn_of_class(k)
    if total is not None:
        members = [an.members[total][t] for t in sorted(an.members[total])]
        targets = [s for s in members if s in an.needs_grad]
        if not targets:
            return []
        dest, add, m = lay.grad_stack[total].span(*lay.range[total]), tracker.target(targets), ctx.m
        return [(lambda: m.add(dest, g, out=dest)) if add else (lambda: m.copyto(dest, g))]
    ins, value = [lay.value[i] for i in node["inputs"]], lay.value[k]
    out = []
    for i, source in enumerate(node["inputs"]):
        if source not in an.needs_grad or i in skip or lay.cell[source] == lay.cell[k]:
            continue
        add = tracker.target([source])
        if factor is not None:  # g * (d out / d input), the factor computed before the loop
            out.append(
                kernels_vjp.vjp(ctx, "mul", 0, lay.grad[source], add, g, None, [g, factor], {})
            )
            continue
        bt = _transposed(plan, node["op"], i, node["inputs"])
        out.append(
            kernels_vjp.vjp(
                ctx, node["op"], i, lay.grad[source], add, g, value, ins, node["attrs"], bt
            )
        )
    return out


def _class_vjp(plan, tracker, cls, skip=()) -> list:
    an, lay, ctx = plan.an, plan.layout, plan.ctx
    kind, attrs, ins = plan.batched[cls]
    op = an.same_op(cls)[0]
    members = [an.members[cls][t] for t in sorted(an.members[cls])]
    if not any(k in plan.has for k in members):
        return []
    tracker.ready(members)
    span = lay.range[cls]
    g, value = lay.grad_stack[cls].span(*span), lay.value_stack[cls].span(*span)
    in_nd = [len(an.meta[i][0]) for i in an.inputs(members[0])]
    dests = plan._stacked_inputs(cls, op, in_nd, members[0], grad=True)
    out = []
    for i in range(len(in_nd)):
        sources = [an.inputs(k)[i] for k in members]
        targets = [s for s in dict.fromkeys(sources) if s in an.needs_grad]
        pairs = zip(sources, members, strict=True)
        if i in skip or not targets or all(lay.cell.get(s) == lay.cell[k] for s, k in pairs):
            continue
        if dests[i] is None:
            raise GraphError(f"plan: no stacked gradient for input {i} of {cls}")
        add = tracker.target(targets)
        if kind == "reduce_rest":
            out.append(_reduce_rest_vjp(ctx, op, dests[i], add, g))
        else:
            bt = _transposed(plan, op, i, an.inputs(members[0]))
            out.append(kernels_vjp.vjp(ctx, op, i, dests[i], add, g, value, ins, attrs, bt))
    return out


def _reduce_rest_vjp(ctx, op, dest, add, g):
    m, n = ctx.m, dest.shape[0]
    scale = 1.0 / (dest.size // max(n, 1)) if op == "mean" else 1.0
    g_b = g.reshape((n,) + (1,) * (dest.ndim - 1))
    tmp = ctx.tmp(dest.shape, dest.dtype)

    def run():
        m.multiply(g_b, scale, out=tmp)  # broadcast over each step's entries
        if add:
            m.add(dest, tmp, out=dest)
        else:
            m.copyto(dest, tmp)

    return run


def _deferred_vjp(plan, tracker, cls, positions) -> list:
    an, lay, ctx = plan.an, plan.layout, plan.ctx
    op, attrs = an.same_op(cls)
    members = [an.members[cls][t] for t in sorted(an.members[cls])]
    tracker.ready(members)
    span = lay.range[cls]
    g, value = lay.grad_stack[cls].span(*span), lay.value_stack[cls].span(*span)
    in_nd = [len(an.meta[i][0]) for i in an.inputs(members[0])]
    ins = plan._stacked_inputs(cls, op, in_nd, members[0])
    out = []
    for i in positions:
        source = an.inputs(members[0])[i]
        add = tracker.target([source])
        out.append(kernels_vjp.vjp(ctx, op, i, lay.grad[source], add, g, value, ins, attrs))
    return out
