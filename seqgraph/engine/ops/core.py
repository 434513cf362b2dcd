"""Arithmetic, products, nonlinearities, reductions and views of the op table.

Each entry is written against an array namespace `xp` that follows the Python array API
standard; the few things the standard lacks live in `xp_extra`. A forward is
`forward(xp, *inputs, **attrs)`; a VJP is `vjp(xp, g, out, *inputs, **attrs)` and returns one
item per input (`None` where the input is not differentiable, e.g. integer ids). The facts
after the arity and attrs are the plan's (see `table.Op`).
"""

from __future__ import annotations

from functools import partial

from seqgraph.engine.ops.arrays import pad_range, range_index, take_range
from seqgraph.engine.ops.buffers import contiguous, product, rows
from seqgraph.engine.ops.table import (
    NEGATE,
    VARIADIC,
    UfuncVJP,
    batch_axis,
    batch_whole,
    norm_axis,
    op,
    ufunc_forward,
    unbroadcast,
)

# ---- elementwise arithmetic ------------------------------------------------------------------

# The facts every elementwise op shares: one C expression each, so a chain of them fuses into
# one GPU kernel, and side-by-side column blocks of one may join into one op.
ELEMENTWISE_FACTS = {"elementwise": True, "sibling_merge": True}


@op(
    "add",
    2,
    **ELEMENTWISE_FACTS,
    c_expr="{0} + {1}",
    pass_through=(0, 1),
    in_place=True,
    reads_output=False,
    output_overwritable=True,
    unread_inputs=(0, 1),
    out_forward=ufunc_forward("add"),
    out_vjp=(None, None),
)
def _add(xp, a, b):
    """out = a + b (broadcasting).  da = g, db = g (each summed to its shape)."""
    return a + b


@_add.vjp
def _add_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g, a.shape), unbroadcast(xp, g, b.shape)


@op("addn", VARIADIC, variadic_sum=True)
def _addn(xp, *xs):
    """out = x1 + x2 + ... + xn (broadcasting).  dxi = g (summed to xi's shape)."""
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


@_addn.vjp
def _addn_vjp(xp, g, out, *xs):
    return tuple(unbroadcast(xp, g, x.shape) for x in xs)


@op(
    "sub",
    2,
    **ELEMENTWISE_FACTS,
    c_expr="{0} - {1}",
    pass_through=(0,),
    in_place=True,
    reads_output=False,
    output_overwritable=True,
    unread_inputs=(0, 1),
    out_forward=ufunc_forward("subtract"),
    out_vjp=(None, NEGATE),
)
def _sub(xp, a, b):
    """out = a - b.  da = g, db = -g."""
    return a - b


@_sub.vjp
def _sub_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g, a.shape), unbroadcast(xp, -g, b.shape)


@op(
    "mul",
    2,
    **ELEMENTWISE_FACTS,
    c_expr="{0} * {1}",
    reads_output=False,
    other_operand=True,
    out_forward=ufunc_forward("multiply"),
    out_vjp=(UfuncVJP("multiply", 1), UfuncVJP("multiply", 0)),
)
def _mul(xp, a, b):
    """out = a * b.  da = g * b, db = g * a."""
    return a * b


@_mul.vjp
def _mul_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g * b, a.shape), unbroadcast(xp, g * a, b.shape)


def _div_b_out(m, o, g, out, a, b):
    """db = -g * out / b, into o (out = a / b)."""
    m.multiply(g, out, out=o)
    m.divide(o, b, out=o)
    m.negative(o, out=o)


@op(
    "div",
    2,
    **ELEMENTWISE_FACTS,
    c_expr="{0} / {1}",
    out_forward=ufunc_forward("divide"),
    out_vjp=(UfuncVJP("divide", 1), _div_b_out),
)
def _div(xp, a, b):
    """out = a / b.  da = g / b, db = -g * a / b**2."""
    return a / b


@_div.vjp
def _div_vjp(xp, g, out, a, b):
    return unbroadcast(xp, g / b, a.shape), unbroadcast(xp, -g * out / b, b.shape)


@op(
    "neg",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="-{0}",
    reads_output=False,
    output_overwritable=True,
    unread_inputs=(0,),
    out_forward=ufunc_forward("negative"),
    out_vjp=(NEGATE,),
)
def _neg(xp, a):
    """out = -a.  da = -g."""
    return -a


@_neg.vjp
def _neg_vjp(xp, g, out, a):
    return (-g,)


def _batch_matmul(attrs: dict, in_ndims: list, stacked: list):
    """Unchanged when both operands are matrices (or stacks of them), unless a stacked
    right operand would meet an unstacked left one of another rank."""
    left, right = in_ndims
    if min(left, right) < 2 or (stacked[1] and not stacked[0] and right != 2):
        return None
    return "same", attrs


def _matmul_out(ctx, out, a, b):
    """Forward kernel: a (..., K) @ b (K, N) as one 2-D product over a's rows where it can."""
    m = ctx.m
    if b.ndim == 2 and a.ndim > 2 and contiguous(out):
        out2 = rows(out)
        if contiguous(a):
            return product(m, rows(a), b, out2)
        return lambda: m.matmul(rows(m.ascontiguousarray(a)), b, out=out2)
    return product(m, a, b, out)


def _matmul_vjp_kernel(ctx, position, dest, add, g, out, ins, bt=None):
    """da = g @ b^T (b a matrix; `bt` holds b^T if given); db = a^T @ g summed over
    leading axes (one GEMM)."""
    m, (a, b) = ctx.m, ins
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


@op(
    "matmul",
    2,
    batch=_batch_matmul,
    reads_output=False,
    output_overwritable=True,
    other_operand=True,
    out_forward=_matmul_out,
    vjp_kernel=_matmul_vjp_kernel,
    vjp_transposed_right=True,
)
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
# tanh and sigmoid have a local derivative f(y) of their output alone: the reference VJP is
# g * local(xp, y), the plan's out= VJP is local_out then one multiply, and the plan computes
# local_out for all steps at once before backward (`plan.local_factors`). The two forms are
# the same arithmetic in the same order, so the interpreter and the plan agree bit for bit.


def _tanh_local(xp, y):
    return 1 - y * y


def _tanh_local_out(m, o, y):
    m.multiply(y, y, out=o)
    m.subtract(1, o, out=o)


@op(
    "tanh",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="tanh({0})",
    unread_inputs=(0,),
    local=_tanh_local,
    local_out=_tanh_local_out,
    local_c_expr="({t})1 - {0} * {0}",
    local_in_place=True,
    out_may_alias_input=True,
    out_forward=ufunc_forward("tanh"),
)
def _tanh(xp, a):
    """out = tanh(a).  da = g * (1 - out**2)."""
    return xp.tanh(a)


def _sigmoid_local(xp, y):
    return (1 - y) * y


def _sigmoid_local_out(m, o, y):
    m.subtract(1, y, out=o)
    m.multiply(o, y, out=o)


def _sigmoid_out(ctx, out, a):
    """Forward kernel: `ctx.expit` (CuPy's, one fused kernel) where there is one, else the
    tanh form (NumPy: four vectorised calls)."""
    if ctx.expit is not None:
        return partial(ctx.expit, a, out=out)
    m = ctx.m

    def run():  # 1/(1+exp(-a)) = (1 + tanh(a/2)) / 2, without overflow
        m.multiply(a, 0.5, out=out)
        m.tanh(out, out=out)
        m.multiply(out, 0.5, out=out)
        m.add(out, 0.5, out=out)

    return run


@op(
    "sigmoid",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="({t})1 / (({t})1 + exp(-{0}))",
    unread_inputs=(0,),
    local=_sigmoid_local,
    local_out=_sigmoid_local_out,
    local_c_expr="(({t})1 - {0}) * {0}",
    out_may_alias_input=True,  # `_sigmoid_out`: its first call reads a, the rest only out
    out_forward=_sigmoid_out,
)
def _sigmoid(xp, a):
    """out = 1 / (1 + exp(-a)), computed without overflow.  da = g * out * (1 - out).

    A primitive rather than a composite because exp(-a) overflows for a << 0.
    """
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _relu_vjp_out(m, o, g, out, a):
    m.multiply(g, a > 0, out=o)


@op(
    "relu",
    1,
    **ELEMENTWISE_FACTS,
    # NaN stays NaN (as np.maximum and torch.relu): a blow-up must not turn into zeros
    c_expr="{0} <= ({t})0 ? ({t})0 : {0}",
    out_forward=lambda ctx, out, a: partial(ctx.m.maximum, a, 0, out=out),
    out_vjp=(_relu_vjp_out,),
)
def _relu(xp, a):
    """out = max(a, 0), NaN where a is NaN.  da = g * [a > 0]."""
    return xp.where(a <= 0, xp.zeros_like(a), a)  # NaN <= 0 is false


@_relu.vjp
def _relu_vjp(xp, g, out, a):
    return (xp.where(a > 0, g, xp.zeros_like(g)),)


# exp's derivative is its output too, but as a local factor it would be y itself: nothing to
# compute ahead, so it has no `local`, just the one multiply.
@op(
    "exp",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="exp({0})",
    out_forward=ufunc_forward("exp"),
    out_vjp=(UfuncVJP("multiply", "out"),),
)
def _exp(xp, a):
    """out = exp(a).  da = g * out."""
    return xp.exp(a)


@_exp.vjp
def _exp_vjp(xp, g, out, a):
    return (g * out,)


@op(
    "log",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="log({0})",
    out_forward=ufunc_forward("log"),
    out_vjp=(UfuncVJP("divide", 0),),
)
def _log(xp, a):
    """out = log(a), a > 0.  da = g / a."""
    return xp.log(a)


@_log.vjp
def _log_vjp(xp, g, out, a):
    return (g / a,)


# ---- structure -------------------------------------------------------------------------------


@op("concat", VARIADIC, ("axis",), batch=batch_axis)
def _concat(xp, *xs, axis=-1):
    """out = [x1, x2, ...] joined along `axis`.  dxi = the slice of g that xi filled."""
    return xp.concat(xs, axis=axis)


@_concat.vjp
def _concat_vjp(xp, g, out, *xs, axis=-1):
    axis = norm_axis(axis, g.ndim)
    grads, start = [], 0
    for x in xs:
        stop = start + x.shape[axis]
        grads.append(take_range(g, start, stop, axis))
        start = stop
    return tuple(grads)


def _slice_index(shape: tuple, start=0, stop=None, axis=-1) -> tuple:
    """The view `slice` takes of an input of `shape` (its forward and the plan's layout)."""
    stop = shape[norm_axis(axis, len(shape))] if stop is None else stop
    return range_index(shape, start, stop, axis)


@op("slice", 1, ("start", "stop", "axis"), batch=batch_axis, view=_slice_index)
def _slice(xp, a, start=0, stop=None, axis=-1):
    """out = a[start:stop] along `axis`.  da = g placed at [start, stop), zeros elsewhere."""
    return a[_slice_index(a.shape, start, stop, axis)]


@_slice.vjp
def _slice_vjp(xp, g, out, a, start=0, stop=None, axis=-1):
    return (pad_range(xp, g, start, a.shape[norm_axis(axis, a.ndim)], axis),)


def _chunk_index(shape: tuple, index=0, parts=1, axis=-1) -> tuple:
    """The view `chunk` takes of an input of `shape` (its forward and the plan's layout)."""
    size = shape[norm_axis(axis, len(shape))] // parts
    return range_index(shape, index * size, (index + 1) * size, axis)


@op("chunk", 1, ("index", "parts", "axis"), batch=batch_axis, view=_chunk_index)
def _chunk(xp, a, index=0, parts=1, axis=-1):
    """out = the index-th of `parts` equal pieces of a along `axis` (what `split` lowers to).

    da = g placed at that piece, zeros elsewhere.
    """
    return a[_chunk_index(a.shape, index, parts, axis)]


@_chunk.vjp
def _chunk_vjp(xp, g, out, a, index=0, parts=1, axis=-1):
    size = a.shape[norm_axis(axis, a.ndim)] // parts
    return (pad_range(xp, g, index * size, a.shape[norm_axis(axis, a.ndim)], axis),)


@op("sum", 1, ("axis", "keepdims"), batch=batch_whole)
def _sum(xp, a, axis=None, keepdims=False):
    """out = sum of a over `axis` (all axes if None).  da = g broadcast back over `axis`."""
    return xp.sum(a, axis=axis, keepdims=keepdims)


def _expand_reduced(xp, g, a, axis, keepdims):
    if axis is None:
        return xp.reshape(g, (1,) * a.ndim)
    if keepdims:
        return g
    axes = {norm_axis(x, a.ndim) for x in ((axis,) if isinstance(axis, int) else axis)}
    return xp.reshape(g, tuple(1 if i in axes else n for i, n in enumerate(a.shape)))


@_sum.vjp
def _sum_vjp(xp, g, out, a, axis=None, keepdims=False):
    return (xp.broadcast_to(_expand_reduced(xp, g, a, axis, keepdims), a.shape),)


@op("mean", 1, ("axis", "keepdims"), batch=batch_whole, averages=True)
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


def _where_out(ctx, out, cond, a, b):
    """Forward kernel: b, then a copied over it where cond holds."""
    m = ctx.m

    def run():
        m.copyto(out, b)
        m.copyto(out, a, where=cond)

    return run


def _where_a_out(m, o, g, out, c, a, b):
    m.multiply(g, c, out=o)


def _where_b_out(m, o, g, out, c, a, b):
    m.multiply(g, ~c, out=o)


# Not `sibling_merge`: the layout turns a masked state update whose mask is always true into
# an alias of its input, which a member of a merged where (a column slice) would not be.
@op(
    "where",
    3,
    elementwise=True,
    c_expr="{0} ? {1} : {2}",
    reads_output=False,
    unread_inputs=(1, 2),
    out_forward=_where_out,
    out_vjp=(None, _where_a_out, _where_b_out),
)
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
