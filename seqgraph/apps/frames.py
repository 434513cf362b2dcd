"""Generated bouncing shapes for future-frame prediction (`data.source: bouncing_frames`).

Each clip shows `objects` shapes moving at constant speed inside a grey frame_size x
frame_size box and bouncing off its walls. An encoder_decoder model reads `context_frames`
frames (k) as images and writes the next `future_frames` (m) as flat vectors of
frame_size**2 pixels, each fed back to make the next. Every clip is drawn from its own
generator seeded by (seed, index), and the splits are disjoint index ranges.

The app's scores are the per-frame MSE of free-running decoding (the model fed its own
predictions, as at test time) against copying the last given frame, which is hard to beat on
the first future frame and easy on later ones once shapes have moved away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.apps import shapes
from seqgraph.apps.base import App, app_hooks
from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train import data as datasets

DEFAULTS = {
    "examples": 3000,
    "frame_size": 16,
    "context_frames": 6,
    "future_frames": 6,
    "objects": 2,
    "speed": 1.2,
}
STRIP_SCALE = 4  # screen pixels per frame pixel in the PNG strip
STRIP_GAP = 2  # pixels between tiles


def reflect(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Positions of a point moving freely, folded back into [low, high] as if it bounced."""
    span = high - low
    folded = np.mod(position - low, 2 * span)
    return low + np.where(folded > span, 2 * span - folded, folded)


def clip(rng: np.random.Generator, steps: int, size: int, objects: int, speed: float):
    """(steps, size, size) float32 frames of `objects` bouncing shapes, and their centres
    (steps, objects, 2) as (y, x)."""
    t = np.arange(steps, dtype=np.float64)[:, None]
    frames = np.zeros((steps, 1, size, size))
    centres = np.zeros((steps, objects, 2))
    for i in range(objects):
        kind = shapes.SHAPES[rng.integers(len(shapes.SHAPES))]
        radius = rng.uniform(0.15, 0.2) * size
        start = rng.uniform(radius, size - radius, size=2)
        heading = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0.5, 1.0) * speed * np.array([np.sin(heading), np.cos(heading)])
        centres[:, i] = reflect(start + t * velocity, radius, size - radius)
        for s in range(steps):
            shapes.draw(frames[s], kind, 1.0, *centres[s, i], radius)
    return frames[:, 0].astype(np.float32), centres


def _options(config: dict, pattern: str) -> dict:
    """The generator's settings, checked, with one-line errors that name the fix."""
    if pattern != "encoder_decoder":
        raise DataError(
            "bouncing_frames feeds predicted frames back to the decoder: use model.pattern "
            f"encoder_decoder, not {pattern}"
        )
    opts = {key: config.get(key, value) for key, value in DEFAULTS.items()}
    if int(opts["frame_size"]) < 8:
        raise DataError(f"data.frame_size is {opts['frame_size']}; use 8 pixels or more")
    for key in ("context_frames", "future_frames", "objects"):
        if int(opts[key]) < 1:
            raise DataError(f"data.{key} is {opts[key]}; give 1 or more")
    if not 0 < float(opts["speed"]) <= int(opts["frame_size"]) / 4:
        raise DataError(
            f"data.speed is {opts['speed']} pixels per frame; give a number in "
            f"(0, {int(opts['frame_size']) / 4:g}] so that a shape stays trackable"
        )
    return opts


def _make(opts: dict, seed: int, indices: range) -> tuple[list, list]:
    k, m, size = int(opts["context_frames"]), int(opts["future_frames"]), int(opts["frame_size"])
    xs, ys = [], []
    for i in indices:
        rng = np.random.default_rng([seed, 73, i])
        frames, _ = clip(rng, k + m, size, int(opts["objects"]), float(opts["speed"]))
        xs.append(frames[:k, None])  # (k, 1, H, W) images
        ys.append(frames[k:].reshape(m, size * size))  # (m, H*W) vectors
    return xs, ys


def load(config: dict, pattern: str, seed: int) -> datasets.SequenceSet:
    """Train, valid and test clips: `valid_fraction` and `test_fraction` (0.1 each by
    default) of `examples`."""
    opts = _options(config, pattern)
    total = int(opts["examples"])
    n_valid = int(round(total * float(config.get("valid_fraction", 0.1))))
    n_test = int(round(total * float(config.get("test_fraction", 0.1))))
    if total - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise DataError(f"data.examples {total} leaves no clip for one split; give more examples")
    cut = total - n_valid - n_test
    xs, ys = _make(opts, seed, range(cut))
    vx, vy = _make(opts, seed, range(cut, cut + n_valid))
    tx, ty = _make(opts, seed, range(cut + n_valid, total))
    out = datasets.SequenceSet(
        xs, ys, vx, vy, padding=datasets.PADDING[pattern], test_x=tx, test_y=ty
    )
    out.app = FramesApp(out)
    return out


def frame_errors(inputs: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Per-frame MSE (mean over examples and pixels) of `predicted` and of copying the last
    input frame, for future frames 1..m, and their means. inputs (B, k, C, H, W); truth and
    predicted (B, m, C*H*W)."""
    last = inputs[:, -1].reshape(len(inputs), 1, -1)
    model = np.mean((predicted - truth) ** 2, axis=(0, 2))
    copy = np.mean((last - truth) ** 2, axis=(0, 2))
    out = {}
    for j, (a, b) in enumerate(zip(model, copy), start=1):
        out[f"mse_t{j}"], out[f"copy_t{j}"] = float(a), float(b)
    out["mse_mean"], out["copy_mean"] = float(model.mean()), float(copy.mean())
    out["frames_better"] = f"{int(np.sum(model < copy))}/{len(model)}"
    return out


def free_run(model, batch: dict) -> np.ndarray:
    """(B, m, H*W) frames decoded from the model's own predictions (no true frame fed)."""
    out = model.forward(batch, feedback="free")
    return to_numpy(out["predictions"])


def strip(inputs: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """A grey image with three rows of tiles per example: given frames, true future,
    predicted future. inputs (B, k, 1, H, W); truth, predicted (B, m, H*W)."""
    count, k, _, h, w = inputs.shape
    m = truth.shape[1]
    tile_h, tile_w = h * STRIP_SCALE + STRIP_GAP, w * STRIP_SCALE + STRIP_GAP
    image = np.ones((3 * count * tile_h + (count - 1) * STRIP_GAP * 3, max(k, m) * tile_w))
    for e in range(count):
        rows = [inputs[e, :, 0], truth[e].reshape(m, h, w), predicted[e].reshape(m, h, w)]
        for r, tiles in enumerate(rows):
            top = (3 * e + r) * tile_h + e * STRIP_GAP * 3
            for c, tile in enumerate(tiles):
                big = np.kron(np.clip(tile, 0, 1), np.ones((STRIP_SCALE, STRIP_SCALE)))
                left = c * tile_w
                image[top : top + big.shape[0], left : left + big.shape[1]] = big
    return image


def write_strip(path: Path, image: np.ndarray) -> Path:
    """Save a strip as a PNG whose pixels are exactly the array's (Agg, no figure margins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, image, cmap="gray", vmin=0.0, vmax=1.0)
    return path


class FramesApp(App):
    """Per-frame MSE of free-running decoding vs copy-last, and a PNG strip of test clips."""

    def __init__(self, dataset: datasets.SequenceSet, strip_examples: int = 4):
        self.dataset = dataset
        self.strip_examples = strip_examples

    def _arrays(self, model, split: str, batch_size: int, batches: int | None = None):
        inputs, truth, predicted = [], [], []
        for i, batch in enumerate(self.dataset.valid_batches(batch_size, 0, split)):
            if batches is not None and i >= batches:
                break
            inputs.append(np.asarray(batch["x"]))
            truth.append(np.asarray(batch["y"]))
            predicted.append(free_run(model, batch))
        return np.concatenate(inputs), np.concatenate(truth), np.concatenate(predicted)

    def metrics(self, model, split: str, batch_size: int) -> dict:
        return frame_errors(*self._arrays(model, split, batch_size))

    def artifacts(self, model, run_dir: Path, seed: int) -> dict:
        split = "test" if self.dataset.test_x else "valid"
        image = strip(*self._arrays(model, split, self.strip_examples, batches=1))
        return {"frames_png": str(write_strip(Path(run_dir) / "frames.png", image))}


OPTIONS = {
    "examples": {**COUNT, "description": "clips in all splits (default 3000)"},
    "valid_fraction": {**FRACTION, "description": "share of clips for validation (default 0.1)"},
    "test_fraction": {**FRACTION, "description": "share of clips for test (default 0.1)"},
    "frame_size": {
        **COUNT,
        "description": "frames are frame_size x frame_size grey pixels (default 16)",
    },
    "context_frames": {**COUNT, "description": "frames given (k, default 6)"},
    "future_frames": {**COUNT, "description": "frames to predict (m, default 6)"},
    "objects": {**COUNT, "description": "bouncing shapes per clip (default 2)"},
    "speed": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "top speed in pixels per frame (default 1.2)",
    },
}
SOURCES = [
    DataSource(
        "bouncing_frames",
        load,
        OPTIONS,
        "generated bouncing shapes, for future-frame prediction",
        **app_hooks(),
    )
]
