"""Array API compositions the op groups share (written against `xp`, like the ops)."""

from __future__ import annotations

from seqgraph.engine import xp_extra
from seqgraph.engine.ops.table import norm_axis


def take_range(x, start: int, stop: int, axis: int):
    """x[start:stop] along `axis` (a view)."""
    return x[range_index(x.shape, start, stop, axis)]


def range_index(shape: tuple, start: int, stop: int, axis: int) -> tuple:
    """The index of [start, stop) along `axis` of an array of `shape`, one entry per axis."""
    index = [slice(None)] * len(shape)
    index[norm_axis(axis, len(shape))] = slice(start, stop)
    return tuple(index)


def pad_range(xp, g, start: int, total: int, axis: int):
    """Place g at [start, start + len) of a zero array of length `total` along `axis`."""
    axis = norm_axis(axis, g.ndim)
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


def logsumexp(xp, a):
    """log(sum(exp(a))) over the last axis, kept, computed from the row maximum (no overflow)."""
    top = xp.max(a, axis=-1, keepdims=True)
    return top + xp.log(xp.sum(xp.exp(a - top), axis=-1, keepdims=True))
