"""Generated video clips for activity classification (`data.source: activity_video`).

A clip is `frames` grey frames (1 x frame_size x frame_size) of one shape performing one
action, on Gaussian pixel noise, with (by chance) a second, still shape as a distractor. Start
positions, sizes, speeds, shape kinds and brightness are random, so only the motion over time
names the action: a single frame cannot tell move_left from move_right or grow from shrink.
Every clip is drawn from its own generator seeded by (seed, index), so a data set is the same
for a seed whatever its size, and the splits are disjoint index ranges.
"""

from __future__ import annotations

import numpy as np

from seqgraph.apps import shapes
from seqgraph.apps.base import App, app_hooks
from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train import data as datasets

ACTIONS = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "rotate",
    "blink",
    "bounce",
)
MOVES = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (-1, 0), "move_down": (1, 0)}
DEFAULTS = {"examples": 2400, "frames": 16, "frame_size": 32, "noise": 0.1, "distractors": 0.5}


def track(action: str, rng: np.random.Generator, frames: int, size: int) -> dict:
    """Per-frame centre (y, x), radius, angle and visibility of the acting shape."""
    t = np.arange(frames, dtype=np.float64)
    radius = np.full(frames, rng.uniform(0.09, 0.14) * size)
    angle = np.full(frames, rng.uniform(0, 2 * np.pi))
    visible = np.ones(frames, dtype=bool)
    if action in MOVES:
        travel, margin = rng.uniform(0.4, 0.55) * size, radius[0] + 1
        coords = []
        for step in MOVES[action]:
            if step == 0:
                coords.append(np.full(frames, rng.uniform(margin, size - margin)))
                continue
            line = rng.uniform(margin, size - margin - travel) + travel * t / (frames - 1)
            coords.append(line if step > 0 else line[::-1].copy())
        return _pack(*coords, radius, angle, visible)
    if action in ("grow", "shrink"):
        small = rng.uniform(0.07, 0.1) * size
        big = small * rng.uniform(1.8, 2.4)
        radius = small + (big - small) * t / (frames - 1)
        radius = radius if action == "grow" else radius[::-1].copy()
    elif action == "rotate":
        radius[:] = rng.uniform(0.15, 0.2) * size
        angle = angle + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3) * t
    elif action == "blink":
        half = rng.integers(2, 4)  # frames on, then as many off
        visible = ((t.astype(int) + rng.integers(0, 2 * half)) // half) % 2 == 0
    elif action == "bounce":
        return _bounce(rng, t, radius, angle, visible, size)
    else:
        raise ValueError(f"unknown action {action!r}")
    margin = radius.max() + 1
    y, x = rng.uniform(margin, size - margin, size=2)
    return _pack(np.full(frames, y), np.full(frames, x), radius, angle, visible)


def _bounce(rng, t, radius, angle, visible, size: int) -> dict:
    """A ball hopping on a floor: height |sin|, so it falls, touches and rises again."""
    height = rng.uniform(0.25, 0.35) * size
    period = rng.uniform(6.0, 10.0)
    margin = radius[0] + 1
    floor = rng.uniform(margin + height, size - margin)
    y = floor - height * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi)))
    x = np.full(len(t), rng.uniform(margin, size - margin))
    return _pack(y, x, radius, angle, visible)


def _pack(y, x, radius, angle, visible) -> dict:
    return {"y": y, "x": x, "radius": radius, "angle": angle, "visible": visible}


def clip(
    action: str,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 32,
    noise: float = 0.1,
    distractors: float = 0.5,
) -> np.ndarray:
    """One (frames, 1, size, size) float32 clip of `action`."""
    path = track(action, rng, frames, size)
    kinds = ("square", "triangle") if action == "rotate" else shapes.SHAPES
    kind, level = kinds[rng.integers(len(kinds))], rng.uniform(0.6, 1.0)
    still = None
    if rng.random() < distractors:
        r = rng.uniform(0.09, 0.14) * size
        where = rng.uniform(r + 1, size - r - 1, size=2)
        still = (shapes.SHAPES[rng.integers(3)], rng.uniform(0.6, 1.0), *where, r)
        still += (rng.uniform(0, 2 * np.pi),)
    out = np.zeros((frames, 1, size, size))
    for t in range(frames):
        if still is not None:
            shapes.draw(out[t], still[0], still[1], *still[2:])
        if path["visible"][t]:
            shapes.draw(
                out[t], kind, level, path["y"][t], path["x"][t], path["radius"][t], path["angle"][t]
            )
    out += rng.normal(0.0, noise, size=out.shape)
    return out.astype(np.float32)


def _options(config: dict) -> dict:
    """The generator's settings, checked, with one-line errors that name the fix."""
    opts = {key: config.get(key, value) for key, value in DEFAULTS.items()}
    actions = config.get("actions", list(ACTIONS))
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or len(set(actions)) < 2:
        raise DataError(
            f"data.actions {actions!r}: give two or more of {', '.join(ACTIONS)}"
            + (f" ({unknown[0]!r} is not one)" if unknown else "")
        )
    if int(opts["frames"]) < 2:
        raise DataError(f"data.frames is {opts['frames']}; a clip needs 2 or more frames")
    if int(opts["frame_size"]) < 12:
        raise DataError(f"data.frame_size is {opts['frame_size']}; use 12 pixels or more")
    if not 0 <= float(opts["distractors"]) <= 1:
        raise DataError("data.distractors is a probability; give a number in 0..1")
    if float(opts["noise"]) < 0:
        raise DataError("data.noise is a standard deviation; give a number >= 0")
    single = config.get("single_frame", False)
    if not isinstance(single, bool):
        raise DataError(f"data.single_frame is {single!r}; use true or false")
    return {**opts, "actions": list(actions), "single_frame": single}


def _make(opts: dict, seed: int, indices: range) -> tuple[list, list]:
    xs, ys = [], []
    n = len(opts["actions"])
    for i in indices:
        rng = np.random.default_rng([seed, 71, i])
        label = i % n
        frames = clip(
            opts["actions"][label],
            rng,
            int(opts["frames"]),
            int(opts["frame_size"]),
            float(opts["noise"]),
            float(opts["distractors"]),
        )
        if opts["single_frame"]:  # the baseline: one frame, at a random time of the clip
            keep = rng.integers(len(frames))
            frames = frames[keep : keep + 1]
        xs.append(frames)
        ys.append(np.int64(label))
    return xs, ys


def load(config: dict, pattern: str, seed: int) -> datasets.SequenceSet:
    """Train, valid and test clips: disjoint index ranges, `valid_fraction` and
    `test_fraction` (0.1 each by default) of `examples`."""
    if pattern != "many_to_one":
        raise DataError(
            f"activity_video gives one label per clip: use model.pattern many_to_one, not {pattern}"
        )
    opts = _options(config)
    total = int(opts["examples"])
    n_valid = int(round(total * float(config.get("valid_fraction", 0.1))))
    n_test = int(round(total * float(config.get("test_fraction", 0.1))))
    if total - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise DataError(f"data.examples {total} leaves no clip for one split; give more examples")
    xs, ys = _make(opts, seed, range(total - n_valid - n_test))
    vx, vy = _make(opts, seed, range(total - n_valid - n_test, total - n_test))
    tx, ty = _make(opts, seed, range(total - n_test, total))
    out = datasets.SequenceSet(
        xs,
        ys,
        vx,
        vy,
        labels=opts["actions"],
        padding=datasets.PADDING[pattern],
        test_x=tx,
        test_y=ty,
    )
    out.app = ActivityApp(out)
    return out


class ActivityApp(App):
    """The majority-class rate to set accuracy against, per-class recall and the most
    frequent confusion, so a reader sees which actions the model still mixes up."""

    def __init__(self, dataset: datasets.SequenceSet):
        self.dataset = dataset

    def metrics(self, model, split: str, batch_size: int) -> dict:
        truth, guess = predict(model, self.dataset, split, batch_size)
        return scores(truth, guess, self.dataset.labels, np.asarray(self.dataset.y))


def predict(model, dataset, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(true class ids, predicted class ids) over a split."""
    truth, guess = [], []
    for batch in dataset.valid_batches(batch_size, 0, split):
        out = model.forward({k: v for k, v in batch.items() if k != "y"})
        guess.append(np.argmax(to_numpy(out["predictions"]), axis=-1))
        truth.append(np.asarray(batch["y"]))
    return np.concatenate(truth), np.concatenate(guess)


def scores(truth: np.ndarray, guess: np.ndarray, labels: list, train_y: np.ndarray) -> dict:
    """majority (the rate of always guessing the commonest training class), recall
    per class and the commonest mistake as 'true->guessed count'."""
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, guess), 1)
    majority = np.bincount(train_y, minlength=n).argmax()
    out = {"majority": float(np.mean(truth == majority))}  # accuracy: `evaluate` has it
    for i, name in enumerate(labels):
        out[f"recall_{name}"] = float(confusion[i, i] / max(confusion[i].sum(), 1))
    errors = confusion * (1 - np.eye(n, dtype=np.int64))
    if errors.any():
        i, j = np.unravel_index(np.argmax(errors), errors.shape)
        out["confused"] = f"{labels[i]}->{labels[j]} {errors[i, j]}"
    return out


OPTIONS = {
    "examples": {**COUNT, "description": "clips in all splits (default 2400)"},
    "valid_fraction": {**FRACTION, "description": "share of clips for validation (default 0.1)"},
    "test_fraction": {**FRACTION, "description": "share of clips for test (default 0.1)"},
    "frames": {**COUNT, "description": "frames per clip (default 16)"},
    "frame_size": {**COUNT, "description": "frames are frame_size x frame_size (default 32)"},
    "noise": {
        "type": "number",
        "minimum": 0,
        "description": "std of the Gaussian pixel noise (default 0.1)",
    },
    "distractors": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "chance of a second, still shape (default 0.5)",
    },
    "actions": {
        "type": "array",
        "items": {"type": "string"},
        "description": "the actions (classes) to generate; default all 9",
    },
    "single_frame": {
        "type": "boolean",
        "description": "keep one random frame per clip (the baseline)",
    },
}
SOURCES = [
    DataSource(
        "activity_video",
        load,
        OPTIONS,
        "generated clips of a shape acting, for activity classification",
        **app_hooks(),
    )
]
