"""Lookups and losses of the op table (registered into `ops.OPS`): embedding, argmax,
log-softmax, softmax cross-entropy and mean squared error."""

from __future__ import annotations

from seqgraph.engine import xp_extra
from seqgraph.engine.ops.core import op, unbroadcast


@op("embedding", 2)
def _embedding(xp, ids, W):
    """out[...] = W[ids[...]] (row gather).  dW = scatter-add of g's rows at ids (repeats add)."""
    rows = xp.take(W, xp.reshape(ids, (-1,)), axis=0)
    return xp.reshape(rows, tuple(ids.shape) + (W.shape[1],))


@_embedding.vjp
def _embedding_vjp(xp, g, out, ids, W):
    flat_g = xp.reshape(g, (-1, W.shape[1]))
    return None, xp_extra.scatter_add_rows(xp, xp.reshape(ids, (-1,)), flat_g, W.shape[0])


@op("argmax", 1)
def _argmax(xp, a):
    """out = index of the largest entry along the last axis.  Not differentiable: the gradient
    stops here (used to feed a model's own prediction back as the next input)."""
    return xp.argmax(a, axis=-1)


@_argmax.vjp
def _argmax_vjp(xp, g, out, a):
    return (None,)


def _logsumexp(xp, a):
    top = xp.max(a, axis=-1, keepdims=True)
    return top + xp.log(xp.sum(xp.exp(a - top), axis=-1, keepdims=True))


@op("log_softmax", 1)
def _log_softmax(xp, a):
    """out = a - logsumexp(a) over the last axis.  da = g - softmax(a) * sum(g).

    A primitive because the composite exp/sum/log overflows for large logits.
    """
    return a - _logsumexp(xp, a)


@_log_softmax.vjp
def _log_softmax_vjp(xp, g, out, a):
    return (g - xp.exp(out) * xp.sum(g, axis=-1, keepdims=True),)


@op("softmax_ce", 2)
def _softmax_ce(xp, logits, targets):
    """out[n] = logsumexp(logits[n]) - logits[n, targets[n]] (cross-entropy per row).

    dlogits = g[n] * (softmax(logits[n]) - onehot(targets[n])); targets get no gradient.
    A primitive for the same stability reason as log_softmax, and because its VJP is simple.
    """
    picked = xp.sum(logits * xp_extra.one_hot(xp, targets, logits.shape[-1], logits.dtype), axis=-1)
    return xp.reshape(_logsumexp(xp, logits), picked.shape) - picked


@_softmax_ce.vjp
def _softmax_ce_vjp(xp, g, out, logits, targets):
    probs = xp.exp(logits - _logsumexp(xp, logits))
    hot = xp_extra.one_hot(xp, targets, logits.shape[-1], logits.dtype)
    return g[..., None] * (probs - hot), None


@op("mse", 2)
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
