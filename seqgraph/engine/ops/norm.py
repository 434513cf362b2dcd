"""Square roots and layer normalisation of the op table (registered into `ops.OPS`).

`sqrt` and `rsqrt` let a user cell write a normalisation of its own; `layer_norm` is the
normalisation Ba, Kiros & Hinton (2016) put in recurrent cells, a primitive because its
closed-form VJP is one line where the composite mean/sub/mul/rsqrt graph takes a dozen nodes
per step. Gain and bias are left to the equations (`layer_norm(z) * gain + bias`), so a cell
decides whether and where it has them.
"""

from __future__ import annotations

from seqgraph.engine.ops.core import ELEMENTWISE_FACTS
from seqgraph.engine.ops.table import op, ufunc_forward

# torch.nn.functional.layer_norm's default: large enough that a constant row (variance 0)
# normalises to 0 instead of dividing by zero, small enough to leave real rows alone.
LAYER_NORM_EPS = 1e-5

# Both square roots have a local derivative of their output alone (d sqrt = 1/(2y),
# d rsqrt = -y^3/2), so the plan computes it for all steps before backward, like tanh's. The
# reference `local` and the plan's `local_out` are the same arithmetic in the same order.


def _sqrt_local(xp, y):
    return 1 / (2 * y)


def _sqrt_local_out(m, o, y):
    m.multiply(y, 2, out=o)
    m.divide(1, o, out=o)


@op(
    "sqrt",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="sqrt({0})",
    unread_inputs=(0,),
    local=_sqrt_local,
    local_out=_sqrt_local_out,
    local_c_expr="({t})1 / ({0} * ({t})2)",
    local_in_place=True,
    out_forward=ufunc_forward("sqrt"),
)
def _sqrt(xp, a):
    """out = sqrt(a), a > 0.  da = g / (2 * out)."""
    return xp.sqrt(a)


def _rsqrt_local(xp, y):
    return y * y * y * -0.5


def _rsqrt_local_out(m, o, y):
    m.multiply(y, y, out=o)
    m.multiply(o, y, out=o)
    m.multiply(o, -0.5, out=o)


def _rsqrt_out(ctx, out, a):
    """Forward kernel: sqrt, then its reciprocal in place (the reference's two steps)."""
    m = ctx.m

    def run():
        m.sqrt(a, out=out)
        m.divide(1, out, out=out)

    return run


@op(
    "rsqrt",
    1,
    **ELEMENTWISE_FACTS,
    c_expr="({t})1 / sqrt({0})",
    unread_inputs=(0,),
    local=_rsqrt_local,
    local_out=_rsqrt_local_out,
    local_c_expr="{0} * {0} * {0} * ({t})-0.5",
    out_forward=_rsqrt_out,
)
def _rsqrt(xp, a):
    """out = 1 / sqrt(a), a > 0.  da = g * (-out**3 / 2)."""
    return 1 / xp.sqrt(a)


def _centered(xp, a, eps):
    """a - mean(a) and 1 / sqrt(var(a) + eps) over the last axis (biased variance); the
    second kept as a column so it broadcasts over the row."""
    centered = a - xp.mean(a, axis=-1, keepdims=True)
    return centered, 1 / xp.sqrt(xp.mean(centered * centered, axis=-1, keepdims=True) + eps)


@op("layer_norm", 1, ("eps",), rowwise=True)
def _layer_norm(xp, a, eps=LAYER_NORM_EPS):
    """out = (a - mean(a)) / sqrt(var(a) + eps) over the last axis (biased variance, as
    torch.nn.functional.layer_norm; no gain or bias: the equations multiply and add those).

    da = (g - mean(g) - out * mean(g * out)) / sqrt(var(a) + eps), means over the last axis
    (the closed form: the gradient of a centred, scaled row, projected off out and 1).
    """
    centered, inverse_std = _centered(xp, a, eps)
    return centered * inverse_std


@_layer_norm.vjp
def _layer_norm_vjp(xp, g, out, a, eps=LAYER_NORM_EPS):
    mean_g = xp.mean(g, axis=-1, keepdims=True)
    mean_g_out = xp.mean(g * out, axis=-1, keepdims=True)
    return ((g - mean_g - out * mean_g_out) * _centered(xp, a, eps)[1],)
