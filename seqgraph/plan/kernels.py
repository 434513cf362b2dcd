"""Kernels over preallocated buffers: each op's forward written with `out=` (the VJPs are
in `kernels_vjp.py`).

A kernel is a closure with no arguments that reads and writes arrays bound when the plan is
built, so the hot loop is `for k in kernels: k()`. Each op's fast kernel is its record's
`out_forward` (in the op table); ops without one fall back to the record's reference forward
and copy the result into the buffer, so every op runs. `m` is the raw array module (numpy or
cupy), which has ufuncs with `out=`; `xp` is the array API namespace the op table is written
against.
"""

from __future__ import annotations

import numpy as np

from seqgraph.engine import ops
from seqgraph.plan import ckernels


class Context:
    """The array modules of one backend, a pool of scratch buffers (one per shape), and
    `saved`: buffers a forward kernel fills for its VJP (softmax_ce, when the plan
    differentiates: `keep_for_vjp`). The `ctx` the op records' fast kernels receive."""

    def __init__(self, xp, module_name: str, keep_for_vjp: bool = True):
        self.xp = xp
        if module_name == "cupy":
            import cupy as m
            from cupyx.scipy.special import expit
        else:
            # Not SciPy's expit, though its one call beats the tanh form's four below 512
            # entries (1.6 vs 2.5 us): importing scipy.special costs 26 MiB of resident memory
            # and a second OpenBLAS with its own threads, for a sigmoid the compiled kernels
            # (`ckernels`) fuse anyway.
            m, expit = np, None
        self.m, self.expit, self.name = m, expit, module_name
        self.scratch: dict = {}
        self.saved: dict = {}  # input address -> buffers a forward kernel keeps for its VJP
        # addresses of inputs their reader's forward kernel may write over (nothing reads
        # them after it: `liveness.overwritten_inputs`, `Op.forward_overwrites`)
        self.dead_inputs: set = set()
        self.keep_for_vjp = keep_for_vjp

    def address(self, x) -> tuple:
        """Where an array's data starts, with its shape: views made twice compare equal."""
        start = x.data.ptr if self.name == "cupy" else x.ctypes.data
        return (start, tuple(x.shape), tuple(x.strides))

    def c_kernel(self, text: str, args: list):
        """An op's own compiled kernel (`ckernels.function_kernel`) over NumPy buffers, or None
        (CuPy, or no compiled kernels here): the op then builds its NumPy kernel."""
        if self.name != "numpy":
            return None
        return ckernels.function_kernel(text, args)

    def tmp(self, shape, dtype, tag: int = 0):
        """A scratch array; a kernel uses it only while it runs, so one per shape is enough."""
        key = (tuple(shape), np.dtype(dtype).str, tag)
        if key not in self.scratch:
            self.scratch[key] = self.m.empty(tuple(shape), dtype=dtype)
        return self.scratch[key]


def forward(ctx, op: str, out, ins: list, attrs: dict):
    """A kernel writing op(*ins) into `out`."""
    make = ops.OPS[op].out_forward
    kernel = make(ctx, out, *ins) if make is not None and not attrs else None
    if kernel is not None:
        return kernel
    fn, xp = ops.OPS[op].forward, ctx.xp

    def run():
        out[...] = fn(xp, *ins, **attrs)

    return run


def reduce_rest(ctx, op: str, out, a):
    """Per step of a stacked `a`: the sum (or mean: `Op.averages`) of all its entries, into
    out (n,)."""
    m, n = ctx.m, a.shape[0]
    scale = 1.0 / (a.size // max(n, 1)) if ops.OPS[op].averages else None

    def run():
        flat = a.reshape(n, -1)
        m.sum(flat, axis=1, out=out)
        if scale is not None:
            m.multiply(out, scale, out=out)

    return run
