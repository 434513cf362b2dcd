"""Lookups and losses of the op table (registered into `ops.OPS`): embedding, argmax,
log-softmax, softmax cross-entropy and mean squared error."""

from __future__ import annotations

import numpy as np

from seqgraph.engine import xp_extra
from seqgraph.engine.ops.arrays import logsumexp
from seqgraph.engine.ops.buffers import contiguous, deliver, rows
from seqgraph.engine.ops.table import op, unbroadcast


@op("embedding", 2, rowwise=True)
def _embedding(xp, ids, W):
    """out[...] = W[ids[...]] (row gather).  dW = scatter-add of g's rows at ids (repeats add)."""
    rows = xp.take(W, xp.reshape(ids, (-1,)), axis=0)
    return xp.reshape(rows, tuple(ids.shape) + (W.shape[1],))


@_embedding.vjp
def _embedding_vjp(xp, g, out, ids, W):
    flat_g = xp.reshape(g, (-1, W.shape[1]))
    return None, xp_extra.scatter_add_rows(xp, xp.reshape(ids, (-1,)), flat_g, W.shape[0])


@op("argmax", 1, rowwise=True)
def _argmax(xp, a):
    """out = index of the largest entry along the last axis.  Not differentiable: the gradient
    stops here (used to feed a model's own prediction back as the next input)."""
    return xp.argmax(a, axis=-1)


@_argmax.vjp
def _argmax_vjp(xp, g, out, a):
    return (None,)


@op("log_softmax", 1, rowwise=True)
def _log_softmax(xp, a):
    """out = a - logsumexp(a) over the last axis.  da = g - softmax(a) * sum(g).

    A primitive because the composite exp/sum/log overflows for large logits.
    """
    return a - logsumexp(xp, a)


@_log_softmax.vjp
def _log_softmax_vjp(xp, g, out, a):
    return (g - xp.exp(out) * xp.sum(g, axis=-1, keepdims=True),)


def ce_rows(ctx, z, targets):
    """z as rows, (row index, target) pairs, and two (rows, 1) scratch columns; None if z or
    targets is not contiguous (then the reference runs)."""
    if not (contiguous(z) and contiguous(targets)) or z.ndim < 1:
        return None
    z2 = rows(z)
    n = z2.shape[0]
    index = (ctx.m.arange(n), targets.reshape(n))
    return z2, index, ctx.tmp((n, 1), z.dtype, tag=2), ctx.tmp((n, 1), z.dtype, tag=3)


# The two kernels of softmax_ce as C (`ctx.c_kernel`), one pass over each row where NumPy
# makes eight calls over all rows (forward) and three (VJP): at 64 classes the calls cost
# more than the arithmetic. The same operations in the same order as the NumPy kernels,
# except that exp and log are libmvec's and the row sum runs in vector lanes (NumPy's is
# pairwise): within a few ulp. A NaN in a row may be passed over by the maximum (np.max
# returns it), but its exp is NaN, and so are the row's sum, loss and every dz, as with
# NumPy; a target outside the row (never, after `batch.prepare`) makes its loss NaN, not
# a read.
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
SOFTMAX_CE_C = """
void {name}(const i64* a) {
    const i64 rows = a[0], cols = a[1];
    const {t}* z = (const {t}*)a[2];
    const i64* target = (const i64*)a[3];
    {t}* out = ({t}*)a[4];
    {t}* e = ({t}*)a[5];
    {t}* total = ({t}*)a[6];
    for (i64 i = 0; i < rows; i++) {
        const {t}* zi = z + i * cols;
        {t}* ei = e + i * cols;
        const i64 k = target[i];
        const {t} picked = (k >= 0 && k < cols) ? zi[k] : ({t})NAN;
        {t} top = zi[0];
        #pragma omp simd reduction(max:top)
        for (i64 j = 1; j < cols; j++) top = zi[j] > top ? zi[j] : top;
        {t} sum = 0;
        #pragma omp simd reduction(+:sum)
        for (i64 j = 0; j < cols; j++) {
            const {t} v = exp(zi[j] - top);
            ei[j] = v;
            sum += v;
        }
        total[i] = sum;
        out[i] = (log(sum) + top) - picked;
    }
}
"""
SOFTMAX_CE_VJP_C = """
void {name}(const i64* a) {
    const i64 rows = a[0], cols = a[1];
    const {t}* e = (const {t}*)a[2];
    const {t}* total = (const {t}*)a[3];
    const {t}* g = (const {t}*)a[4];
    const i64* target = (const i64*)a[5];
    {t}* d = ({t}*)a[6];
    for (i64 i = 0; i < rows; i++) {
        const {t} s = total[i], gi = g[i];
        const i64 k = target[i];
        #pragma omp simd
        for (i64 j = 0; j < cols; j++) {
            {t} v = e[i * cols + j] / s;
            if (j == k) v = v - ({t})1;
            d[i * cols + j] = v * gi;
        }
    }
}
"""


def _row_kernel(ctx, text: str, dtype, args: list):
    """softmax_ce's compiled kernel over these rows (`ctx.c_kernel`), or None."""
    ctype = _C_TYPES.get(np.dtype(dtype))
    make = getattr(ctx, "c_kernel", None)
    if ctype is None or make is None:
        return None
    return make(text.replace("{t}", ctype), args)


def _softmax_ce_out(ctx, out, z, targets):
    """Forward kernel: out = logsumexp(z) - z[target] per row, as the reference computes it,
    without the one-hot product: top + log(sum(exp(z - top))) with top the row maximum.
    exp(z - top) and its row sums stay in buffers of their own when the plan differentiates
    (`ctx.keep_for_vjp`; kept in `ctx.saved` under z's address), so the VJP kernel divides
    instead of computing the softmax again (3 calls over the logits, not 7); exp(z - top)
    in z's own buffer where z is dead once read (`ctx.dead_inputs`), and z's gradient may
    then be written over it too (the VJP's ufuncs read e before they write each element)."""
    parts = ce_rows(ctx, z, targets)
    if parts is None or not contiguous(out):
        return None
    m, (z2, index, top, total) = ctx.m, parts
    if not ctx.keep_for_vjp:
        e = ctx.tmp(z2.shape, z.dtype, tag=4)
    else:  # in z itself where the plan says nothing else reads z (`Op.forward_overwrites`)
        dead = ctx.address(z) in ctx.dead_inputs
        e = z2 if dead else m.empty(z2.shape, dtype=z.dtype)
        total = m.empty(top.shape, dtype=z.dtype)
        ctx.saved[ctx.address(z)] = (e, total)
    o, picked = out.reshape(-1, 1), ctx.tmp((z2.shape[0],), z.dtype, tag=5)
    if contiguous(e) and contiguous(total) and targets.dtype == np.int64:
        args = [*z2.shape, z2, targets, o, e, total]
        compiled = _row_kernel(ctx, SOFTMAX_CE_C, z.dtype, args)
        if compiled is not None:
            return compiled

    def run():  # z[target] read first: e may take z's place
        picked[...] = z2[index]
        m.max(z2, axis=1, keepdims=True, out=top)
        m.subtract(z2, top, out=e)
        m.exp(e, out=e)
        m.sum(e, axis=1, keepdims=True, out=total)
        m.log(total, out=o)
        m.add(o, top, out=o)
        m.subtract(o[:, 0], picked, out=o[:, 0])

    return run


def _softmax_ce_vjp_kernel(ctx, position, dest, add, g, out, ins, bt=None):
    """dz = g * (softmax(z) - onehot(target)), softmax as exp(z - top) / sum (the forward
    kernel's, where it kept them)."""
    z, targets = ins
    saved = ctx.saved.get(ctx.address(z)) if position == 0 else None
    if saved is not None:
        # the forward kernel's exp(z - top) and row sums; always taken, whatever g's and
        # dest's layout: z's buffer may hold exp(z - top) now, so nothing may read z again
        return _from_forward(ctx, dest, add, g, z, targets, *saved)
    parts = ce_rows(ctx, z, targets) if position == 0 and contiguous(g) else None
    if parts is None or not contiguous(dest):
        return None
    m, (z2, index, top, total) = ctx.m, parts
    g_col = g.reshape(-1, 1)

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


def _from_forward(ctx, dest, add, g, z, targets, e, sums):
    """Kernel: dz = g * (e / sums - onehot(target)) from the forward's saved exp(z - top)
    (`e`, rows of z's shape) and row sums, into dest (written or added to) of any layout."""
    m, (_, index, _, _) = ctx.m, ce_rows(ctx, z, targets)  # z was contiguous: it saved e
    shape = tuple(z.shape)
    direct = contiguous(dest) and tuple(dest.shape) == shape and not add
    o = dest if direct else ctx.tmp(shape, z.dtype, tag=6)
    o2 = o.reshape(e.shape)
    g_col = g.reshape(-1, 1) if contiguous(g) else None  # else a copy each call
    if direct and g_col is not None and targets.dtype == np.int64 and contiguous(targets):
        args = [*e.shape, e, sums, g_col, targets, o2]
        compiled = _row_kernel(ctx, SOFTMAX_CE_VJP_C, z.dtype, args)
        if compiled is not None:
            return compiled

    def run():
        m.divide(e, sums, out=o2)
        o2[index] -= 1
        m.multiply(o2, g.reshape(-1, 1) if g_col is None else g_col, out=o2)
        if o is dest:
            return
        total = o if tuple(dest.shape) == shape else unbroadcast(m, o, tuple(dest.shape))
        if add:
            m.add(dest, total, out=dest)
        else:
            m.copyto(dest, total)

    return run


@op(
    "softmax_ce",
    2,
    rowwise=True,
    out_forward=_softmax_ce_out,
    vjp_kernel=_softmax_ce_vjp_kernel,
    forward_overwrites=(0,),
)
def _softmax_ce(xp, logits, targets):
    """out[n] = logsumexp(logits[n]) - logits[n, targets[n]] (cross-entropy per row).

    dlogits = g[n] * (softmax(logits[n]) - onehot(targets[n])); targets get no gradient.
    A primitive for the same stability reason as log_softmax, and because its VJP is simple.
    """
    picked = xp.sum(logits * xp_extra.one_hot(xp, targets, logits.shape[-1], logits.dtype), axis=-1)
    return xp.reshape(logsumexp(xp, logits), picked.shape) - picked


@_softmax_ce.vjp
def _softmax_ce_vjp(xp, g, out, logits, targets):
    probs = xp.exp(logits - logsumexp(xp, logits))
    hot = xp_extra.one_hot(xp, targets, logits.shape[-1], logits.dtype)
    return g[..., None] * (probs - hot), None


@op("mse", 2, rowwise=True)
def _mse(xp, pred, target):
    """out[n] = mean over the last axis of (pred - target)**2, one value per row.

    dpred = g[n] * 2 (pred - target) / d, dtarget = -dpred, d = size of the last axis.
    """
    diff = pred - target
    return xp.mean(diff * diff, axis=-1)


@_mse.vjp
def _mse_vjp(xp, g, out, pred, target):
    diff = pred - target
    grad = g[..., None] * (2 / diff.shape[-1]) * diff
    return unbroadcast(xp, grad, pred.shape), unbroadcast(xp, -grad, target.shape)
