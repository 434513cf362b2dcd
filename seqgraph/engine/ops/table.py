"""The op record and the table that holds one per primitive.

An `Op` carries everything anyone knows about an op: its forward and VJP (the reference,
written against an array API namespace `xp`), and the facts the planner (`seqgraph.plan`)
reads instead of keeping op lists of its own: how the op batches over time, whether it is a
view, which values its VJP reads, its C expression for fused kernels, its local derivative and
its fast `out=` kernels. Most ops have none of the plan facts; the defaults say "nothing is
known", which is always safe (the planner falls back to the reference forward and VJP).

The fast kernels take a duck-typed `ctx` (the plan's `kernels.Context`: `ctx.m` the raw array
module with `out=` ufuncs, `ctx.tmp` scratch buffers, ...), so the engine never imports plan.
A kernel is a closure with no arguments, built once when a plan is built; one ufunc call is a
`functools.partial`, which Python calls from C with no frame of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

VARIADIC = -1
NEGATE = "negate"  # an `out_vjp` entry: the contribution is -g


@dataclass(frozen=True)
class Op:
    """One primitive. Only the first five fields are required; see the module docstring."""

    name: str
    forward: Callable[..., Any]  # (xp, *inputs, **attrs) -> out
    vjp: Callable[..., tuple]  # (xp, g, out, *inputs, **attrs) -> one item per input
    arity: int  # number of array inputs, or VARIADIC
    doc: str  # both formulas: the forward and the VJP
    attrs: tuple[str, ...] = ()  # the attribute names the op accepts

    # ---- shape: how the op runs over inputs stacked along a new leading time axis ----
    elementwise: bool = False  # out[i] reads each input at i only (broadcasting)
    rowwise: bool = False  # works along the last axis only; every row on its own
    # (attrs, in_ndims, stacked) -> (kind, attrs) or None; see `batch_same` and friends.
    # Elementwise and row-wise ops get `batch_same` unless they say otherwise.
    batch: Callable[..., tuple | None] | None = None
    view: Callable[..., tuple] | None = None  # (shape, **attrs) -> the index out = a[index]
    # A whole reduction that divides its sum by the number of entries (mean): batched as
    # "reduce_rest", each step's sum is scaled by 1/n, forward and backward.
    averages: bool = False

    # ---- what the VJP reads (buffer sharing and reuse) ----
    pass_through: tuple[int, ...] = ()  # input positions whose gradient is g (same shape)
    # Variadic, out = the sum of its inputs, each input's gradient g: summing every step of a
    # class, its VJP is one copy of g into the class's whole gradient buffer (addn).
    variadic_sum: bool = False
    in_place: bool = False  # may write over the buffer of an input it alone reads: no VJP
    # reads that input (its own reads none: `unread_inputs` is every position)
    reads_output: bool = True  # False: the VJP never reads `out` (buffer reuse)
    # The op's output may be the input an `in_place` reader writes over. Needs reads_output
    # False; mul and where would qualify too, but the in-place chains were built and measured
    # on these (add, sub, neg, matmul), so the others stay out and plans stay as they were.
    output_overwritable: bool = False
    # Input positions the VJP never reads; a safe subset (exp's input is unread, not listed).
    unread_inputs: tuple[int, ...] = ()
    other_operand: bool = False  # input i is read only to differentiate input 1 - i

    # ---- kernels ----
    c_expr: str | None = None  # C expression of the fused GPU kernel: {0}.. inputs, {t} type
    sibling_merge: bool = False  # side-by-side column blocks may join into one op
    # Local derivative dy/dx as a function of y alone, known before backward starts, so the
    # plan computes it for all steps at once (`plan.local_factors`). `local(xp, y)` is the
    # reference form (the VJP is g * local(y)); `local_out(m, o, y)` writes the same into o.
    local: Callable[..., Any] | None = None
    local_out: Callable[..., Any] | None = None
    # `local_out` as a C expression over y ({0}) and the C type ({t}), the same arithmetic in
    # the same order (so the same bits): the factors of all steps then run as one compiled
    # loop (`plan.backward`, `plan.ckernels.chains`) rather than two or three NumPy passes each.
    local_c_expr: str | None = None
    # local_out(m, y, y) is right too: each of its calls reads y before it writes over it,
    # so the factor may take the place of y once nothing else reads y (`plan.local_factors`)
    local_in_place: bool = False
    # `out_forward(ctx, out, a)` is right with `out` the very buffer of `a`: each of its calls
    # reads a at an element before it writes that element (tanh, sigmoid), so the plan may put
    # an activation in its pre-activation's place (`plan.layout`, `inline_derivatives`)
    out_may_alias_input: bool = False
    # Input positions `out_forward` may write over when the plan says nothing reads them
    # afterwards (their address in `ctx.dead_inputs`): softmax_ce keeps exp(z - max) in z.
    forward_overwrites: tuple[int, ...] = ()
    # (ctx, out, *inputs) -> a kernel writing the forward into `out`, or None (the reference
    # forward runs and its result is copied into `out`).
    out_forward: Callable[..., Any] | None = None
    # One entry per input, each writing that input's contribution at g's (broadcast) shape:
    # None (it is g), NEGATE (-g), a `UfuncVJP` (one call), or fn(m, o, g, out, *inputs).
    out_vjp: tuple | None = None
    # (ctx, position, dest, add, g, out, inputs, bt, **attrs) -> a kernel writing (add=False)
    # or adding the gradient of input `position` into dest, or None; for ops `out_vjp` cannot
    # express.
    vjp_kernel: Callable[..., Any] | None = None
    # Its vjp_kernel for input 0 multiplies g by input 1 transposed, and takes `bt`, a
    # contiguous copy of that transpose, when the plan keeps one (matmul by a weight matrix).
    vjp_transposed_right: bool = False


OPS: dict[str, Op] = {}


def op(name: str, arity: int, attrs: tuple[str, ...] = (), **facts):
    """Register `forward` (the decorated function) with `facts` (fields of `Op`); the VJP is
    given by `.vjp`, or follows from `local` (then it is g * local(out))."""

    def register(forward):
        if (facts.get("elementwise") or facts.get("rowwise")) and "batch" not in facts:
            facts["batch"] = batch_same
        local = facts.get("local")
        vjp = (lambda xp, g, out, a: (g * local(xp, out),)) if local is not None else no_vjp
        if local is not None and facts.get("local_out") is not None and "out_vjp" not in facts:
            facts["out_vjp"] = (local_vjp_kernel(facts["local_out"]),)
        doc = (forward.__doc__ or "").strip()
        OPS[name] = Op(name, forward, vjp, arity, doc, attrs, **facts)

        def set_vjp(vjp):
            OPS[name] = replace(OPS[name], vjp=vjp)
            return vjp

        forward.vjp = set_vjp
        return forward

    return register


def no_vjp(xp, g, out, *inputs, **attrs) -> tuple:
    """The VJP of an op that has none yet: no gradient for any input, so a loss that depends
    on one raises `MissingVJPError` naming the op and input (never a TypeError)."""
    return (None,) * len(inputs)


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


def norm_axis(axis: int, ndim: int) -> int:
    """`axis` as a non-negative index into `ndim` axes."""
    return axis % ndim


# ---- batch rules: (attrs, in_ndims, stacked) -> (kind, attrs) or None -----------------------
# kind "same" runs the op unchanged on the stacked inputs; "reduce_rest" reduces each step's
# value to one number. `in_ndims` are the per-step input ranks, `stacked` which inputs vary.


def batch_same(attrs: dict, in_ndims: list, stacked: list):
    """Unchanged: an elementwise or row-wise op never looks at the leading axes."""
    return "same", attrs


def batch_axis(attrs: dict, in_ndims: list, stacked: list):
    """Unchanged, with a non-negative `axis` counted from the end (a new axis goes in front).
    Several inputs (concat) batch only when every one is stacked: an input shared by all
    steps keeps its rank, so it would not line up with the stacked gradient's axis."""
    if len(stacked) > 1 and not all(stacked):
        return None
    axis = attrs.get("axis", -1)
    return "same", {**attrs, "axis": axis - max(in_ndims) if axis >= 0 else axis}


def batch_whole(attrs: dict, in_ndims: list, stacked: list):
    """A reduction over every axis becomes one per step; other reductions do not batch."""
    if attrs.get("axis") is None and not attrs.get("keepdims"):
        return "reduce_rest", attrs
    return None


# ---- fast kernels shared by several records --------------------------------------------------


def ufunc_forward(name: str):
    """out_forward: the one ufunc call `m.<name>(*inputs, out=out)`."""
    return lambda ctx, out, *ins: partial(getattr(ctx.m, name), *ins, out=out)


@dataclass(frozen=True)
class UfuncVJP:
    """An `out_vjp` entry that is one call: `m.<ufunc>(g, operand, out=o)`, operand an input
    position or "out". Written straight into a gradient buffer, it is a `partial` of the
    ufunc; otherwise `__call__` runs it into a scratch buffer."""

    ufunc: str
    operand: int | str

    def __call__(self, m, o, g, out, *ins):
        getattr(m, self.ufunc)(g, out if self.operand == "out" else ins[self.operand], out=o)


def local_vjp_kernel(local_out):
    """out_vjp entry g * f(y) from the `local_out` form f: the derivative written once."""

    def vjp(m, o, g, out, a):
        local_out(m, o, out)
        m.multiply(o, g, out=o)

    return vjp
