"""Shape captioning data (`data.source: shape_captions`): images of 1-3 coloured shapes and
captions from a small grammar, deterministic for a seed.

    caption  := object | object REL object | object REL object REL object
    object   := "a" COLOUR SHAPE
    REL      := "left of" (shapes in a row) | "above" (shapes in a column)

Shapes sit in a row or a column, one per slot, with the cross-axis offset kept below the
along-axis one, so "left of" and "above" are never ambiguous. Each image has one caption
(objects listed left to right, or top to bottom), so exact match is meaningful. Some
colour-shape pairs (`held_out`) never appear in a training or validation image; the test split
holds `test_examples` images of seen pairs, then as many that each contain a held-out pair.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from seqgraph.apps import shapes
from seqgraph.apps.base import app_hooks
from seqgraph.apps.caption_app import CaptionApp
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train.data import PADDING, SequenceSet

SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2: padding (weight 0), start, end
BOS, EOS = 1, 2
RELATIONS = {"row": "left of", "column": "above"}
DEFAULTS = {
    "image_size": 32,
    "examples": 6000,
    "test_examples": 300,
    "max_shapes": 3,
    "valid_fraction": 0.1,
    "held_out": ["blue triangle", "yellow circle"],
}
MIN_IMAGE = 16


class Shape(NamedTuple):
    colour: str
    kind: str
    y: float
    x: float
    radius: float


def vocabulary() -> list[str]:
    """Specials, then every word the grammar can produce (fixed, so runs share ids)."""
    words = ["a", *" ".join(RELATIONS.values()).split(), *shapes.COLOURS, *shapes.SHAPES]
    return [*SPECIALS, *dict.fromkeys(words)]


def options(config: dict) -> dict:
    """The data section's caption options with defaults, checked: DataError names the fix."""
    out = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if int(out["image_size"]) < MIN_IMAGE:
        raise DataError(
            f"data.image_size is {out['image_size']}; three shapes need at least {MIN_IMAGE} "
            "pixels: use image_size: 24 or 32"
        )
    if not 1 <= int(out["max_shapes"]) <= 3:
        raise DataError(f"data.max_shapes is {out['max_shapes']}; the grammar has 1 to 3 shapes")
    pairs = all_pairs()
    held = [tuple(str(item).split()) for item in out["held_out"]]
    for item, pair in zip(out["held_out"], held):
        if pair not in pairs:
            raise DataError(
                f"data.held_out: {item!r} is not 'colour shape'; colours "
                f"{', '.join(shapes.COLOURS)}, shapes {', '.join(shapes.SHAPES)}"
            )
    seen = [p for p in pairs if p not in held]
    for index, word in ((0, "colour"), (1, "shape")):
        missing = sorted({p[index] for p in pairs} - {p[index] for p in seen})
        if missing:
            raise DataError(
                f"data.held_out removes every pair with the {word} {missing[0]!r}; "
                "hold out fewer pairs so each word is still seen in training"
            )
    if len(seen) < int(out["max_shapes"]):
        raise DataError("data.held_out leaves fewer seen pairs than max_shapes; hold out fewer")
    n_valid = round(int(out["examples"]) * float(out["valid_fraction"]))
    if not 1 <= n_valid < int(out["examples"]):
        raise DataError(
            f"data.examples ({out['examples']}) with valid_fraction {out['valid_fraction']} "
            "leaves no training or no validation images; use more examples"
        )
    return {**out, "held_out": held, "seen": seen}


def all_pairs() -> list[tuple[str, str]]:
    return [(colour, kind) for colour in shapes.COLOURS for kind in shapes.SHAPES]


def place(rng: np.random.Generator, pairs: list, size: int) -> tuple[list[Shape], str]:
    """Shapes for `pairs` in slots along a row or column, and that arrangement's name."""
    arrangement = "row" if rng.random() < 0.5 else "column"
    count = len(pairs)
    slot = size / max(count, 2)
    radius = rng.uniform(0.36, 0.44) * slot  # as big as the slot allows: 4-5 px in 32
    room = max(0.0, slot / 2 - radius - 0.5)  # how far a centre may move in its slot
    along = (np.arange(count) + 0.5) * slot + rng.uniform(-room, room, count)
    if count == 1:
        along = rng.uniform(radius + 1, size - radius - 1, 1)
    # one band across the axis, with a jitter kept well under the gap between slots
    base = rng.uniform(radius + 2, size - radius - 2)
    across = base + rng.uniform(-1.5, 1.5, count)
    ys, xs = (across, along) if arrangement == "row" else (along, across)
    out = [Shape(c, k, float(y), float(x), float(radius)) for (c, k), y, x in zip(pairs, ys, xs)]
    return out, arrangement


def render(scene: list[Shape], size: int) -> np.ndarray:
    """The (3, size, size) float32 image of a scene on black."""
    canvas = np.zeros((3, size, size), dtype=np.float32)
    for s in scene:
        shapes.draw(canvas, s.kind, shapes.COLOURS[s.colour], s.y, s.x, s.radius)
    return canvas


def caption(scene: list[Shape], arrangement: str) -> list[str]:
    """The scene's one caption: objects in reading order joined by the arrangement's relation."""
    key = (lambda s: s.x) if arrangement == "row" else (lambda s: s.y)
    words: list[str] = []
    for i, s in enumerate(sorted(scene, key=key)):
        if i:
            words += RELATIONS[arrangement].split()
        words += ["a", s.colour, s.kind]
    return words


def scenes(rng, count: int, opts: dict, must_hold: bool) -> list[tuple[list[Shape], str]]:
    """`count` random scenes of seen pairs; with `must_hold`, each has one held-out pair."""
    out = []
    for _ in range(count):
        n = int(rng.integers(1, opts["max_shapes"] + 1))
        pool = list(opts["seen"])
        chosen = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
        if must_hold:
            chosen[int(rng.integers(n))] = opts["held_out"][
                int(rng.integers(len(opts["held_out"])))
            ]
        out.append(place(rng, chosen, int(opts["image_size"])))
    return out


def encode(words: list[str], index: dict) -> np.ndarray:
    return np.array([index[w] for w in words] + [EOS], dtype=np.int64)


def load(config: dict, pattern: str, seed: int) -> SequenceSet:
    """Train/valid images of seen pairs; test = seen images, then images with held-out pairs."""
    if pattern != "one_to_many":
        raise DataError(
            f"data.source shape_captions makes image -> caption data; set model.pattern: "
            f"one_to_many (not {pattern})"
        )
    opts = options(config)
    size, vocab = int(opts["image_size"]), vocabulary()
    index = {w: i for i, w in enumerate(vocab)}

    def make(stream: int, count: int, must_hold: bool = False):
        drawn = scenes(np.random.default_rng([seed, stream]), count, opts, must_hold)
        return [render(s, size) for s, _ in drawn], [encode(caption(*d), index) for d in drawn]

    xs, ys = make(31, int(opts["examples"]))
    n_valid = int(round(len(xs) * float(opts["valid_fraction"])))
    seen_x, seen_y = make(32, int(opts["test_examples"]))
    unseen = int(opts["test_examples"]) if opts["held_out"] else 0
    unseen_x, unseen_y = make(33, unseen, must_hold=True)
    app = CaptionApp(vocab, EOS, len(seen_x))
    dataset = SequenceSet(
        xs[n_valid:],
        ys[n_valid:],
        xs[:n_valid],
        ys[:n_valid],
        vocab=vocab,
        padding=PADDING["one_to_many"],
        test_x=seen_x + unseen_x,
        test_y=seen_y + unseen_y,
        app=app,
    )
    app.dataset = dataset
    return dataset


OPTIONS = {
    "examples": {**COUNT, "description": "training and validation images (default 6000)"},
    "valid_fraction": {**FRACTION, "description": "share of examples for validation (0.1)"},
    "image_size": {
        **COUNT,
        "description": "images are 3 x image_size x image_size (default 32)",
    },
    "max_shapes": {
        "type": "integer",
        "minimum": 1,
        "maximum": 3,
        "description": "1 to max_shapes shapes per image (default 3)",
    },
    "held_out": {
        "type": "array",
        "items": {"type": "string"},
        "description": "'colour shape' pairs kept out of training and validation, tested "
        "apart (default [blue triangle, yellow circle])",
    },
    "test_examples": {
        **COUNT,
        "description": "test images of seen pairs, and as many with held-out pairs (default 300)",
    },
}
SOURCES = [
    DataSource(
        "shape_captions",
        load,
        OPTIONS,
        "generated images of coloured shapes and their captions (BLEU)",
        **app_hooks(),
    )
]
