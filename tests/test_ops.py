"""The op table, tested from one table of rows: every op's forward against a NumPy reference,
its VJP against float64 central finite differences (per element: the shapes are tiny), and the
same row on array_api_strict to prove the op uses only the array API standard. The same rows
check that each record's plan facts agree with its behaviour: views, local derivatives, the
fast out= kernels, the values its VJP never reads, and how it batches over time."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from support import record

from seqgraph.engine import ops

EPS = 1e-6


# ---- input domains ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Real:
    """Floats drawn from N(0, 1): differentiable."""

    shape: tuple
    differentiable = True

    def draw(self, rng):
        return rng.normal(size=self.shape)


@dataclass(frozen=True)
class Positive(Real):
    """Floats in [0.5, 2] (log, and divisors kept away from zero)."""

    def draw(self, rng):
        return rng.uniform(0.5, 2.0, size=self.shape)


@dataclass(frozen=True)
class AwayFromZero(Real):
    """Floats with |x| in [0.2, 2], random sign (relu: central differences never straddle 0)."""

    def draw(self, rng):
        return rng.uniform(0.2, 2.0, size=self.shape) * rng.choice([-1.0, 1.0], size=self.shape)


@dataclass(frozen=True)
class Fixed:
    """Exact given values, e.g. integer ids with repeats; never differentiable."""

    value: Any
    differentiable = False

    def draw(self, rng):
        return np.asarray(self.value)


@dataclass(frozen=True)
class Given(Real):
    """Exact given floats, differentiable (a case random draws would rarely hit)."""

    value: Any = None

    def draw(self, rng):
        return np.array(self.value, dtype=np.float64)


@dataclass(frozen=True)
class Ids:
    """Random integer ids in [0, n): not differentiable."""

    shape: tuple
    n: int
    differentiable = False

    def draw(self, rng):
        return rng.integers(0, self.n, size=self.shape)


@dataclass(frozen=True)
class Mask:
    """A random boolean condition: not differentiable."""

    shape: tuple
    differentiable = False

    def draw(self, rng):
        return rng.random(self.shape) < 0.5


@dataclass(frozen=True)
class DropMask:
    """A fixed inverted-dropout mask (0, or 1/(1-p) where kept), as the runtime feeds it: not
    differentiable."""

    shape: tuple
    p: float
    differentiable = False

    def draw(self, rng):
        return (rng.random(self.shape) >= self.p) / (1 - self.p)


@dataclass(frozen=True)
class NoGrad(Real):
    """Floats the op reads but does not differentiate (argmax): its VJP must give None."""

    differentiable = False


def conv_ref(x, w, padding):
    """Direct 2-D cross-correlation, pixel by pixel (the slow, obvious reference)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = x.shape
    k, _, kh, kw = w.shape
    out = np.zeros((n, k, h - kh + 1, wd - kw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = np.einsum("ncab,kcab->nk", x[:, :, i : i + kh, j : j + kw], w)
    return out


def conv_transpose_ref(x, w, stride, padding):
    """Transposed convolution pixel by pixel: each input pixel scatters x * W into the output
    at stride steps, then `padding` is cropped from every side (the obvious reference)."""
    n, _, h, wd = x.shape
    _, k, kh, kw = w.shape
    out = np.zeros((n, k, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            block = np.einsum("nc,ckab->nkab", x[:, :, i, j], w)
            out[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += block
    return out[:, :, padding : out.shape[2] - padding, padding : out.shape[3] - padding]


def _log_softmax(a):
    shifted = a - a.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def layer_norm_ref(a, eps=1e-5):
    """Mean 0 and biased variance 1 over the last axis, as torch.nn.functional.layer_norm."""
    return (a - a.mean(axis=-1, keepdims=True)) / np.sqrt(a.var(axis=-1, keepdims=True) + eps)


def ctc_brute(logits, labels, input_lengths, label_lengths):
    """CTC negative log-likelihood by enumerating every frame-level path (C**T of them) and
    keeping those that collapse (merge repeats, drop blanks) to the labels."""
    out = []
    for b in range(len(logits)):
        logp = _log_softmax(logits[b, : input_lengths[b]])
        target, total = list(labels[b, : label_lengths[b]]), 0.0
        for path in itertools.product(range(logits.shape[2]), repeat=int(input_lengths[b])):
            merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
            if [k for k in merged if k != 0] == target:
                total += np.exp(sum(logp[t, k] for t, k in enumerate(path)))
        out.append(-np.log(total))
    return np.array(out)


def masked_softmax_ref(a, mask):
    """Row by row: the plain softmax of the unmasked entries, zeros at the masked ones."""
    out = np.zeros(np.broadcast_shapes(a.shape, mask.shape))
    a, mask = np.broadcast_to(a, out.shape), np.broadcast_to(mask, out.shape)
    for index in np.ndindex(out.shape[:-1]):
        kept = a[index][mask[index]]
        out[index][mask[index]] = np.exp(kept) / np.exp(kept).sum() if kept.size else kept
    return out


def masked_max_ref(a, mask, axis=1):
    """Slice by slice: the plain max of the unmasked entries, 0 where there are none."""
    mask = np.broadcast_to(mask, a.shape)
    a, mask = np.moveaxis(a, axis, -1), np.moveaxis(mask, axis, -1)
    out = np.zeros(a.shape[:-1])
    for index in np.ndindex(out.shape):
        kept = a[index][mask[index]]
        out[index] = kept.max() if kept.size else 0.0
    return out


@dataclass(frozen=True)
class Row:
    op: str
    inputs: tuple
    ref: Callable  # the NumPy forward the op must reproduce
    attrs: dict = field(default_factory=dict)
    rtol: float = 1e-6
    atol: float = 1e-8
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op


# One row per op and per interesting case (broadcasting, batch axes, repeats, attrs).
ROWS = [
    Row("add", (Real((3, 4)), Real((3, 4))), np.add),
    Row("add", (Real((3, 4)), Real((4,))), np.add, label="bcast_vec"),
    Row("add", (Real((1, 4)), Real((3, 4))), np.add, label="bcast_row"),
    Row("addn", (Real((3, 4)), Real((4,)), Real((3, 1))), lambda a, b, c: a + b + c),
    Row("addn", (Real((2, 3)),), lambda a: a, label="one"),
    Row("sub", (Real((3, 4)), Real((3, 4))), np.subtract),
    Row("sub", (Real((3, 4)), Real((4,))), np.subtract, label="bcast_vec"),
    Row("sub", (Real((1, 4)), Real((3, 4))), np.subtract, label="bcast_row"),
    Row("mul", (Real((3, 4)), Real((3, 4))), np.multiply),
    Row("mul", (Real((3, 4)), Real((4,))), np.multiply, label="bcast_vec"),
    Row("mul", (Real((3, 4)), Real((1, 4))), np.multiply, label="bcast_row"),
    Row("div", (Real((3, 4)), Positive((3, 4))), np.divide),
    Row("div", (Real((3, 4)), Positive((4,))), np.divide, label="bcast_vec"),
    Row("div", (Real((1, 4)), Positive((3, 4))), np.divide, label="bcast_row"),
    Row("neg", (Real((3, 4)),), np.negative),
    Row("matmul", (Real((3, 4)), Real((4, 2))), np.matmul),
    Row("matmul", (Real((2, 3, 4)), Real((4, 2))), np.matmul, label="batch_left"),
    Row("matmul", (Real((2, 3, 4)), Real((2, 4, 2))), np.matmul, label="batch_both"),
    Row("matmul", (Real((3, 4)), Real((4,))), np.matmul, label="vec_right"),
    Row("matmul", (Real((4,)), Real((4, 2))), np.matmul, label="vec_left"),
    Row("matmul", (Real((2, 3, 4)), Real((4,))), np.matmul, label="batch_vec_right"),
    Row("matmul", (Real((4,)), Real((2, 4, 3))), np.matmul, label="vec_batch_right"),
    Row("matmul", (Real((4,)), Real((4,))), np.matmul, label="dot"),
    Row("tanh", (Real((3, 4)),), np.tanh),
    Row("sigmoid", (Real((3, 4)),), lambda a: 1 / (1 + np.exp(-a))),
    Row("relu", (AwayFromZero((3, 4)),), lambda a: np.maximum(a, 0)),
    Row("exp", (Real((3, 4)),), np.exp),
    Row("log", (Positive((3, 4)),), np.log),
    Row("sqrt", (Positive((3, 4)),), np.sqrt),
    Row("rsqrt", (Positive((3, 4)),), lambda a: 1 / np.sqrt(a)),
    Row("layer_norm", (Real((3, 5)),), layer_norm_ref),
    Row(
        "layer_norm",
        (Real((2, 3, 4)),),
        lambda a: layer_norm_ref(a, 0.5),
        {"eps": 0.5},
        label="batch_eps",
    ),
    Row("layer_norm", (Real((3, 1)),), layer_norm_ref, label="one_feature"),
    Row(
        "concat",
        (Real((2, 3)), Real((2, 1)), Real((2, 2))),
        lambda *xs: np.concatenate(xs, axis=-1),
        label="three",
    ),
    Row(
        "concat",
        (Real((1, 3)), Real((2, 3)), Real((3, 3))),
        lambda *xs: np.concatenate(xs, axis=0),
        {"axis": 0},
        label="axis0",
    ),
    Row("slice", (Real((3, 5)),), lambda a: a[:, 1:3], {"start": 1, "stop": 3}),
    Row("slice", (Real((4, 2)),), lambda a: a[2:], {"start": 2, "axis": 0}, label="to_end"),
    Row("slice", (Real((3, 4)),), lambda a: a[:, 0:4], {"start": 0, "stop": 4}, label="all"),
    Row("chunk", (Real((2, 6)),), lambda a: a[:, 2:4], {"index": 1, "parts": 3}),
    Row(
        "chunk",
        (Real((4, 3)),),
        lambda a: a[2:],
        {"index": 1, "parts": 2, "axis": 0},
        label="axis0",
    ),
    Row("sum", (Real((3, 4)),), np.sum, label="all"),
    Row("sum", (Real((3, 4)),), lambda a: a.sum(axis=1), {"axis": 1}, label="axis1"),
    Row(
        "sum",
        (Real((3, 4)),),
        lambda a: a.sum(axis=0, keepdims=True),
        {"axis": 0, "keepdims": True},
        label="keepdims",
    ),
    Row("sum", (Real((2, 3, 2)),), lambda a: a.sum(axis=(0, 2)), {"axis": (0, 2)}, label="axes"),
    Row("mean", (Real((3, 4)),), np.mean, label="all"),
    Row("mean", (Real((3, 4)),), lambda a: a.mean(axis=-1), {"axis": -1}, label="axis_last"),
    Row(
        "mean",
        (Real((3, 4)),),
        lambda a: a.mean(axis=1, keepdims=True),
        {"axis": 1, "keepdims": True},
        label="keepdims",
    ),
    Row("reshape", (Real((3, 4)),), lambda a: a.reshape(2, 6), {"shape": (2, 6)}),
    Row("reshape", (Real((3, 4)),), lambda a: a.reshape(-1), label="flat"),
    Row("transpose", (Real((3, 4)),), np.transpose),
    Row(
        "transpose",
        (Real((2, 3, 4)),),
        lambda a: np.transpose(a, (1, 2, 0)),
        {"axes": (1, 2, 0)},
        label="axes",
    ),
    Row("dropout", (Real((3, 4)), DropMask((3, 4), 0.5)), np.multiply),
    Row("dropout", (Real((3, 4)), DropMask((3, 4), 0.0)), np.multiply, label="keep_all"),
    Row("dropout", (Real((2, 3, 4)), DropMask((3, 4), 0.25)), np.multiply, label="shared_mask"),
    Row("where", (Mask((3, 4)), Real((3, 4)), Real((3, 4))), np.where),
    Row("where", (Mask((3, 1)), Real((4,)), Real((3, 4))), np.where, label="bcast_vec"),
    Row("where", (Mask((3, 4)), Real((1, 4)), Real((4,))), np.where, label="bcast_row"),
    Row(
        "embedding",
        (Fixed([[0, 2], [2, 2], [1, 2]]), Real((5, 3))),
        lambda ids, W: W[ids],
        label="repeated_ids",
    ),
    Row("conv2d", (Real((2, 3, 5, 4)), Real((2, 3, 3, 3))), lambda x, w: conv_ref(x, w, 0)),
    Row(
        "conv2d",
        (Real((1, 2, 4, 4)), Real((3, 2, 3, 3))),
        lambda x, w: conv_ref(x, w, 1),
        {"padding": 1},
        label="same",
    ),
    Row(
        "conv2d",
        (Real((2, 1, 3, 3)), Real((2, 1, 1, 2))),
        lambda x, w: conv_ref(x, w, 0),
        label="rect_kernel",
    ),
    Row("maxpool2d", (Real((2, 3, 4, 6)),), lambda x: x.reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5))),
    Row(
        "maxpool2d",
        (Real((1, 2, 6, 3)),),
        lambda x: x.reshape(1, 2, 2, 3, 1, 3).max(axis=(3, 5)),
        {"size": 3},
        label="size3",
    ),
    Row(
        "conv_transpose2d",
        (Real((2, 3, 2, 3)), Real((3, 2, 4, 4))),
        lambda x, w: conv_transpose_ref(x, w, 2, 1),
        {"stride": 2, "padding": 1},
        label="stride2",
    ),
    Row(
        "conv_transpose2d",
        (Real((1, 2, 3, 2)), Real((2, 3, 3, 2))),
        lambda x, w: conv_transpose_ref(x, w, 1, 0),
        label="rect_kernel",
    ),
    Row(
        "conv_transpose2d",
        (Real((1, 1, 2, 2)), Real((1, 2, 3, 3))),
        lambda x, w: conv_transpose_ref(x, w, 3, 1),
        {"stride": 3, "padding": 1},
        label="stride3",
    ),
    Row("upsample2d", (Real((2, 3, 2, 3)),), lambda x: x.repeat(2, axis=2).repeat(2, axis=3)),
    Row(
        "upsample2d",
        (Real((1, 2, 1, 2)),),
        lambda x: x.repeat(3, axis=2).repeat(3, axis=3),
        {"size": 3},
        label="size3",
    ),
    Row("argmax", (NoGrad((3, 5)),), lambda a: np.argmax(a, axis=-1)),
    Row("log_softmax", (Real((3, 5)),), _log_softmax),
    Row(
        "softmax_ce",
        (Real((3, 5)), Fixed([4, 0, 4])),
        lambda z, t: -_log_softmax(z)[np.arange(3), t],
    ),
    Row(
        "softmax_ce",
        (Real((2, 3, 4)), Ids((2, 3), 4)),
        lambda z, t: -np.take_along_axis(_log_softmax(z), t[..., None], -1)[..., 0],
        label="batch",
    ),
    Row("mse", (Real((3, 4)), Real((3, 4))), lambda p, y: ((p - y) ** 2).mean(axis=-1)),
    Row(
        "mse",
        (Real((3, 4)), Real((4,))),
        lambda p, y: ((p - y) ** 2).mean(axis=-1),
        label="bcast_target",
    ),
    Row("masked_softmax", (Real((3, 5)), Mask((3, 5))), masked_softmax_ref),
    Row(
        "masked_softmax",
        (
            # padded scores far above the real ones must not set the max (nor overflow)
            Given((3, 4), [[0.3, -1.2, 40.0, 900.0], [2.0, 0.5, -0.7, 1.1], [5.0, 6.0, 7.0, 8.0]]),
            Fixed([[True, True, False, False], [True, True, True, True], [False] * 4]),
        ),
        masked_softmax_ref,
        label="padded_tail",
    ),
    Row(
        "masked_softmax",
        (Real((2, 3, 4)), Fixed([[[True, True, True, False]], [[True, False, False, False]]])),
        masked_softmax_ref,
        label="bcast_mask",
    ),
    Row("masked_max", (Real((3, 4, 2)), Mask((3, 4, 1))), masked_max_ref),
    Row(
        "masked_max",
        (
            # padded steps far above the real ones must neither win nor get a gradient; the
            # last sequence has no real step (0, no gradient)
            Given(
                (3, 4, 1),
                [
                    [[0.3], [-1.2], [40.0], [900.0]],
                    [[2.0], [0.5], [-0.7], [1.1]],
                    [[5.0], [6.0], [7.0], [8.0]],
                ],
            ),
            Fixed([[[True], [True], [False], [False]], [[True]] * 4, [[False]] * 4]),
        ),
        masked_max_ref,
        label="padded_tail",
    ),
    Row(
        "masked_max",
        # a two-way tie: each tied step gets g / 2, what central differences see
        (Given((2, 3, 1), [[[1.5], [1.5], [0.2]], [[-0.3], [0.7], [0.7]]]), Fixed([[[True]]])),
        masked_max_ref,
        label="tie",
    ),
    Row(
        "masked_max",
        (Real((2, 3)), Fixed([[True, False, True]])),
        lambda a, mask: masked_max_ref(a, mask, axis=0),
        {"axis": 0},
        label="axis0",
    ),
    Row("stack", (Real((2, 3)), Real((2, 3)), Real((2, 3))), lambda *xs: np.stack(xs, axis=1)),
    Row(
        "stack", (Real((2, 3)), Real((2, 3))), lambda *xs: np.stack(xs), {"axis": 0}, label="axis0"
    ),
    Row(
        "ctc",
        (Real((2, 4, 3)), Fixed([[1, 2], [2, 0]]), Fixed([4, 3]), Fixed([2, 1])),
        ctc_brute,
        label="ragged",
    ),
    Row(
        "ctc",
        (Real((2, 5, 3)), Fixed([[1, 1], [2, 2]]), Fixed([5, 3]), Fixed([2, 2])),
        ctc_brute,
        label="repeats",
    ),
    Row(
        "ctc",
        (Real((2, 3, 3)), Fixed([[1], [2]]), Fixed([3, 2]), Fixed([0, 1])),
        ctc_brute,
        label="empty_label",
    ),
]


def _inputs(row: Row, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [domain.draw(rng) for domain in row.inputs]


def _cotangent(out: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=np.shape(out))


def test_every_op_has_a_row():
    """Adding an op to the table without a test row fails here."""
    missing = sorted(set(ops.OPS) - {row.op for row in ROWS})
    unknown = sorted({row.op for row in ROWS} - set(ops.OPS))
    assert not missing, f"ops without a row in tests/test_ops.py: {missing}"
    assert not unknown, f"rows for ops that do not exist: {unknown}"


def test_every_op_is_documented():
    for name, op in ops.OPS.items():
        assert op.name == name
        assert op.doc, f"op {name!r} has no docstring"
        assert op.arity == ops.VARIADIC or op.arity >= 1


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_forward_matches_numpy_reference(row: Row):
    inputs = _inputs(row)
    out = np.asarray(ops.OPS[row.op].forward(xnp, *inputs, **row.attrs))
    expected = np.asarray(row.ref(*inputs))
    assert out.shape == expected.shape
    if expected.dtype.kind in "iub":
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_vjp_matches_central_differences(row: Row):
    op = ops.OPS[row.op]
    inputs = _inputs(row)
    out = op.forward(xnp, *inputs, **row.attrs)
    g = _cotangent(out)
    grads = op.vjp(xnp, g, out, *inputs, **row.attrs)
    assert len(grads) == len(inputs), f"{row.op} VJP must return one item per input"

    def objective(values) -> float:
        return float(np.sum(g * np.asarray(op.forward(xnp, *values, **row.attrs))))

    worst = 0.0
    for position, domain in enumerate(row.inputs):
        if not domain.differentiable:
            assert grads[position] is None, f"{row.op} input {position} must get None"
            continue
        grad = np.asarray(grads[position])
        assert grad.shape == inputs[position].shape, f"{row.op} input {position} grad shape"
        numeric = np.zeros_like(inputs[position])
        for index in np.ndindex(inputs[position].shape):
            values = [x.copy() for x in inputs]
            values[position][index] += EPS
            up = objective(values)
            values[position][index] -= 2 * EPS
            numeric[index] = (up - objective(values)) / (2 * EPS)
        np.testing.assert_allclose(
            grad, numeric, rtol=row.rtol, atol=row.atol, err_msg=f"{row.id}: d/d input {position}"
        )
        worst = max(worst, float(np.max(np.abs(grad - numeric), initial=0.0)))
    record("ops: per-element VJP vs central differences (abs)", worst, row.id)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_array_api_strict_matches_numpy(row: Row):
    """The same forward and VJP on array_api_strict: any NumPy-only call would raise here."""
    xs = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    op = ops.OPS[row.op]
    inputs = _inputs(row)
    out = op.forward(xnp, *inputs, **row.attrs)
    g = _cotangent(out)
    expected = op.vjp(xnp, g, out, *inputs, **row.attrs)

    strict_inputs = [xs.asarray(x) for x in inputs]
    strict_out = op.forward(xs, *strict_inputs, **row.attrs)
    assert type(strict_out).__module__.startswith("array_api_strict")
    np.testing.assert_allclose(np.asarray(strict_out), np.asarray(out), rtol=1e-12, atol=1e-14)
    strict_grads = op.vjp(xs, xs.asarray(g), strict_out, *strict_inputs, **row.attrs)
    for position, (got, want) in enumerate(zip(strict_grads, expected, strict=True)):
        if want is None:
            assert got is None
            continue
        np.testing.assert_allclose(
            np.asarray(got),
            np.asarray(want),
            rtol=1e-12,
            atol=1e-14,
            err_msg=f"{row.id}: strict grad of input {position}",
        )


def test_embedding_repeated_ids_add_up():
    """Row 2 is looked up four times, rows 3 and 4 never: dW[2] = sum of four rows of g,
    dW[3] = dW[4] = 0."""
    ids = np.array([[0, 2], [2, 2], [1, 2]])
    W = np.arange(15.0).reshape(5, 3)
    g = np.arange(18.0).reshape(3, 2, 3)
    _, dW = ops.OPS["embedding"].vjp(xnp, g, None, ids, W)
    np.testing.assert_array_equal(dW[2], g[0, 1] + g[1, 0] + g[1, 1] + g[2, 1])
    np.testing.assert_array_equal(dW[0], g[0, 0])
    np.testing.assert_array_equal(dW[1], g[2, 0])
    np.testing.assert_array_equal(dW[3:], 0.0)


def test_stable_ops_do_not_overflow():
    """sigmoid, log_softmax and softmax_ce are primitives so huge inputs stay finite."""
    big = np.array([[-800.0, 0.0, 800.0]])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        np.testing.assert_allclose(ops.OPS["sigmoid"].forward(xnp, big), [[0.0, 0.5, 1.0]])
        np.testing.assert_allclose(
            ops.OPS["log_softmax"].forward(xnp, big), [[-1600.0, -800.0, 0.0]]
        )
        np.testing.assert_allclose(ops.OPS["softmax_ce"].forward(xnp, big, np.array([1])), [800.0])
        g = ops.OPS["log_softmax"].vjp(
            xnp, np.ones_like(big), ops.OPS["log_softmax"].forward(xnp, big), big
        )[0]
    np.testing.assert_allclose(g, [[1.0, 1.0, -2.0]])


def test_unbroadcast_sums_to_shape():
    g = np.ones((2, 3, 4))
    assert ops.unbroadcast(xnp, g, (4,)).tolist() == [6.0] * 4
    np.testing.assert_array_equal(ops.unbroadcast(xnp, g, (3, 1)), np.full((3, 1), 8.0))
    np.testing.assert_array_equal(ops.unbroadcast(xnp, g, (1, 3, 4)), np.full((1, 3, 4), 2.0))
    assert ops.unbroadcast(xnp, g, (2, 3, 4)) is g


# ---- the plan's facts in each record agree with the op's behaviour ----------------------------


def _ctx():
    from seqgraph.plan.kernels import Context

    return Context(xnp, "numpy")


def _float_positions(row: Row) -> list[int]:
    return [i for i, domain in enumerate(row.inputs) if isinstance(domain, Real)]


def test_every_op_has_a_vjp_and_consistent_facts():
    """Facts that follow from one another (a C expression only for an elementwise op, ...)."""
    for name, op in ops.OPS.items():
        arity = op.arity if op.arity != ops.VARIADIC else None
        assert op.vjp is not None, f"{name} has no VJP"
        assert op.c_expr is None or op.elementwise, f"{name}: a C expression is elementwise"
        assert not op.sibling_merge or op.elementwise, name
        assert not (op.elementwise and op.rowwise), name
        assert op.batch is not None or not (op.elementwise or op.rowwise), name
        assert (op.local is None) == (op.local_out is None), f"{name}: local needs local_out"
        assert not op.in_place or set(op.unread_inputs) == set(range(op.arity)), name
        assert not (op.in_place or op.output_overwritable) or not op.reads_output, name
        assert not op.other_operand or op.arity == 2, name
        assert not op.variadic_sum or op.arity == ops.VARIADIC, name
        assert not op.averages or op.batch is not None, f"{name}: averages when batched"
        assert not op.vjp_transposed_right or (op.arity == 2 and op.vjp_kernel), name
        if op.out_vjp is not None:
            assert arity is not None and len(op.out_vjp) == arity, name
        for position in op.pass_through + op.unread_inputs:
            assert arity is None or 0 <= position < arity, name


@pytest.mark.parametrize("row", [r for r in ROWS if ops.OPS[r.op].view], ids=lambda row: row.id)
def test_view_index_gives_the_forward(row: Row):
    (a,) = _inputs(row)
    out = ops.OPS[row.op].forward(xnp, a, **row.attrs)
    view = a[ops.OPS[row.op].view(a.shape, **row.attrs)]
    np.testing.assert_array_equal(out, view)
    assert np.shares_memory(view, a)


@pytest.mark.parametrize("row", [r for r in ROWS if ops.OPS[r.op].local], ids=lambda row: row.id)
def test_local_derivative_is_the_vjp(row: Row):
    """VJP = g * local(y), and the out= form computes local(y) bit for bit."""
    op = ops.OPS[row.op]
    (a,) = _inputs(row)
    y = op.forward(xnp, a)
    g = _cotangent(y)
    np.testing.assert_array_equal(op.vjp(xnp, g, y, a)[0], g * op.local(xnp, y))
    o = np.empty_like(y)
    op.local_out(np, o, y)
    np.testing.assert_array_equal(o, op.local(xnp, y))
    numeric = (op.forward(xnp, a + EPS) - op.forward(xnp, a - EPS)) / (2 * EPS)
    np.testing.assert_allclose(op.local(xnp, y), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "row", [r for r in ROWS if ops.OPS[r.op].out_forward and not r.attrs], ids=lambda row: row.id
)
def test_out_forward_kernel_matches_reference(row: Row):
    from seqgraph.plan import kernels

    op, inputs = ops.OPS[row.op], _inputs(row)
    expected = np.asarray(op.forward(xnp, *inputs))
    out = np.full(expected.shape, np.nan, dtype=expected.dtype)
    kernels.forward(_ctx(), row.op, out, inputs, {})()
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if (ops.OPS[r.op].out_vjp or ops.OPS[r.op].vjp_kernel) and not r.attrs],
    ids=lambda row: row.id,
)
@pytest.mark.parametrize("add", [False, True], ids=["write", "add"])
def test_out_vjp_kernels_match_reference(row: Row, add: bool):
    """The plan's VJP kernel of every differentiable input, written into a fresh buffer or
    added to one, against the reference VJP (softmax_ce: with and without its saved exp)."""
    from seqgraph.plan import kernels, kernels_vjp

    op, inputs = ops.OPS[row.op], _inputs(row)
    out = np.asarray(op.forward(xnp, *inputs))
    g = _cotangent(out)
    expected = op.vjp(xnp, g, out, *inputs)
    for keep in (False, True):
        ctx = _ctx()
        if keep and op.out_forward is not None:
            kernels.forward(ctx, row.op, np.empty_like(out), inputs, {})()
        for position in _float_positions(row):
            start = np.ones(inputs[position].shape) if add else np.full(inputs[position].shape, 7.0)
            dest = start.copy()
            kernels_vjp.vjp(ctx, row.op, position, dest, add, g, out, inputs, {})()
            want = start + expected[position] if add else expected[position]
            np.testing.assert_allclose(dest, want, rtol=1e-13, atol=1e-14, err_msg=f"{position}")


@pytest.mark.parametrize(
    "row", [r for r in ROWS if ops.OPS[r.op].variadic_sum], ids=lambda row: row.id
)
def test_variadic_sum_adds_its_inputs_and_passes_g_to_each(row: Row):
    """`Op.variadic_sum`: out is the sum, each input's gradient is g (summed to its shape)."""
    op, inputs = ops.OPS[row.op], _inputs(row)
    out = np.asarray(op.forward(xnp, *inputs))
    np.testing.assert_allclose(out, sum(np.broadcast_arrays(*inputs)), rtol=1e-15)
    g = _cotangent(out)
    for x, grad in zip(inputs, op.vjp(xnp, g, out, *inputs), strict=True):
        np.testing.assert_array_equal(grad, ops.unbroadcast(xnp, g, x.shape))


@pytest.mark.parametrize(
    "row",
    [r for r in ROWS if ops.OPS[r.op].vjp_transposed_right and not r.attrs],
    ids=lambda row: row.id,
)
def test_vjp_kernel_takes_the_transposed_right_operand(row: Row):
    """`Op.vjp_transposed_right`: input 0's VJP kernel, given `bt` (input 1 transposed,
    contiguous), gives the reference VJP wherever it builds a kernel."""
    from seqgraph.plan import kernels_vjp

    op, inputs = ops.OPS[row.op], _inputs(row)
    if np.ndim(inputs[1]) != 2:
        return
    out = np.asarray(op.forward(xnp, *inputs))
    g = _cotangent(out)
    dest = np.full(inputs[0].shape, 7.0)
    bt = np.ascontiguousarray(inputs[1].T)
    kernels_vjp.vjp(_ctx(), row.op, 0, dest, False, g, out, inputs, {}, bt)()
    np.testing.assert_allclose(dest, op.vjp(xnp, g, out, *inputs)[0], rtol=1e-13, atol=1e-14)


def _nan_like(x):
    return np.full(np.shape(x), np.nan)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_vjp_reads_no_value_its_record_calls_unread(row: Row):
    """NaN in every value the record says the VJP never reads leaves its gradients finite."""
    op, inputs = ops.OPS[row.op], _inputs(row)
    out = op.forward(xnp, *inputs, **row.attrs)
    g = _cotangent(out)
    hidden = list(inputs)
    for position in op.unread_inputs:
        hidden[position] = _nan_like(inputs[position])
    shown = out if op.reads_output else _nan_like(out)
    grads = op.vjp(xnp, g, shown, *hidden, **row.attrs)
    assert all(x is None or np.all(np.isfinite(x)) for x in grads), row.id
    if op.other_operand:  # input i is read only for input 1 - i
        for position in (0, 1):
            hidden = list(inputs)
            hidden[position] = _nan_like(inputs[position])
            grad = op.vjp(xnp, g, shown, *hidden, **row.attrs)[position]
            assert np.all(np.isfinite(grad)), f"{row.id}: input {position}"


@pytest.mark.parametrize("row", [r for r in ROWS if ops.OPS[r.op].batch], ids=lambda row: row.id)
def test_batch_rule_runs_steps_at_once(row: Row):
    """What the record's batch rule promises, on three steps stacked along a new axis 0.
    Elementwise and axis ops stack every input (a lower-rank one padded after the time axis,
    as the plan does for elementwise ops); the others their first only (ids, logits, a
    matmul's left operand: tables, targets and weights are shared over time)."""
    op, steps = ops.OPS[row.op], [_inputs(row, seed) for seed in range(3)]
    every = op.elementwise or "axis" in op.attrs
    stacked = [every or i == 0 for i in range(len(row.inputs))]
    in_ndims = [np.ndim(x) for x in steps[0]]
    rule = op.batch(dict(row.attrs), in_ndims, stacked)
    if rule is None:
        return
    kind, attrs = rule
    shared = [[x if stacked[i] else steps[0][i] for i, x in enumerate(s)] for s in steps]
    each = np.stack([np.asarray(op.forward(xnp, *s, **row.attrs)) for s in shared])
    ins = []
    for i in range(len(row.inputs)):
        x = np.stack([s[i] for s in shared]) if stacked[i] else steps[0][i]
        pad = each.ndim - 1 - in_ndims[i] if op.elementwise else 0
        ins.append(x.reshape((3,) + (1,) * pad + x.shape[1:]) if stacked[i] else x)
    if kind == "same":
        got = np.asarray(op.forward(xnp, *ins, **attrs))
        np.testing.assert_allclose(got, each, rtol=1e-13, atol=1e-14)
    else:
        assert kind == "reduce_rest"
        flat = ins[0].reshape(3, -1)
        per_step = flat.sum(axis=1) / (flat.shape[1] if op.averages else 1)
        np.testing.assert_allclose(per_step, each, rtol=1e-13)


def test_relu_keeps_nan_as_numpy_and_torch_do():
    """Regression: the interpreter's where(a > 0, a, 0) and the C expression turned NaN into 0,
    hiding a blow-up; np.maximum (the plan's NumPy kernel) and torch.relu keep it."""
    a = np.array([np.nan, -1.0, 0.0, 2.0, np.inf, -np.inf])
    want = np.maximum(a, 0)
    np.testing.assert_array_equal(ops.OPS["relu"].forward(np, a), want)
