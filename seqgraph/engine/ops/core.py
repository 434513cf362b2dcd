"""The op table: every primitive the engine knows, with its forward and its VJP.

Each entry is written against an array namespace `xp` that follows the Python array API
standard; the few things the standard lacks live in `xp_extra`. A forward is
`forward(xp, *inputs, **attrs)`; a VJP is `vjp(xp, g, out, *inputs, **attrs)` and returns one
item per input (`None` where the input is not differentiable, e.g. integer ids).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seqgraph.engine import xp_extra

VARIADIC = -1


@dataclass(frozen=True)
class Op:
    name: str
    forward: Callable[..., Any]
    vjp: Callable[..., tuple]
    arity: int  # number of array inputs, or VARIADIC
    doc: str
    attrs: tuple[str, ...] = ()  # the attribute names the op accepts


OPS: dict[str, Op] = {}


def unbroadcast(xp, g, shape: tuple[int, ...]):
    """Sum a broadcast gradient back to `shape` (the one helper every VJP uses)."""
    if tuple(g.shape) == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return xp.reshape(g, tuple(shape))


def op(name: str, arity: int, attrs: tuple[str, ...] = ()):
    """Register `forward` (the decorated function) with the VJP given by `.vjp`."""

    def register(forward):
        def set_vjp(vjp):
            OPS[name] = Op(name, forward, vjp, arity, (forward.__doc__ or "").strip(), attrs)
            return vjp

        forward.vjp = set_vjp
        return forward

    return register


def _norm_axis(axis: int, ndim: int) -> int:
    return axis % ndim


# ---- elementwise arithmetic ------------------------------------------------------------------


@op("add", 2)
def _add(xp, a, b):
    """out = a + b (broadcasting).  da = g, db = g (each summed to its shape)."""
    return a + b


@_add.vjp
def _add_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g, a.shape), unbroadcast(xp, g, b.shape)


@op("addn", VARIADIC)
def _addn(xp, *xs):
    """out = x1 + x2 + ... + xn (broadcasting).  dxi = g (summed to xi's shape)."""
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


@_addn.vjp
def _addn_vjp(xp, g, out, *xs):
    return tuple(unbroadcast(xp, g, x.shape) for x in xs)


@op("sub", 2)
def _sub(xp, a, b):
    """out = a - b.  da = g, db = -g."""
    return a - b


@_sub.vjp
def _sub_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g, a.shape), unbroadcast(xp, -g, b.shape)


@op("mul", 2)
def _mul(xp, a, b):
    """out = a * b.  da = g * b, db = g * a."""
    return a * b


@_mul.vjp
def _mul_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g * b, a.shape), unbroadcast(xp, g * a, b.shape)


@op("div", 2)
def _div(xp, a, b):
    """out = a / b.  da = g / b, db = -g * a / b**2."""
    return a / b


@_div.vjp
def _div_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g / b, a.shape), unbroadcast(xp, -g * out / b, b.shape)


@op("neg", 1)
def _neg(xp, a):
    """out = -a.  da = -g."""
    return -a


@_neg.vjp
def _neg_vjp(xp, g, out, a):
    return (-g,)


@op("matmul", 2)
def _matmul(xp, a, b):
    """out = a @ b.  da = g @ b^T, db = a^T @ g (leading batch axes summed away)."""
    return xp.matmul(a, b)


@_matmul.vjp
def _matmul_vjp(xp, g, out, a, b):
    # A 1-D operand is a row (a) or column (b) matrix, as matmul treats it; g gets that axis too.
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g[..., None] if b.ndim == 1 else g
    g2 = g2[..., None, :] if a.ndim == 1 else g2
    ga = xp.matmul(g2, xp.matrix_transpose(b2))
    gb = xp.matmul(xp.matrix_transpose(a2), g2)
    ga = ga[..., 0, :] if a.ndim == 1 else ga
    gb = gb[..., 0] if b.ndim == 1 else gb
    return unbroadcast(xp, ga, a.shape), unbroadcast(xp, gb, b.shape)


# ---- nonlinearities --------------------------------------------------------------------------


@op("tanh", 1)
def _tanh(xp, a):
    """out = tanh(a).  da = g * (1 - out**2)."""
    return xp.tanh(a)


@_tanh.vjp
def _tanh_vjp(xp, g, out, a):
    return (g * (1 - out * out),)


@op("sigmoid", 1)
def _sigmoid(xp, a):
    """out = 1 / (1 + exp(-a)), computed without overflow.  da = g * out * (1 - out).

    A primitive rather than a composite because exp(-a) overflows for a << 0.
    """
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))


@_sigmoid.vjp
def _sigmoid_vjp(xp, g, out, a):
    return (g * out * (1 - out),)


@op("relu", 1)
def _relu(xp, a):
    """out = max(a, 0).  da = g * [a > 0]."""
    return xp.where(a > 0, a, xp.zeros_like(a))


@_relu.vjp
def _relu_vjp(xp, g, out, a):
    return (xp.where(a > 0, g, xp.zeros_like(g)),)


@op("exp", 1)
def _exp(xp, a):
    """out = exp(a).  da = g * out."""
    return xp.exp(a)


@_exp.vjp
def _exp_vjp(xp, g, out, a):
    return (g * out,)


@op("log", 1)
def _log(xp, a):
    """out = log(a), a > 0.  da = g / a."""
    return xp.log(a)


@_log.vjp
def _log_vjp(xp, g, out, a):
    return (g / a,)


# ---- structure -------------------------------------------------------------------------------


@op("concat", VARIADIC, ("axis",))
def _concat(xp, *xs, axis=-1):
    """out = [x1, x2, ...] joined along `axis`.  dxi = the slice of g that xi filled."""
    return xp.concat(xs, axis=axis)


@_concat.vjp
def _concat_vjp(xp, g, out, *xs, axis=-1):
    axis = _norm_axis(axis, g.ndim)
    grads, start = [], 0
    for x in xs:
        stop = start + x.shape[axis]
        grads.append(_take_range(g, start, stop, axis))
        start = stop
    return tuple(grads)


def _take_range(x, start: int, stop: int, axis: int):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _pad_range(xp, g, start: int, total: int, axis: int):
    """Place g at [start, start + len) of a zero array of length `total` along `axis`."""
    axis = _norm_axis(axis, g.ndim)
    parts = []
    size = g.shape[axis]
    for n in (start, total - start - size):
        if n:
            shape = list(g.shape)
            shape[axis] = n
            parts.append(xp.zeros(tuple(shape), dtype=g.dtype, device=xp_extra.device_of(g)))
    if not parts:
        return g
    before = parts[:1] if start else []
    after = parts[-1:] if total - start - size else []
    return xp.concat(before + [g] + after, axis=axis)


@op("slice", 1, ("start", "stop", "axis"))
def _slice(xp, a, start=0, stop=None, axis=-1):
    """out = a[start:stop] along `axis`.  da = g placed at [start, stop), zeros elsewhere."""
    axis = _norm_axis(axis, a.ndim)
    stop = a.shape[axis] if stop is None else stop
    return _take_range(a, start, stop, axis)


@_slice.vjp
def _slice_vjp(xp, g, out, a, start=0, stop=None, axis=-1):
    return (_pad_range(xp, g, start, a.shape[_norm_axis(axis, a.ndim)], axis),)


@op("chunk", 1, ("index", "parts", "axis"))
def _chunk(xp, a, index=0, parts=1, axis=-1):
    """out = the index-th of `parts` equal pieces of a along `axis` (what `split` lowers to).

    da = g placed at that piece, zeros elsewhere.
    """
    axis = _norm_axis(axis, a.ndim)
    size = a.shape[axis] // parts
    return _take_range(a, index * size, (index + 1) * size, axis)


@_chunk.vjp
def _chunk_vjp(xp, g, out, a, index=0, parts=1, axis=-1):
    size = a.shape[_norm_axis(axis, a.ndim)] // parts
    return (_pad_range(xp, g, index * size, a.shape[_norm_axis(axis, a.ndim)], axis),)


@op("sum", 1, ("axis", "keepdims"))
def _sum(xp, a, axis=None, keepdims=False):
    """out = sum of a over `axis` (all axes if None).  da = g broadcast back over `axis`."""
    return xp.sum(a, axis=axis, keepdims=keepdims)


def _expand_reduced(xp, g, a, axis, keepdims):
    if axis is None:
        return xp.reshape(g, (1,) * a.ndim)
    if keepdims:
        return g
    axes = {_norm_axis(x, a.ndim) for x in ((axis,) if isinstance(axis, int) else axis)}
    return xp.reshape(g, tuple(1 if i in axes else n for i, n in enumerate(a.shape)))


@_sum.vjp
def _sum_vjp(xp, g, out, a, axis=None, keepdims=False):
    return (xp.broadcast_to(_expand_reduced(xp, g, a, axis, keepdims), a.shape),)


@op("mean", 1, ("axis", "keepdims"))
def _mean(xp, a, axis=None, keepdims=False):
    """out = mean of a over `axis`.  da = g / n broadcast back, n = elements averaged."""
    return xp.mean(a, axis=axis, keepdims=keepdims)


@_mean.vjp
def _mean_vjp(xp, g, out, a, axis=None, keepdims=False):
    n = a.size // max(out.size, 1)
    grad = xp.broadcast_to(_expand_reduced(xp, g, a, axis, keepdims), a.shape)
    return (grad / n,)


@op("reshape", 1, ("shape",))
def _reshape(xp, a, shape=(-1,)):
    """out = a with a new shape (same elements).  da = g reshaped to a's shape."""
    return xp.reshape(a, tuple(shape))


@_reshape.vjp
def _reshape_vjp(xp, g, out, a, shape=(-1,)):
    return (xp.reshape(g, a.shape),)


@op("transpose", 1, ("axes",))
def _transpose(xp, a, axes=None):
    """out = a with axes permuted (reversed if None).  da = g permuted back."""
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
    return xp.permute_dims(a, axes)


@_transpose.vjp
def _transpose_vjp(xp, g, out, a, axes=None):
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
    inverse = tuple(sorted(range(len(axes)), key=lambda i: axes[i]))
    return (xp.permute_dims(g, inverse),)


@op("where", 3)
def _where(xp, cond, a, b):
    """out = a where cond else b (cond boolean, broadcast).  da = g*[cond], db = g*[!cond]."""
    return xp.where(cond, a, b)


@_where.vjp
def _where_vjp(xp, g, out, cond, a, b):
    zero = xp.zeros_like(g)
    return (
        None,
        unbroadcast(xp, xp.where(cond, g, zero), a.shape),
        unbroadcast(xp, xp.where(cond, zero, g), b.shape),
    )


def get(name: str) -> Op:
    """The op called `name`; KeyError if the table has none."""
    return OPS[name]
