"""VJP kernels over preallocated buffers: each op's vector-Jacobian product written with
`out=`, into a gradient buffer (the first contribution) or added to it (the rest).

Like the forward kernels (`kernels.py`), each is a closure with no arguments bound when the
plan is built. The per-op rules are the record's `out_vjp` (elementwise: one rule per input,
delivered here with broadcasting and accumulation) or `vjp_kernel` (a whole kernel: matmul,
softmax_ce); ops with neither fall back to the record's reference VJP.
"""

from __future__ import annotations

from functools import partial

from seqgraph.engine import ops
from seqgraph.engine.ops import NEGATE, UfuncVJP
from seqgraph.engine.ops.buffers import deliver, sum_into
from seqgraph.errors import MissingVJPError
from seqgraph.plan.ckernels import C_TYPES, Statement


def _pass_vjp(ctx, dest, add: bool, g, negate: bool):
    """dest = (or +=) g or -g, summed down to dest's shape: the VJP of add and sub, reading
    g where it lies (no copy of it first)."""
    m = ctx.m
    if tuple(g.shape) == tuple(dest.shape):
        if add:
            return partial(m.subtract if negate else m.add, dest, g, out=dest)
        return partial(m.negative, g, out=dest) if negate else partial(m.copyto, dest, g)
    if not (add or negate):
        return sum_into(ctx, g, dest)
    part = ctx.tmp(dest.shape, dest.dtype, tag=1)
    total = sum_into(ctx, g, part)
    if add:
        finish = partial(m.subtract if negate else m.add, dest, part, out=dest)
    else:
        finish = partial(m.negative, part, out=dest)
    return lambda: (total(), finish())


def vjp(ctx, op: str, position: int, dest, add: bool, g, out, ins: list, attrs: dict, bt=None):
    """A kernel writing (or adding) the gradient for input `position` into dest; `bt`: a
    contiguous copy of a matmul's right operand, transposed, if the caller keeps one."""
    m, entry = ctx.m, ops.OPS[op]
    rules = entry.out_vjp
    if rules is not None and not attrs:
        rule = rules[position]
        if not add and tuple(g.shape) == tuple(dest.shape):
            return _direct_vjp(m, rule, dest, g, out, ins)
        if rule is None or rule == NEGATE:
            return _pass_vjp(ctx, dest, add, g, rule == NEGATE)
        compute = (lambda r: lambda o: r(m, o, g, out, *ins))(rule)
        return deliver(ctx, dest, add, compute, tuple(g.shape), g.dtype)
    if entry.vjp_kernel is not None:
        kernel = entry.vjp_kernel(ctx, position, dest, add, g, out, ins, bt, **attrs)
        if kernel is not None:
            return kernel
    return _generic_vjp(ctx, op, position, dest, add, g, out, ins, attrs)


UFUNC_C = {"multiply": "*", "divide": "/"}  # the `UfuncVJP` ufuncs a C statement can spell


def statement(op: str, position: int, dest, add: bool, g, out, ins: list, attrs: dict):
    """What `vjp` would emit, as a `ckernels.Statement` when it is one elementwise line at
    g's shape (dest = or += g, -g, g * operand, g / operand), else None. The line's form is
    a fact of the op, the position and the dtype (`_statement_form`), found once per triple
    rather than per VJP (220,000 at T = 10,000)."""
    if attrs or tuple(g.shape) != tuple(dest.shape):
        return None
    entry, key = ops.OPS[op], (op, position, dest.dtype)
    known = _STATEMENT_FORMS.get(key)
    if known is None or known[0] is not entry:  # the record itself: a test may replace it
        known = _STATEMENT_FORMS[key] = (entry, _statement_form(entry, position, dest.dtype))
    form = known[1]
    if form is None:
        return None
    expr, operand = form
    if operand is None:
        return Statement(dest, add, expr, (g,))
    return Statement(dest, add, expr, (g, out if operand == "out" else ins[operand]))


_STATEMENT_FORMS: dict = {}  # (op, position, dtype) -> (its `Op`, `_statement_form`)


def _statement_form(entry, position: int, dtype) -> tuple | None:
    """(expression, second operand) of `statement` for input `position` of the op `entry`
    at `dtype`: the operand "out", an input position, or None where g is the only one; None
    where the VJP is no one C line."""
    rules = entry.out_vjp
    if rules is None:
        return None
    rule = rules[position]
    if rule is None or rule == NEGATE:
        return ("{0}" if rule is None else "-{0}"), None
    if entry.local_c_expr is not None and rule is entry.out_vjp[0] and entry.local is not None:
        # g * f(y) from the output alone, f spelt as `local_out` computes it: then times g
        ctype = C_TYPES.get(dtype)
        if ctype is None:
            return None
        local = entry.local_c_expr.replace("{0}", "{1}").replace("{t}", ctype)
        return f"({local}) * {{0}}", "out"
    if isinstance(rule, UfuncVJP) and rule.ufunc in UFUNC_C:
        return f"{{0}} {UFUNC_C[rule.ufunc]} {{1}}", rule.operand
    return None


def _direct_vjp(m, rule, dest, g, out, ins):
    """An elementwise VJP written straight into dest (same shape, nothing to add to)."""
    if rule is None:
        return partial(m.copyto, dest, g)
    if rule == NEGATE:
        return partial(m.negative, g, out=dest)
    if isinstance(rule, UfuncVJP):
        operand = out if rule.operand == "out" else ins[rule.operand]
        return partial(getattr(m, rule.ufunc), g, operand, out=dest)
    return partial(rule, m, dest, g, out, *ins)


def _generic_vjp(ctx, op, position, dest, add, g, out, ins, attrs):
    entry, xp, m = ops.OPS[op], ctx.xp, ctx.m

    def run():
        grad = entry.vjp(xp, g, out, *ins, **attrs)[position]
        if grad is None:
            raise MissingVJPError(op, position, "(plan)")
        grad = ops.unbroadcast(xp, grad, tuple(dest.shape))
        if add:
            m.add(dest, grad, out=dest)
        else:
            dest[...] = grad

    return run
