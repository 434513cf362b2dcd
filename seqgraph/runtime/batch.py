"""A user's batch dict -> host arrays for every data node of the unrolled graph.

A batch holds `x`, `y`, optional `lengths` (input steps per sequence), `y_lengths` (decoder
steps, for one_to_many and encoder_decoder), `use_model` (B, T_out) booleans for scheduled
sampling, `state` ({"l0.h0": (B, H)}) to start from a carried hidden state, and `loss_from`
(a step index: earlier steps add no loss, as in truncated BPTT with k1 < k2), and `dropout`
({"seed": s, "step": n}: train with the spec's dropout, masks drawn by `runtime.masks`;
absent: no dropout, as evaluation and prediction run).
Padded steps get mask False and loss weight 0; the loss weight is 1/B on real steps, so the
loss is the per-sequence sum over steps, averaged over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from seqgraph.engine.graph import Graph, Key
from seqgraph.errors import DataError
from seqgraph.runtime import masks
from seqgraph.spec.load import IOSpec, Spec

SINGLE_STEP_INPUT = ("one_to_one", "one_to_many")  # x has no time axis
PER_STEP_TARGET = ("many_to_many", "one_to_many", "encoder_decoder")


def _check_io(name: str, array: np.ndarray, io: IOSpec, leading: int, pattern: str) -> None:
    lead = "(B, T" if leading == 2 else "(B"
    want = f"{lead}) integer ids" if io.type == "ids" else f"{lead}, {io.size}) floats"
    if io.type == "ids":
        ok = array.ndim == leading and array.dtype.kind in "iu"
        if ok and array.size and (array.min() < 0 or array.max() >= io.size):
            raise DataError(
                f"batch[{name!r}] holds ids from {array.min()} to {array.max()}, "
                f"outside the vocab 0..{io.size - 1} of the spec"
            )
    else:
        tail = io.shape if io.type == "images" else (io.size,)
        if io.type == "images":
            want = f"{lead}, {', '.join(map(str, tail))}) floats"
        ok = (
            array.ndim == leading + len(tail)
            and tuple(array.shape[leading:]) == tail
            and array.dtype.kind == "f"
        )
        if ok and array.size and not _all_finite(array):
            raise DataError(f"batch[{name!r}] contains NaN or Inf")
    if not ok:
        raise DataError(
            f"batch[{name!r}] has shape {array.shape} and dtype {array.dtype}; "
            f"{pattern} expects {want}"
        )


def _all_finite(array: np.ndarray) -> bool:
    """No NaN and no infinity in `array`: its least and greatest entries are finite (both
    are NaN where any entry is). Two reductions that allocate nothing, where
    `np.isfinite(array).all()` made a bool array the size of the batch at every step
    (0.8 MiB for a medium batch, while the plan's buffers are all in use)."""
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def _lengths(batch: dict, name: str, size: int, steps: int) -> np.ndarray:
    if batch.get(name) is None:
        return np.full(size, steps, dtype=np.int64)
    lengths = np.asarray(batch[name])
    if lengths.shape != (size,) or lengths.dtype.kind not in "iu":
        raise DataError(f"batch[{name!r}] must be {size} integers, one per sequence")
    if lengths.size and (lengths.min() < 1 or lengths.max() > steps):
        raise DataError(
            f"batch[{name!r}] must lie in 1..{steps} (the padded length); "
            f"got {lengths.min()}..{lengths.max()}"
        )
    return lengths.astype(np.int64)


def _ctc_label_lengths(batch: dict, y: np.ndarray, x_len: np.ndarray) -> np.ndarray:
    """CTC label lengths (0 allowed), checked: no blank (id 0) among the real labels, and
    enough input steps for the labels plus one blank between each pair of equal neighbours."""
    size, width = y.shape
    lengths = np.asarray(batch.get("y_lengths", np.full(size, width)))
    if lengths.shape != (size,) or lengths.dtype.kind not in "iu":
        raise DataError(f"batch['y_lengths'] must be {size} integers, one per label sequence")
    if lengths.size and (lengths.min() < 0 or lengths.max() > width):
        raise DataError(f"batch['y_lengths'] must lie in 0..{width} (the padded label length)")
    real = np.arange(width)[None, :] < lengths[:, None]
    if np.any(real & (y == 0)):
        row = int(np.argmax(np.any(real & (y == 0), axis=1)))
        raise DataError(f"batch['y'] sequence {row} holds id 0, the CTC blank; labels are 1 and up")
    need = lengths + np.sum(real[:, 1:] & (y[:, 1:] == y[:, :-1]), axis=1)
    if np.any(need > x_len):
        row = int(np.argmax(need > x_len))
        raise DataError(
            f"sequence {row} has {x_len[row]} input steps, too few for its "
            f"{lengths[row]} labels: CTC needs {need[row]} (a blank between equal "
            "neighbours); its loss would be infinite"
        )
    return lengths.astype(np.int64)


def shape_of(spec: Spec, batch: dict) -> tuple[int, int, int | None]:
    """(batch size, input steps, decoder steps) of a batch, checked against the spec."""
    m = spec.model
    if "x" not in batch:
        raise DataError("the batch has no 'x'")
    x = np.asarray(batch["x"])
    leading = 1 if m.pattern in SINGLE_STEP_INPUT else 2
    _check_io("x", x, m.input, leading, m.pattern)
    size, steps = x.shape[0], (1 if leading == 1 else x.shape[1])
    out_steps = None
    if "y" in batch and batch["y"] is not None:
        y = np.asarray(batch["y"])
        y_leading = 2 if m.pattern in PER_STEP_TARGET else 1
        _check_io("y", y, m.target, y_leading, m.pattern)
        if y.shape[0] != size:
            raise DataError(f"batch['y'] has {y.shape[0]} sequences but batch['x'] has {size}")
        if m.pattern == "many_to_many" and m.loss != "ctc" and y.shape[1] != steps:
            raise DataError(
                f"batch['y'] has {y.shape[1]} steps but batch['x'] has {steps}; "
                "many_to_many needs one target per input step"
            )
        if m.feeds_back:
            out_steps = y.shape[1]
    elif m.feeds_back:
        out_steps = int(batch.get("out_steps", 0))
        if out_steps < 1:
            raise DataError(f"{m.pattern} needs 'y' (or 'out_steps' when generating)")
    return size, steps, out_steps


class Prepared(NamedTuple):
    """A batch checked and filled in: what every data node of a graph is cut from."""

    size: int
    steps: int
    out_steps: int | None
    full: bool  # no padded step: every mask is all true
    has_y: bool
    x: np.ndarray
    y: np.ndarray
    x_len: np.ndarray
    y_len: np.ndarray
    coins: np.ndarray
    states: dict
    loss_from: int
    state_grads: dict
    # (seed, step, first_step, row_offset, global_rows) or no dropout (`masks.dropout_request`)
    dropout: tuple | None = None
    drawn: dict | None = None  # per-step dropout masks drawn for this batch, by (scope, name)


def prepare(spec: Spec, batch: dict) -> Prepared:
    """Check a batch against the spec and fill in its defaults (lengths, coins, a target)."""
    m = spec.model
    size, steps, out_steps = shape_of(spec, batch)
    x = np.asarray(batch["x"])
    y = (
        np.asarray(batch["y"])
        if batch.get("y") is not None
        else _dummy_target(m, size, steps, out_steps)
    )
    x_len = _lengths(batch, "lengths", size, steps)
    y_len = _lengths(batch, "y_lengths", size, out_steps) if out_steps else x_len
    if m.loss == "ctc":
        y_len = _ctc_label_lengths(batch, y, x_len)
        # Labels padded (or cut: past y_lengths is padding) to T columns, so that a graph and
        # a plan, cached per input length, always see one label shape. S <= T once checked.
        y = np.concatenate([y, np.zeros((size, steps), y.dtype)], axis=1)[:, :steps]
    coins = np.zeros((size, out_steps or 1), dtype=bool)
    if batch.get("use_model") is not None:
        coins = np.asarray(batch["use_model"], dtype=bool).reshape(size, -1)
    full = bool(np.all(x_len >= steps) and (not out_steps or np.all(y_len >= out_steps)))
    return Prepared(
        size,
        steps,
        out_steps,
        full,
        batch.get("y") is not None,
        x,
        y,
        x_len,
        y_len,
        coins,
        batch.get("state") or {},
        batch.get("loss_from", 0),
        batch.get("state_grad") or {},
        masks.dropout_request(batch),
        {},
    )


def feeds(spec: Spec, graph: Graph, batch: dict) -> dict[Key, np.ndarray]:
    """Host arrays for every data node of `graph` (built for this batch's shape)."""
    p = prepare(spec, batch)
    return {key: feed_one(spec, p, key, role) for key, role in graph.inputs.items()}


def feed_one(spec: Spec, p: Prepared, key: Key, role: dict) -> np.ndarray:
    """The host array of one data node (`role` is its entry in `graph.inputs`)."""
    m, size = spec.model, p.size
    scope, name, t = key
    kind = role["role"]
    if kind == "x":
        return p.x if t is None or m.pattern == "one_to_one" else p.x[:, t]
    if kind == "mask":
        lengths = p.x_len if scope == "x" else p.y_len
        return (t < lengths)[:, None]
    if kind == "weight":
        real = np.ones(size) if t is None or m.pattern == "many_to_one" else (t < p.y_len)
        if t is not None and t < p.loss_from:
            real = np.zeros(size)  # truncated BPTT: these steps only warm the state up
        return real.astype(np.float64) / size
    if kind == "y":
        return _target(p.y, t)
    if kind in ("labels", "lengths", "label_lengths"):  # a whole-sequence loss (ctc)
        return {"labels": p.y, "lengths": p.x_len, "label_lengths": p.y_len}[kind]
    if kind == "feed":
        return _teacher_feed(m, p.y, t, size)
    if kind == "coin":
        # shaped like the fed-back value: (B,) ids or (B, size) vectors
        return p.coins[:, t] if m.target.type == "ids" else p.coins[:, t][:, None]
    if kind == "state":
        return _state(p.states, f"{scope}.{name}", size, role["size"])
    if kind == "state_grad":  # the gradient a later segment hands back (`segments.py`)
        return _state(p.state_grads, f"{scope}.{name[: -len('_grad')]}", size, role["size"])
    if kind == "dropout":
        return _dropout_mask(p, key, role)
    raise DataError(f"no data for node {key} (role {kind!r})")


def _dropout_mask(p: Prepared, key: Key, role: dict) -> np.ndarray:
    """A dropout mask node's value: (B, *shape), one row per sequence."""
    scope, name, t = key
    if t is not None:
        return _step_masks(p, key, role, t)[0]
    seed, step, _, offset, rows = _request(p, key)
    rows = p.size if rows is None else rows
    mask = masks.dropout_mask(
        seed, step, key, (rows, *role["shape"]), role["p"], role.get("whole_vectors")
    )
    return mask[offset : offset + p.size]


def _step_masks(p: Prepared, key: Key, role: dict, lo: int, hi: int | None = None):
    """Steps lo..hi (default lo) of a per-step dropout mask class, (steps, B, *shape). A
    class's masks for all steps are one draw, (steps, rows, *shape) from one generator, made
    once per batch: one generator per step and node cost 4 ms of a 34 ms LSTM step. Time
    counts from the start of the whole sequence (a segment passes `first_step`): the draw
    fills steps in order, so a segment's steps are those of a single pass, as a shard's rows
    (row_offset of global_rows) are the whole batch's."""
    seed, step, first, offset, rows = _request(p, key)
    scope, name, _ = key
    hi = lo if hi is None else hi
    drawn = p.drawn.get((scope, name))
    if drawn is None or len(drawn) < first + hi + 1:
        length = first + max(hi + 1, p.steps, p.out_steps or 0)
        rows = p.size if rows is None else rows
        shape = (length, rows, *role["shape"])
        drawn = masks.dropout_mask(
            seed, step, (scope, name, "steps"), shape, role["p"], role.get("whole_vectors")
        )
        p.drawn[(scope, name)] = drawn = drawn[:, offset : offset + p.size]
    return drawn[first + lo : first + hi + 1]


def _request(p: Prepared, key: Key) -> tuple:
    if p.dropout is None:
        raise DataError(f"node {key} is a dropout mask and the batch has no 'dropout' request")
    return p.dropout


def stacked(spec: Spec, p: Prepared, keys: list, role: dict) -> np.ndarray:
    """feed_one of steps lo..hi of one data class (`keys` in step order), stacked on a new
    leading axis: whole-array slices instead of one small array per step."""
    m, kind = spec.model, role["role"]
    lo, hi = keys[0][2], keys[-1][2]
    if kind == "dropout" and lo is not None:  # per-step masks: one draw for the class
        return _step_masks(p, keys[0], role, lo, hi)
    if m.pattern == "one_to_one" or kind not in ("x", "y", "mask", "weight", "coin"):
        return np.stack([feed_one(spec, p, k, role) for k in keys])
    ts = np.arange(lo, hi + 1)
    if kind in ("x", "y"):
        return (p.x if kind == "x" else p.y)[:, lo : hi + 1].swapaxes(0, 1)
    if kind == "mask":
        lengths = p.x_len if keys[0][0] == "x" else p.y_len
        return (ts[:, None] < lengths[None, :])[:, :, None]
    if kind == "coin":
        coins = p.coins[:, lo : hi + 1].swapaxes(0, 1)
        return coins if m.target.type == "ids" else coins[:, :, None]
    if m.pattern == "many_to_one":
        real = np.ones((len(ts), p.size))
    else:
        real = (ts[:, None] < p.y_len[None, :]).astype(np.float64)
    real[ts < p.loss_from] = 0.0
    return real / p.size


def _dummy_target(m, size: int, steps: int, out_steps: int | None) -> np.ndarray:
    """Zeros in the target's shape, so a batch without `y` can still run forward."""
    shape = (
        (size,)
        if m.pattern in ("many_to_one", "one_to_one")
        else (size, out_steps if m.feeds_back else steps)
    )
    if m.target.type == "ids":
        return np.zeros(shape, dtype=np.int64)
    return np.zeros(shape + (m.target.size,))


def _target(y, t):
    return y if t is None else y[:, t]


def _teacher_feed(m, y, t, size):
    """The decoder's input at step t when teacher-forced: the previous target, or BOS."""
    if t > 0:
        return y[:, t - 1]
    if m.target.type == "ids":
        return np.full(size, m.bos, dtype=np.int64)
    return np.zeros((size, m.target.size))


def _state(states: dict, name: str, size: int, hidden: int) -> np.ndarray:
    if name not in states:
        return np.zeros((size, hidden))
    value = np.asarray(states[name])
    if value.shape != (size, hidden):
        raise DataError(f"batch['state'][{name!r}] must have shape {(size, hidden)}")
    return value


def dummy(spec: Spec, size: int, steps: int, out_steps: int | None = None, seed: int = 0) -> dict:
    """A random batch of the right shapes for `spec` (used by `check` and by tests)."""
    m, rng = spec.model, np.random.default_rng(seed)

    def draw(io: IOSpec, shape: tuple) -> np.ndarray:
        if io.type == "ids":
            return rng.integers(0, io.size, size=shape)
        return rng.normal(size=shape + (io.shape if io.type == "images" else (io.size,)))

    x_shape = (size,) if m.pattern in SINGLE_STEP_INPUT else (size, steps)
    if m.loss == "ctc":  # labels 1.. (0 is the blank), at most half as many as steps
        labels = rng.integers(1, m.target.size, size=(size, max(1, steps // 2)))
        return {"x": draw(m.input, x_shape), "y": labels}
    if m.pattern in ("many_to_one", "one_to_one"):
        y_shape = (size,)
    else:
        y_shape = (size, (out_steps or steps) if m.feeds_back else steps)
    return {"x": draw(m.input, x_shape), "y": draw(m.target, y_shape)}
