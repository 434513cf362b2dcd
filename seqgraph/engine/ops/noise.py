"""Ops whose second input is noise the runtime draws, not a value the graph computes: dropout.

The mask is a leaf (like the data), filled per batch from (seed, step, node key) by
`seqgraph.runtime.masks`, so the op itself is a deterministic product: the interpreter, the
plan and finite differences all see the same function of `x`, and the plan batches it over
time like any elementwise op (a per-sequence mask is one leaf every step reads).
"""

from __future__ import annotations

from seqgraph.engine.ops.table import UfuncVJP, op, ufunc_forward, unbroadcast


@op(
    "dropout",
    2,
    elementwise=True,
    c_expr="{0} * {1}",
    reads_output=False,
    unread_inputs=(0,),
    out_forward=ufunc_forward("multiply"),
    out_vjp=(UfuncVJP("multiply", 1), None),
)
def _dropout(xp, x, mask):
    """out = x * mask, mask holding 0 (dropped) or 1/(1-p) (kept: inverted dropout, as
    torch.nn.Dropout, so evaluation needs no rescaling).  dx = g * mask; the mask, drawn by
    the runtime, gets no gradient."""
    return x * mask


@_dropout.vjp
def _dropout_vjp(xp, g, out, x, mask):
    return unbroadcast(xp, g * mask, x.shape), None
