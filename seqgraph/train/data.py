"""Data sources for `seqgraph run`: each yields the batch at a given step, deterministically.

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches it
would have seen, and the only cursor to save is the step. Two shapes of data:
- streams (characters of a text): B parallel streams read in windows of `seq_len`, with the
  hidden state carried from one window to the next (truncated BPTT);
- sequence sets (arrays, and what applications generate or read): shuffled per epoch,
  bucketed by length and zero-padded with `lengths`.

Core sources are the generic formats that hold no task: `python_stdlib` (the default: text
every Python installation has), `text` (any UTF-8 file as a character stream) and `npz`
(arrays x, y, lengths). They are registered here, beside the loaders they share with every
application (`Stream`, `SequenceSet`, `pad`). Everything that knows a task (labelled
sentences, synthetic tasks, spoken digits, audio, video, captions) is an application in
`seqgraph.apps` and registers its own sources (`spec.registry`); this module names none.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError
from seqgraph.spec import registry
from seqgraph.spec.schema import COUNT, DEFAULT_SOURCE, FRACTION

STDLIB_CHARS = 2_000_000  # enough Python source for a few minutes of training
PRINTABLE = "\t\n" + "".join(chr(c) for c in range(32, 127))


@dataclass
class Stream:
    """One long sequence of ids, cut into B parallel streams and windows of `seq_len`."""

    train: np.ndarray
    valid: np.ndarray
    vocab: list[str]
    kind: str = "stream"
    app: object | None = None  # state an application keeps for its metrics (core: unread)

    def windows(self, batch_size: int, seq_len: int, stride: int) -> int:
        windows = (len(self.train) // batch_size - 1 - seq_len) // stride + 1
        if windows < 1:
            raise DataError(
                f"the text has {len(self.train)} training characters, too few for "
                f"batch_size {batch_size} x seq_len {seq_len}; use smaller ones"
            )
        return windows

    def batch_at(
        self, step: int, batch_size: int, seq_len: int, seed: int, stride: int | None = None
    ) -> dict:
        """Window `step` of the B streams, truncated BPTT(k1=stride, k2=seq_len): windows
        start every `stride` characters, gradients reach back `seq_len` steps, and only the
        last `stride` steps add loss (except in the first window). `reset` says the carried
        state starts anew; the state to carry is the one after `stride` steps."""
        stride = stride or seq_len
        w = step % self.windows(batch_size, seq_len, stride)
        streams = self.train[: batch_size * (len(self.train) // batch_size)]
        streams = streams.reshape(batch_size, -1)
        start = w * stride
        return {
            "x": streams[:, start : start + seq_len],
            "y": streams[:, start + 1 : start + seq_len + 1],
            "reset": w == 0,
            "loss_from": 0 if w == 0 else seq_len - stride,
        }

    def valid_batches(self, batch_size: int, seq_len: int, split: str = "valid"):
        if split == "test":
            raise DataError(
                "a text stream has a train/validation split only (valid_fraction); "
                "use --split valid"
            )
        data = self.valid
        width = (len(data) - 1) // batch_size
        if width < 2:
            return
        xs = data[: batch_size * width].reshape(batch_size, width)
        ys = data[1 : batch_size * width + 1].reshape(batch_size, width)
        for start in range(0, width - seq_len + 1, seq_len):
            yield {
                "x": xs[:, start : start + seq_len],
                "y": ys[:, start : start + seq_len],
                "carry": True,
            }

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise DataError(f"characters {missing[:5]} are not in the vocabulary of this run")
        return np.array([index[c] for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


@dataclass
class SequenceSet:
    """Variable-length examples with one target each (or one per step), padded per batch."""

    x: list  # per example: (T,) ids or (T, F) floats, or one (F,) context
    y: list
    valid_x: list
    valid_y: list
    vocab: list[str] | None = None
    labels: list[str] | None = None
    kind: str = "sequences"
    padding: dict = field(default_factory=dict)  # keyword arguments of `pad` for this pattern
    test_x: list = field(default_factory=list)
    test_y: list = field(default_factory=list)
    app: object | None = None  # state an application keeps for its metrics (core: unread)

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-len(self.x) // batch_size))

    def batch_at(
        self, step: int, batch_size: int, seq_len: int, seed: int, stride: int | None = None
    ) -> dict:
        per_epoch = self.batches_per_epoch(batch_size)
        epoch, index = divmod(step, per_epoch)
        order = _bucketed_order(self.x, batch_size, np.random.default_rng([seed, epoch]))
        chosen = order[index * batch_size : (index + 1) * batch_size]
        return pad([self.x[i] for i in chosen], [self.y[i] for i in chosen], **self.padding)

    def valid_batches(self, batch_size: int, seq_len: int, split: str = "valid"):
        xs, ys = (self.test_x, self.test_y) if split == "test" else (self.valid_x, self.valid_y)
        if split == "test" and not xs:
            raise DataError(
                "this data set has no test split; use split: mod10 or "
                "test_fraction in the data section"
            )
        for start in range(0, len(xs), batch_size):
            yield pad(
                xs[start : start + batch_size], ys[start : start + batch_size], **self.padding
            )


def _bucketed_order(xs: list, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle, then sort within chunks of 50 batches by length so a batch pads little."""
    order = rng.permutation(len(xs))
    chunk = batch_size * 50
    parts = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        parts.append(part[np.argsort([len(xs[i]) for i in part], kind="stable")])
    order = np.concatenate(parts) if parts else order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def pad(
    xs: list,
    ys: list,
    x_time: bool = True,
    y_time: bool = False,
    y_own_lengths: bool = False,
    multiple: int = 1,
) -> dict:
    """Zero-pad lists of examples into a batch. `x_time`/`y_time`: the examples have a time
    axis; `y_own_lengths`: targets have their own lengths (`y_lengths`, for decoders);
    `multiple`: pad the time axis up to a multiple of this. Padded steps are masked, so the
    numbers do not change, but bucketed batches then come in a few lengths, and a model
    compiles (and keeps in memory) one plan per length."""

    def steps(lengths) -> int:
        return -(-int(lengths.max()) // multiple) * multiple

    out = {}
    if x_time:
        lengths = np.array([len(x) for x in xs], dtype=np.int64)
        out["x"], out["lengths"] = _pad_stack(xs, steps(lengths)), lengths
    else:
        out["x"] = np.stack([np.asarray(x) for x in xs])
    if y_time:
        y_lengths = np.array([len(y) for y in ys], dtype=np.int64)
        out["y"] = _pad_stack(ys, steps(y_lengths))
        if y_own_lengths:
            out["y_lengths"] = y_lengths
    else:
        out["y"] = np.stack([np.asarray(y) for y in ys])
    return out


def _pad_stack(items: list, length: int) -> np.ndarray:
    first = np.asarray(items[0])
    out = np.zeros((len(items), length) + first.shape[1:], dtype=first.dtype)
    for i, item in enumerate(items):
        out[i, : len(item)] = item
    return out


PADDING = {  # by pattern: which of x and y have a time axis to pad (`pad`)
    "many_to_many": {"x_time": True, "y_time": True},
    "many_to_one": {"x_time": True, "y_time": False},
    "one_to_one": {"x_time": False, "y_time": False},
    "one_to_many": {"x_time": False, "y_time": True, "y_own_lengths": True},
    "encoder_decoder": {"x_time": True, "y_time": True, "y_own_lengths": True},
}


def load(config: dict, pattern: str, seed: int):
    """The dataset a spec's `data:` section describes (`source` picks the registered loader)."""
    return registry.source(source_of(config)).load(config, pattern, seed)


def source_of(config: dict) -> str:
    """The name of the data source of a `data:` section."""
    return config.get("source", DEFAULT_SOURCE)


def data_config(spec_data: dict, path: str | None) -> dict:
    """The `data:` section a run reads: the spec's, with `--data PATH` applied. A folder sets
    the source's `folder_option` (data.root of labelled sentences); a file sets data.path and,
    under the default source, picks the source that claims its suffix (`suffixes`, e.g. .npz) or
    `text`, with that suffix's options (a .csv's delimiter) as defaults."""
    config = dict(spec_data)
    if not path:
        return config
    record = registry.source(source_of(config))
    if Path(path).is_dir() and record.folder_option != "path":
        config[record.folder_option] = path
        return config
    config["path"] = path
    if source_of(config) == DEFAULT_SOURCE:
        suffix = Path(path).suffix.lower()
        config["source"] = "text"
        for name, other in registry.sources().items():
            if suffix in other.suffixes:
                config["source"] = name
                for key, value in other.suffixes[suffix].items():
                    config.setdefault(key, value)
                break
    return config


def _need_path(config: dict) -> Path:
    if not config.get("path"):
        raise DataError(
            f"data.source {config.get('source')!r} needs a file: pass --data PATH "
            "or set data.path in the spec"
        )
    path = Path(config["path"])
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass --data PATH with an existing file")
    return path


def python_stdlib_text(max_chars: int) -> str:
    """The source of the Python standard library: text that every Python installation has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = "".join(c for c in text if c in PRINTABLE)
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def read_text(path: Path) -> str:
    """A UTF-8 file's text; DataError names the line of a byte that is not UTF-8."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte {exc.start}); convert the file to UTF-8"
        ) from None


def _stream(text: str, valid_fraction: float, alphabet: str | None) -> Stream:
    vocab = sorted(set(alphabet if alphabet is not None else text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    cut = int(len(ids) * (1 - valid_fraction))
    return Stream(ids[:cut], ids[cut:], vocab)


def hold_out(xs, ys, valid_fraction, seed, padding, **extra) -> SequenceSet:
    """A SequenceSet that holds out `valid_fraction` of the examples at random (seeded)."""
    if not xs:
        raise DataError("the data set has no examples")
    order = np.random.default_rng([seed, 11]).permutation(len(xs))
    n_valid = int(round(len(xs) * valid_fraction))
    valid, train = order[:n_valid], order[n_valid:]
    pick = lambda items, idx: [items[i] for i in idx]  # noqa: E731
    return SequenceSet(
        pick(xs, train), pick(ys, train), pick(xs, valid), pick(ys, valid), padding=padding, **extra
    )


def _npz(path: Path, config: dict, valid_fraction, seed, padding) -> SequenceSet:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(f"{path}: missing array {name!r}; it holds {list(arrays)}")
    x, y = arrays["x"], arrays["y"]
    for name, array in (("x", x), ("y", y)):
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            row = int(np.argwhere(~np.isfinite(array))[0][0])
            raise DataError(f"{path}: array {name!r} has NaN or Inf (example {row})")
    lengths = (
        arrays["lengths"]
        if "lengths" in arrays
        else np.full(len(x), x.shape[1] if padding["x_time"] else 1)
    )
    if len(x) != len(y) or len(lengths) != len(x):
        raise DataError(f"{path}: x, y and lengths must have the same number of examples")
    if padding["x_time"] and (lengths.min() < 1 or lengths.max() > x.shape[1]):
        row = int(np.argmax((lengths < 1) | (lengths > x.shape[1])))
        raise DataError(
            f"{path}: lengths must lie in 1..{x.shape[1]}; example {row} has length {lengths[row]}"
        )
    limit = config.get("max_len")
    if limit is not None and padding["x_time"] and lengths.max() > limit:
        row = int(np.argmax(lengths > limit))
        raise DataError(
            f"{path}: example {row} has {lengths[row]} steps, more than data.max_len = {limit}"
        )
    xs = [x[i, : lengths[i]] if padding["x_time"] else x[i] for i in range(len(x))]
    ys = [
        y[i, : lengths[i]] if padding["y_time"] and not padding.get("y_own_lengths") else y[i]
        for i in range(len(y))
    ]
    return hold_out(xs, ys, valid_fraction, seed, padding)


def describe(dataset) -> dict:
    """Facts about a dataset that a run saves beside its checkpoints."""
    out = {"kind": dataset.kind, "vocab": getattr(dataset, "vocab", None)}
    if isinstance(dataset, SequenceSet):
        out.update(
            labels=dataset.labels,
            train=len(dataset.x),
            valid=len(dataset.valid_x),
            test=len(dataset.test_x),
        )
    else:
        out.update(train=len(dataset.train), valid=len(dataset.valid))
    return json.loads(json.dumps(out))


def _load_stdlib(config: dict, pattern: str, seed: int) -> Stream:
    text = python_stdlib_text(int(config.get("max_chars", STDLIB_CHARS)))
    return _stream(text, float(config.get("valid_fraction", 0.1)), PRINTABLE)


def _load_text(config: dict, pattern: str, seed: int) -> Stream:
    text = read_text(_need_path(config))
    return _stream(text, float(config.get("valid_fraction", 0.1)), None)


def _load_npz(config: dict, pattern: str, seed: int) -> SequenceSet:
    valid_fraction = float(config.get("valid_fraction", 0.1))
    return _npz(_need_path(config), config, valid_fraction, seed, PADDING[pattern])


_PATH = {"type": "string", "description": "the file (--data PATH sets it)"}
_VALID = {**FRACTION, "description": "share held out for validation (default 0.1)"}
CORE_SOURCES = [
    registry.DataSource(
        DEFAULT_SOURCE,
        _load_stdlib,
        {"max_chars": COUNT, "valid_fraction": _VALID},
        "the source of the Python standard library as a character stream",
    ),
    registry.DataSource(
        "text",
        _load_text,
        {"path": _PATH, "valid_fraction": _VALID},
        "a UTF-8 file as a character stream (the last valid_fraction held out)",
    ),
    registry.DataSource(
        "npz",
        _load_npz,
        {
            "path": _PATH,
            "valid_fraction": _VALID,
            "max_len": {**COUNT, "description": "refuse examples longer than this"},
        },
        "arrays x, y and optional lengths",
        suffixes={".npz": {}},
    ),
]
registry.register_app("core", CORE_SOURCES)
