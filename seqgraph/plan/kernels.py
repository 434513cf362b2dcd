"""Kernels over preallocated buffers: each op's forward written with `out=` (the VJPs are
in `kernels_vjp.py`).

A kernel is a closure with no arguments that reads and writes arrays bound when the plan is
built, so the hot loop is `for k in kernels: k()`. Ops without a fast kernel here fall back to
the op table (`ops.py`) and copy the result into the buffer, so every op runs. `m` is the raw
array module (numpy or cupy), which has ufuncs with `out=`; `xp` is the array API namespace
the op table is written against.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from seqgraph.engine import ops


class Context:
    """The array modules of one backend, a pool of scratch buffers (one per shape), and
    `saved`: buffers a forward kernel fills for its VJP (softmax_ce, when the plan
    differentiates: `keep_for_vjp`)."""

    def __init__(self, xp, module_name: str, keep_for_vjp: bool = True):
        self.xp = xp
        if module_name == "cupy":
            import cupy as m
            from cupyx.scipy.special import expit
        else:
            m = np
            try:
                from scipy.special import expit
            except ImportError:  # scipy is optional: small arrays take the tanh form too
                expit = None
        self.m, self.expit, self.name = m, expit, module_name
        self.scratch: dict = {}
        self.saved: dict = {}  # input address -> buffers a forward kernel keeps for its VJP
        self.keep_for_vjp = keep_for_vjp

    def address(self, x) -> tuple:
        """Where an array's data starts, with its shape: views made twice compare equal."""
        start = x.data.ptr if self.name == "cupy" else x.ctypes.data
        return (start, tuple(x.shape), tuple(x.strides))

    def tmp(self, shape, dtype, tag: int = 0):
        """A scratch array; a kernel uses it only while it runs, so one per shape is enough."""
        key = (tuple(shape), np.dtype(dtype).str, tag)
        if key not in self.scratch:
            self.scratch[key] = self.m.empty(tuple(shape), dtype=dtype)
        return self.scratch[key]


def rows(x):
    """x as a 2-D (rows, last axis) view; `x` must be C-contiguous."""
    return x.reshape(-1, x.shape[-1])


def contiguous(x) -> bool:
    return bool(x.flags.c_contiguous)


# ---- forward ---------------------------------------------------------------------------------


# SciPy's expit is one call but a scalar loop: on a 64 x 256 float32 gate block it took
# 89 us here against 14 us for the four vectorised calls of the tanh form; below about
# 512 entries its single call wins (1.6 vs 2.5 us at 400).
EXPIT_MAX_SIZE = 512


def _sigmoid(ctx, out, a):
    if ctx.expit is not None and (ctx.name == "cupy" or out.size <= EXPIT_MAX_SIZE):
        return partial(ctx.expit, a, out=out)
    m = ctx.m

    def run():  # 1/(1+exp(-a)) = (1 + tanh(a/2)) / 2, without overflow
        m.multiply(a, 0.5, out=out)
        m.tanh(out, out=out)
        m.multiply(out, 0.5, out=out)
        m.add(out, 0.5, out=out)

    return run


def product(m, a, b, out):
    """Kernel out = a @ b. For 2-D float operands of out's dtype, `dot`, which goes to BLAS
    straight away: 2.2 against 2.9 us for matmul on a 16 x 64 x 64 product here, paid once
    per step and direction."""
    if (
        a.ndim == b.ndim == out.ndim == 2
        and contiguous(out)
        and a.dtype == b.dtype == out.dtype
        and out.dtype.kind == "f"
    ):
        return partial(m.dot, a, b, out=out)
    return partial(m.matmul, a, b, out=out)


def _matmul(ctx, out, a, b):
    m = ctx.m
    if b.ndim == 2 and a.ndim > 2 and contiguous(out):
        out2 = rows(out)
        if contiguous(a):
            return product(m, rows(a), b, out2)
        return lambda: m.matmul(rows(m.ascontiguousarray(a)), b, out=out2)
    return product(m, a, b, out)


def _where(ctx, out, cond, a, b):
    m = ctx.m

    def run():
        m.copyto(out, b)
        m.copyto(out, a, where=cond)

    return run


# Kernels that are one ufunc call are `functools.partial` objects: called from C, no frame.


def _unary(name):
    return lambda ctx, out, a: partial(getattr(ctx.m, name), a, out=out)


def _binary(name):
    return lambda ctx, out, a, b: partial(getattr(ctx.m, name), a, b, out=out)


FORWARD = {
    "add": _binary("add"),
    "sub": _binary("subtract"),
    "mul": _binary("multiply"),
    "div": _binary("divide"),
    "neg": _unary("negative"),
    "tanh": _unary("tanh"),
    "exp": _unary("exp"),
    "log": _unary("log"),
    "sigmoid": _sigmoid,
    "matmul": _matmul,
    "where": _where,
    "relu": lambda ctx, out, a: partial(ctx.m.maximum, a, 0, out=out),
    "softmax_ce": lambda ctx, out, z, targets: _softmax_ce(ctx, out, z, targets),
}


def ce_rows(ctx, z, targets):
    """z as rows, (row index, target) pairs, and two (rows, 1) scratch columns; None if z or
    targets is not contiguous (then the op table's version runs)."""
    if not (contiguous(z) and contiguous(targets)) or z.ndim < 1:
        return None
    z2 = rows(z)
    n = z2.shape[0]
    index = (ctx.m.arange(n), targets.reshape(n))
    return z2, index, ctx.tmp((n, 1), z.dtype, tag=2), ctx.tmp((n, 1), z.dtype, tag=3)


def _softmax_ce(ctx, out, z, targets):
    """out = logsumexp(z) - z[target] per row, as the op table computes it, without the
    one-hot product: top + log(sum(exp(z - top))) with top the row maximum. exp(z - top)
    and its row sums stay in buffers of their own when the plan differentiates, so the VJP
    divides instead of computing the softmax again (3 calls over the logits, not 7)."""
    parts = ce_rows(ctx, z, targets)
    if parts is None or not contiguous(out):
        return None
    m, (z2, index, top, total) = ctx.m, parts
    e = ctx.tmp(z2.shape, z.dtype, tag=4)
    if ctx.keep_for_vjp:
        e, total = m.empty(z2.shape, dtype=z.dtype), m.empty(top.shape, dtype=z.dtype)
        ctx.saved[ctx.address(z)] = (e, total)
    o = out.reshape(-1, 1)

    def run():
        m.max(z2, axis=1, keepdims=True, out=top)
        m.subtract(z2, top, out=e)
        m.exp(e, out=e)
        m.sum(e, axis=1, keepdims=True, out=total)
        m.log(total, out=o)
        m.add(o, top, out=o)
        m.subtract(o[:, 0], z2[index], out=o[:, 0])

    return run


def forward(ctx, op: str, out, ins: list, attrs: dict):
    """A kernel writing op(*ins) into `out`."""
    make = FORWARD.get(op)
    kernel = make(ctx, out, *ins) if make is not None and not attrs else None
    if kernel is not None:
        return kernel
    fn, xp = ops.OPS[op].forward, ctx.xp

    def run():
        out[...] = fn(xp, *ins, **attrs)

    return run


def reduce_rest(ctx, op: str, out, a):
    """Per step of a stacked `a`: the sum (or mean) of all its entries, into out (n,)."""
    m, n = ctx.m, a.shape[0]
    scale = 1.0 / (a.size // max(n, 1)) if op == "mean" else None

    def run():
        flat = a.reshape(n, -1)
        m.sum(flat, axis=1, out=out)
        if scale is not None:
            m.multiply(out, scale, out=out)

    return run
