"""VJP kernels over preallocated buffers: each op's vector-Jacobian product written with
`out=`, into a gradient buffer (the first contribution) or added to it (the rest).

Like the forward kernels (`kernels.py`), each is a closure with no arguments bound when the
plan is built; ops without a fast kernel here fall back to the op table's VJP.
"""

from __future__ import annotations

from functools import partial

from seqgraph.engine import ops
from seqgraph.errors import MissingVJPError
from seqgraph.plan.kernels import ce_rows, contiguous, product, rows

# ELEMENT_VJP[op][position](m, o, g, out, *ins) writes the contribution at g's (broadcast) shape
# into o; None means the contribution is g itself, and NEGATE that it is -g.

NEGATE = "negate"


def _mul_vjp(position):
    return lambda m, o, g, out, a, b: m.multiply(g, b if position == 0 else a, out=o)


def _tanh_vjp(m, o, g, out, a):
    m.multiply(out, out, out=o)
    m.subtract(1, o, out=o)
    m.multiply(o, g, out=o)


def _sigmoid_vjp(m, o, g, out, a):
    m.subtract(1, out, out=o)
    m.multiply(o, out, out=o)
    m.multiply(o, g, out=o)


def _div_b(m, o, g, out, a, b):
    m.multiply(g, out, out=o)
    m.divide(o, b, out=o)
    m.negative(o, out=o)


ELEMENT_VJP = {
    "add": (None, None),
    "sub": (None, NEGATE),
    "mul": (_mul_vjp(0), _mul_vjp(1)),
    "div": (lambda m, o, g, out, a, b: m.divide(g, b, out=o), _div_b),
    "neg": (NEGATE,),
    "tanh": (_tanh_vjp,),
    "sigmoid": (_sigmoid_vjp,),
    "exp": (lambda m, o, g, out, a: m.multiply(g, out, out=o),),
    "log": (lambda m, o, g, out, a: m.divide(g, a, out=o),),
    "relu": (lambda m, o, g, out, a: m.multiply(g, a > 0, out=o),),
    "where": (
        None,
        lambda m, o, g, out, c, a, b: m.multiply(g, c, out=o),
        lambda m, o, g, out, c, a, b: m.multiply(g, ~c, out=o),
    ),
}


def _reduce_axes(full_shape: tuple, shape: tuple) -> tuple:
    lead = len(full_shape) - len(shape)
    return tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and full_shape[lead + i] != 1
    )


def deliver(ctx, dest, add: bool, compute, full_shape: tuple, dtype):
    """Kernel: compute(o) fills o (at full_shape); the result, summed down to dest's shape,
    is written into dest (add=False) or added to it."""
    m = ctx.m
    if tuple(full_shape) == tuple(dest.shape):
        if not add:
            return lambda: compute(dest)
        o = ctx.tmp(full_shape, dtype)
        return lambda: (compute(o), m.add(dest, o, out=dest))
    full = ctx.tmp(full_shape, dtype)
    if not add:
        total = sum_into(ctx, full, dest)
        return lambda: (compute(full), total())
    part = ctx.tmp(dest.shape, dtype, tag=1)
    total = sum_into(ctx, full, part)
    return lambda: (compute(full), total(), m.add(dest, part, out=dest))


def sum_into(ctx, g, dest):
    """Kernel: g summed down to dest's (broadcast) shape, written into dest. Over leading
    axes only (a bias gradient: every step and row) it is one matrix-vector product with a
    vector of ones, which BLAS runs several times faster than a NumPy sum (0.7 vs 1.7 ms
    for 100 x 64 x 1024 float32 here)."""
    m, lead = ctx.m, g.ndim - dest.ndim
    if lead > 0 and tuple(g.shape[lead:]) == tuple(dest.shape) and dest.size:
        if contiguous(g) and contiguous(dest):
            n = g.size // dest.size
            ones = m.ones(n, dtype=g.dtype)
            return partial(m.matmul, ones, g.reshape(n, dest.size), out=dest.reshape(-1))
    axes = _reduce_axes(tuple(g.shape), tuple(dest.shape))
    target = dest[(None,) * lead] if lead else dest
    return partial(m.sum, g, axis=axes, keepdims=True, out=target)


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
    m = ctx.m
    rules = ELEMENT_VJP.get(op)
    if rules is not None and not attrs:
        rule = rules[position]
        if not add and tuple(g.shape) == tuple(dest.shape):
            return _direct_vjp(m, op, position, rule, dest, g, out, ins)
        if rule is None or rule == NEGATE:
            return _pass_vjp(ctx, dest, add, g, rule == NEGATE)
        compute = (lambda r: lambda o: r(m, o, g, out, *ins))(rule)
        return deliver(ctx, dest, add, compute, tuple(g.shape), g.dtype)
    kernel = None
    if op == "matmul":
        kernel = _matmul_vjp(ctx, position, dest, add, g, *ins, bt=bt)
    elif op == "softmax_ce" and position == 0 and contiguous(g):
        kernel = _softmax_ce_vjp(ctx, dest, add, g, *ins)
    if kernel is not None:
        return kernel
    return _generic_vjp(ctx, op, position, dest, add, g, out, ins, attrs)


ONE_CALL_VJP = {  # (op, position) -> (ufunc, second operand): the VJP is ufunc(g, operand)
    ("mul", 0): ("multiply", 1),
    ("mul", 1): ("multiply", 0),
    ("div", 0): ("divide", 1),
    ("exp", 0): ("multiply", "out"),
    ("log", 0): ("divide", 0),
}


def _direct_vjp(m, op, position, rule, dest, g, out, ins):
    """An elementwise VJP written straight into dest (same shape, nothing to add to)."""
    if rule is None:
        return partial(m.copyto, dest, g)
    if rule == NEGATE:
        return partial(m.negative, g, out=dest)
    one = ONE_CALL_VJP.get((op, position))
    if one is not None:
        name, which = one
        return partial(getattr(m, name), g, out if which == "out" else ins[which], out=dest)
    return partial(rule, m, dest, g, out, *ins)


def _matmul_vjp(ctx, position, dest, add, g, a, b, bt=None):
    """da = g @ b^T (b a matrix; `bt` holds b^T if given); db = a^T @ g summed over
    leading axes (one GEMM)."""
    m = ctx.m
    if b.ndim != 2 or not (contiguous(dest) and contiguous(g)):
        return None
    g2 = rows(g)
    if position == 0:
        if tuple(dest.shape) != tuple(g.shape[:-1]) + (b.shape[0],):
            return None
        d2 = rows(dest)
        target = ctx.tmp(d2.shape, dest.dtype) if add else d2
        into = product(m, g2, b.T if bt is None else bt, target)
    else:
        if dest.ndim != 2:
            return None
        d2 = dest
        target = ctx.tmp(dest.shape, dest.dtype) if add else dest
        if contiguous(a):
            into = product(m, rows(a).T, g2, target)
        else:  # a column block: copied to rows at each call
            into = lambda: m.matmul(rows(m.ascontiguousarray(a)).T, g2, out=target)
    if not add:
        return into
    return lambda: (into(), m.add(d2, target, out=d2))


def _softmax_ce_vjp(ctx, dest, add, g, z, targets):
    """dz = g * (softmax(z) - onehot(target)), softmax as exp(z - top) / sum."""
    parts = ce_rows(ctx, z, targets)
    if parts is None or not contiguous(dest):
        return None
    m, (z2, index, top, total) = ctx.m, parts
    g_col = g.reshape(-1, 1)
    saved = ctx.saved.get(ctx.address(z))
    if saved is not None:  # the forward kernel's exp(z - top) and row sums
        e, sums = saved

        def from_forward(o):
            o2 = o.reshape(z2.shape)
            m.divide(e, sums, out=o2)
            o2[index] -= 1
            m.multiply(o2, g_col, out=o2)

        return deliver(ctx, dest, add, from_forward, tuple(z.shape), z.dtype)

    def compute(o):
        o2 = o.reshape(z2.shape)  # o is dest or a scratch array: contiguous, so a view
        m.max(z2, axis=1, keepdims=True, out=top)
        m.subtract(z2, top, out=o2)
        m.exp(o2, out=o2)
        m.sum(o2, axis=1, keepdims=True, out=total)
        m.divide(o2, total, out=o2)
        o2[index] -= 1
        m.multiply(o2, g_col, out=o2)

    return deliver(ctx, dest, add, compute, tuple(z.shape), z.dtype)


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
