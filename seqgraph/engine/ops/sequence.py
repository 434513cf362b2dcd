"""Sequence ops of the op table (registered into `ops.OPS`): `stack`, the masked softmax of
attention over a source's real steps, the max over a padded sequence's real steps (pooling
over time) and the CTC loss.

CTC (Graves et al., 2006) scores an unaligned label sequence against per-frame logits by
summing over every alignment: the labels interleaved with blanks (id 0), l' = (0, l1, 0, l2,
..., lS, 0), of length L = 2S + 1. The forward (alpha) and backward (beta) recursions run in
log space, vectorised over the batch and the L positions, with a Python loop over time only.
Log-probabilities that cannot happen are a large negative number (`NEG`) instead of -inf, so
no step ever computes inf - inf; a sequence whose input is too short for its labels (fewer
frames than labels plus repeated neighbours) gets a loss of +inf and a zero gradient.
"""

from __future__ import annotations

from seqgraph.engine import xp_extra
from seqgraph.engine.ops.arrays import logsumexp
from seqgraph.engine.ops.table import VARIADIC, op

NEG = -1e30  # log(0) stand-in: finite in float32 and float64, exp() of it is exactly 0


def _stack_vjp_kernel(ctx, position, dest, add, g, out, ins, bt=None, axis=1):
    """dest (+)= the `position`-th slice of g: one view made once, not the reference VJP's
    slices of every input at each input's call (T^2 views for T stacked steps)."""
    part = g[(slice(None),) * (axis % g.ndim) + (position, ...)]
    if tuple(part.shape) != tuple(dest.shape):
        return None  # a broadcast input: the reference sums it down
    m = ctx.m
    if add:
        return lambda: m.add(dest, part, out=dest)
    return lambda: m.copyto(dest, part)


@op("stack", VARIADIC, ("axis",), vjp_kernel=_stack_vjp_kernel)
def _stack(xp, *xs, axis=1):
    """out = x1, x2, ... stacked along a new axis `axis` (per-step (B, C) -> (B, T, C)).

    dxi = the i-th slice of g along `axis`.
    """
    return xp.stack(xs, axis=axis)


@_stack.vjp
def _stack_vjp(xp, g, out, *xs, axis=1):
    axis = axis % g.ndim
    lead = (slice(None),) * axis
    return tuple(g[lead + (i, ...)] for i in range(len(xs)))


@op("masked_softmax", 2, rowwise=True)
def _masked_softmax(xp, a, mask):
    """out = softmax of a over the last axis among the positions where `mask` holds; the
    others get exactly 0 (attention over the real steps of a padded source):
    out_s = [mask_s] exp(a_s - m) / sum_r [mask_r] exp(a_r - m), m the largest unmasked a.
    A row with no unmasked position is all zeros.

    da = out * (g - sum(g * out)) (0 at masked positions, since out is); mask gets None.

    A primitive, not where(mask, a, -inf) then a softmax: the padded scores may be anything
    (garbage from padded encoder steps), must neither set the max nor overflow, and -inf
    would turn into NaN in 0 * inf of the composite's VJP.
    """
    low = xp.min(a, axis=-1, keepdims=True)
    kept = xp.where(mask, a, low)  # padded scores never set the max
    e = xp.where(mask, xp.exp(kept - xp.max(kept, axis=-1, keepdims=True)), xp.zeros_like(a))
    total = xp.sum(e, axis=-1, keepdims=True)
    return e / xp.where(total > 0, total, xp.ones_like(total))


@_masked_softmax.vjp
def _masked_softmax_vjp(xp, g, out, a, mask):
    return (out * (g - xp.sum(g * out, axis=-1, keepdims=True)), None)


@op("masked_max", 2, ("axis",))
def _masked_max(xp, a, mask, axis=1):
    """out = the max of a along `axis` among the positions where `mask` (boolean, broadcast
    to a) holds: max pooling over the real steps of padded sequences, a (B, T, H) and mask
    (B, T, 1) giving (B, H). A slice with no such position is 0.

    da = g / k at the k unmasked positions of each slice that hold its max, 0 everywhere
    else, masked positions included (a subgradient: ties share g evenly, as torch.amax, and
    as central differences see a two-way tie); mask gets None.

    A primitive, not max(where(mask, a, -inf)): padded steps hold anything (the state
    carried through them), must neither win the max nor get a gradient, and a composite
    would need -inf, whose 0 * inf in a VJP is NaN.
    """
    mask = _lead(xp, mask, a.ndim)
    kept = xp.where(mask, a, _full(xp, (), -xp.inf, a))
    # `any` reads the mask before it is broadcast: (B, 1) rather than (B, H) of work
    return xp.where(xp.any(mask, axis=axis), xp.max(kept, axis=axis), _full(xp, (), 0.0, a))


@_masked_max.vjp
def _masked_max_vjp(xp, g, out, a, mask, axis=1):
    hit = (a == xp.expand_dims(out, axis=axis)) & _lead(xp, mask, a.ndim)
    ties = xp.sum(xp.astype(hit, a.dtype), axis=axis, keepdims=True)
    share = xp.expand_dims(g, axis=axis) / xp.where(ties > 0, ties, _full(xp, (), 1.0, a))
    return xp.where(hit, share, _full(xp, (), 0.0, a)), None


def _lead(xp, mask, ndim: int):
    """`mask` with leading axes of length 1 up to `ndim`, so `axis` counts as in a."""
    return xp.reshape(mask, (1,) * (ndim - mask.ndim) + tuple(mask.shape))


# ---- CTC helpers -----------------------------------------------------------------------------


def _full(xp, shape, value, like):
    return xp.full(shape, value, dtype=like.dtype, device=xp_extra.device_of(like))


def _shift(xp, a, k: int, fill):
    """a moved k places along the last axis: out[..., s] = a[..., s - k] (k < 0: s + |k|),
    with `fill` where that runs off the end."""
    n = a.shape[-1]
    width = min(abs(k), n)
    pad = _full(xp, a.shape[:-1] + (width,), fill, a)
    if k > 0:
        return xp.concat([pad, a[..., : n - width]], axis=-1)
    return xp.concat([a[..., width:], pad], axis=-1)


def _lse3(xp, a, b, c):
    """log(exp(a) + exp(b) + exp(c)) elementwise, stable (all finite, so no inf - inf)."""
    top = xp.maximum(xp.maximum(a, b), c)
    return top + xp.log(xp.exp(a - top) + xp.exp(b - top) + xp.exp(c - top))


def _extended(xp, labels):
    """(B, 2S + 1) ids: the labels with a blank before, between and after them."""
    size, length = labels.shape
    pairs = xp.reshape(xp.stack([xp.zeros_like(labels), labels], axis=-1), (size, 2 * length))
    return xp.concat([pairs, _full(xp, (size, 1), 0, labels)], axis=-1)


def _tables(xp, logits, labels, label_lengths):
    """log-softmax (B,T,C), one-hot of l' (B,L,C), emission log-probs (B,T,L), the skip mask
    (B,L: s may be entered from s-2, a label unlike the one before it) and the end mask
    (B,L: the two states a full alignment may finish in)."""
    logp = logits - logsumexp(xp, logits)
    ext = _extended(xp, labels)
    hot = xp_extra.one_hot(xp, ext, logits.shape[-1], logits.dtype)
    emit = xp.matmul(logp, xp.matrix_transpose(hot))
    s = xp.arange(ext.shape[1], device=xp_extra.device_of(ext))
    skip = (s % 2 == 1) & (s >= 2) & (ext != _shift(xp, ext, 2, -1))
    last = 2 * label_lengths[:, None]
    end = (s == last) | (s == last - 1)
    return logp, hot, emit, skip, end


def _alphas(xp, emit, skip, input_lengths):
    """Forward variables log alpha_t(s) for every t, (B, T, L); frozen after each input's end.
    Starting from a virtual state before s = 0 makes t = 0 an ordinary step."""
    s = xp.arange(emit.shape[2], device=xp_extra.device_of(emit))
    alpha = xp.where(s == 0, _full(xp, (), 0.0, emit), _full(xp, (), NEG, emit))
    alpha = xp.broadcast_to(alpha, (emit.shape[0], emit.shape[2]))
    out = []
    for t in range(emit.shape[1]):
        skipped = xp.where(skip, _shift(xp, alpha, 2, NEG), _full(xp, (), NEG, emit))
        new = _lse3(xp, alpha, _shift(xp, alpha, 1, NEG), skipped) + emit[:, t, :]
        alpha = xp.where((t < input_lengths)[:, None], new, alpha)
        out.append(alpha)
    return xp.stack(out, axis=1)


def _betas(xp, emit, skip, end, input_lengths):
    """Backward variables log beta_t(s), (B, T, L): the log-probability of finishing from
    state s at frame t, emissions after t only (so alpha + beta counts frame t once)."""
    init = xp.where(end, _full(xp, (), 0.0, emit), _full(xp, (), NEG, emit))
    skip_ahead = _shift(xp, skip, -2, False)
    beta, out = init, [None] * emit.shape[1]
    for t in reversed(range(emit.shape[1])):
        if t + 1 < emit.shape[1]:
            nxt = beta + emit[:, t + 1, :]
            skipped = xp.where(skip_ahead, _shift(xp, nxt, -2, NEG), _full(xp, (), NEG, emit))
            beta = _lse3(xp, nxt, _shift(xp, nxt, -1, NEG), skipped)
        beta = xp.where((t >= input_lengths - 1)[:, None], init, beta)
        out[t] = beta
    return xp.stack(out, axis=1)


def _log_likelihood(xp, alphas, end):
    """log p(labels | input) per sequence from the last alpha (frozen at each input's end)."""
    final = xp.where(end, alphas[:, -1, :], _full(xp, (), NEG, alphas))
    return logsumexp(xp, final)[:, 0]


# ---- the op ----------------------------------------------------------------------------------


@op("ctc", 4)
def _ctc(xp, logits, labels, input_lengths, label_lengths):
    """out[b] = -log sum over alignments pi of labels[b, :S_b] in T_b frames of
    prod_t softmax(logits[b, t])[pi_t]  (CTC negative log-likelihood, blank = 0).

    logits (B, T, C); labels (B, S) ids in 1..C-1, padded; input_lengths T_b (B,);
    label_lengths S_b (B,), 0 allowed (then out = -sum_t log softmax(logits)[t, 0]).
    With log alpha/beta from the forward-backward recursions, the posterior occupancy is
    gamma[b,t,c] = sum over positions s of l' with l'_s = c of exp(alpha_t(s) + beta_t(s) + out).
    dlogits[b,t] = g[b] (softmax(logits[b,t]) - gamma[b,t]) for t < T_b, 0 after; the int
    inputs get None. +inf (with zero gradient) where T_b is too short for the labels.
    """
    _, _, emit, skip, end = _tables(xp, logits, labels, label_lengths)
    log_likelihood = _log_likelihood(xp, _alphas(xp, emit, skip, input_lengths), end)
    return xp.where(log_likelihood < NEG / 2, _full(xp, (), xp.inf, logits), -log_likelihood)


@_ctc.vjp
def _ctc_vjp(xp, g, out, logits, labels, input_lengths, label_lengths):
    logp, hot, emit, skip, end = _tables(xp, logits, labels, label_lengths)
    alphas = _alphas(xp, emit, skip, input_lengths)
    # An infeasible row (out = +inf) has no complete path: take log Z = 0 so exp() stays 0.
    log_z = xp.where(xp.isfinite(out), -out, _full(xp, (), 0.0, out))[:, None, None]
    occupancy = xp.exp(alphas + _betas(xp, emit, skip, end, input_lengths) - log_z)
    t = xp.arange(logits.shape[1], device=xp_extra.device_of(input_lengths))
    live = (t[None, :] < input_lengths[:, None]) & xp.isfinite(out)[:, None]
    scale = xp.where(live, g[:, None], _full(xp, (), 0.0, g))[:, :, None]
    return scale * (xp.exp(logp) - xp.matmul(occupancy, hot)), None, None, None
