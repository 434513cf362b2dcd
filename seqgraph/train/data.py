"""Data sources for `seqgraph run`: each yields the batch at a given step, deterministically.

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches it
would have seen, and the only cursor to save is the step. Two shapes of data:
- streams (characters of a text): B parallel streams read in windows of `seq_len`, with the
  hidden state carried from one window to the next (truncated BPTT);
- sequence sets (arrays, and what applications generate or read): shuffled per epoch,
  bucketed by length and zero-padded with `lengths`.

Core sources are the generic formats that hold no task: `python_stdlib` (the default: text
every Python installation has), `text` (any UTF-8 file as a character stream) and `npz`
(arrays x, y and optional lengths, y_lengths, vocab, labels). They are registered here,
beside the loaders they share with every application (`Stream`, `SequenceSet`, `pad`).
Everything that knows a task (labelled sentences, synthetic tasks, spoken digits, audio,
video, captions) is an application in `seqgraph.apps` and registers its own sources
(`spec.registry`); this module names none.
"""

from __future__ import annotations

import codecs
import json
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError
from seqgraph.spec import registry
from seqgraph.spec.schema import COUNT, DEFAULT_SOURCE, FRACTION

STDLIB_CHARS = 2_000_000  # enough Python source for a few minutes of training
PRINTABLE = "\t\n" + "".join(chr(c) for c in range(32, 127))
CHUNK = 1 << 22  # characters (or bytes) read at a time when a text becomes ids
CODE_POINTS = 0x110000  # every Unicode character: the size of a code point -> id table


@dataclass
class Stream:
    """One long sequence of ids, cut into B parallel streams and windows of `seq_len`.

    A text's ids are kept in the smallest dtype that holds its vocabulary (`ids_dtype`); the
    windows are views of them, and only a batch is converted to the int64 ids a model reads."""

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
        x, y = self.window(w, batch_size, seq_len, stride)
        return {
            "x": _model_ids(x),
            "y": _model_ids(y),
            "reset": w == 0,
            "loss_from": 0 if w == 0 else seq_len - stride,
        }

    def window(
        self, w: int, batch_size: int, seq_len: int, stride: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of training window `w`: views of `train`, no copy."""
        streams = self.train[: batch_size * (len(self.train) // batch_size)]
        streams = streams.reshape(batch_size, -1)
        start = w * stride
        return streams[:, start : start + seq_len], streams[:, start + 1 : start + seq_len + 1]

    def held_out(self, split: str) -> np.ndarray:
        """The ids of a held-out split."""
        if split == "test":
            raise DataError(
                "a text stream has a train/validation split only (valid_fraction); "
                "use --split valid"
            )
        return self.valid

    def valid_batches(self, batch_size: int, seq_len: int, split: str = "valid"):
        data = self.held_out(split)
        width = (len(data) - 1) // batch_size
        if width < 2:
            return
        xs = data[: batch_size * width].reshape(batch_size, width)
        ys = data[1 : batch_size * width + 1].reshape(batch_size, width)
        for start in range(0, width - seq_len + 1, seq_len):
            yield {
                "x": _model_ids(xs[:, start : start + seq_len]),
                "y": _model_ids(ys[:, start : start + seq_len]),
                "carry": True,
            }

    def valid_batch_count(self, batch_size: int, seq_len: int, split: str = "valid") -> int:
        """How many batches `valid_batches` yields: 0 when the split is too short for one
        window of batch_size x seq_len (a validation loss would then average nothing)."""
        width = (len(self.held_out(split)) - 1) // batch_size
        return 0 if width < 2 else len(range(0, width - seq_len + 1, seq_len))

    def split_sizes(self) -> dict:
        """Characters (ids) in each split: {"train": n, "valid": n[, "test": n]}."""
        sizes = {"train": len(self.train), "valid": len(self.valid)}
        test = getattr(self, "test", None)
        return sizes if test is None else {**sizes, "test": len(test)}

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
        """The split in batches, in one fixed shuffled order: a run validates on its first
        `train.valid_batches` batches, and a split read in file order (one label's file, then
        the next) would make that prefix one label; shuffled, any prefix is a fair sample.
        The order is the same at every validation and in every run."""
        xs, ys = self.held_out(split)
        order = np.random.default_rng(0).permutation(len(xs))
        for start in range(0, len(xs), batch_size):
            chosen = order[start : start + batch_size]
            yield pad([xs[i] for i in chosen], [ys[i] for i in chosen], **self.padding)

    def held_out(self, split: str) -> tuple[list, list]:
        """(inputs, targets) of a held-out split."""
        if split != "test":
            return self.valid_x, self.valid_y
        if not self.test_x:
            raise DataError(
                "this data set has no test split; hold one out with data.test_fraction "
                "(e.g. 0.1; tsv and labelled_lines also take split: mod10) and train again, "
                "so that no test example is trained on"
            )
        return self.test_x, self.test_y

    def valid_batch_count(self, batch_size: int, seq_len: int, split: str = "valid") -> int:
        """How many batches `valid_batches` yields (0: the split is empty)."""
        return -(-len(self.held_out(split)[0]) // batch_size)

    def split_sizes(self) -> dict:
        """Examples in each split: {"train": n, "valid": n, "test": n}."""
        return {"train": len(self.x), "valid": len(self.valid_x), "test": len(self.test_x)}


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


def need_path(config: dict, kind: str = "file") -> Path:
    """`data.path` as an existing file, or one DataError line naming the fix; `kind` says
    what file the source reads (shared by every source that reads one file)."""
    if not config.get("path"):
        raise DataError(
            f"data.source {config.get('source')!r} needs a file: pass --data PATH "
            "or set data.path in the spec"
        )
    path = Path(config["path"])
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass --data PATH with an existing {kind}")
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


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw or raw.isspace():  # isspace: no stripped copy of a large file
        raise DataError(f"{path}: the file is empty")
    return raw


def _not_utf8(path: Path, raw: bytes, byte: int) -> DataError:
    line = raw[:byte].count(b"\n") + 1
    return DataError(f"{path}:{line}: not UTF-8 (byte {byte}); convert the file to UTF-8")


def read_text(path: Path) -> str:
    """A UTF-8 file's text; DataError names the line of a byte that is not UTF-8."""
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, raw, exc.start) from None


def _utf8_pieces(path: Path, raw: bytes) -> Iterator[str]:
    """The text of UTF-8 bytes, a chunk at a time (the whole text is never one str)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    for start in range(0, len(raw), CHUNK):
        pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
        try:
            yield decoder.decode(view[start : start + CHUNK], final=start + CHUNK >= len(raw))
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, raw, start - pending + exc.start) from None


def _str_pieces(text: str) -> Iterator[str]:
    return (text[start : start + CHUNK] for start in range(0, len(text), CHUNK))


def _code_points(piece: str) -> np.ndarray:
    return np.frombuffer(piece.encode("utf-32-le"), dtype="<u4")


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype for ids 0..vocab_size-1: uint8, uint16, or int32 beyond 65,536."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def corpus_ids(
    pieces: Callable[[], Iterator[str]], alphabet: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """(ids, vocabulary) of a text given as `pieces()`, an iterator of its chunks (called
    twice: once for the vocabulary, once for the ids). The vocabulary is the sorted set of
    characters (of `alphabet`, when given); the ids are one array in `ids_dtype`, filled a
    chunk at a time, so the peak memory is the ids plus one chunk, not an int per character."""
    seen = np.zeros(CODE_POINTS, dtype=bool)
    length = 0
    for piece in pieces():
        seen[_code_points(piece)] = True
        length += len(piece)
    if alphabet is not None:
        allowed = np.zeros(CODE_POINTS, dtype=bool)
        allowed[_code_points(alphabet)] = True
        if np.any(seen & ~allowed):
            missing = [chr(c) for c in np.flatnonzero(seen & ~allowed)[:5]]
            raise DataError(f"characters {missing} are not in the alphabet {alphabet!r}")
        seen = allowed
    points = np.flatnonzero(seen)
    table = np.zeros(CODE_POINTS, dtype=ids_dtype(len(points)))
    table[points] = np.arange(len(points))
    ids = np.empty(length, dtype=table.dtype)
    at = 0
    for piece in pieces():
        ids[at : at + len(piece)] = table[_code_points(piece)]
        at += len(piece)
    return ids, [chr(c) for c in points]


def _model_ids(ids: np.ndarray) -> np.ndarray:
    """A batch of ids as the int64 a model reads (a copy of the batch only, if any)."""
    return ids.astype(np.int64, copy=False)


def _stream(ids: np.ndarray, vocab: list[str], valid_fraction: float) -> Stream:
    cut = int(len(ids) * (1 - valid_fraction))
    return Stream(ids[:cut], ids[cut:], vocab)


def hold_out(
    xs, ys, valid_fraction, seed, padding, test_fraction: float = 0.0, **extra
) -> SequenceSet:
    """A SequenceSet that holds out `valid_fraction` (and `test_fraction`) of the examples at
    random (seeded). The training examples do not depend on `test_fraction` when it is 0."""
    if not xs:
        raise DataError("the data set has no examples")
    order = np.random.default_rng([seed, 11]).permutation(len(xs))
    n_valid = int(round(len(xs) * valid_fraction))
    n_test = int(round(len(xs) * test_fraction))
    if n_valid + n_test >= len(xs):
        raise DataError(
            f"the data set has {len(xs)} examples; valid_fraction {valid_fraction} and "
            f"test_fraction {test_fraction} leave none for training"
        )
    valid, test, train = (
        order[:n_valid],
        order[n_valid : n_valid + n_test],
        order[n_valid + n_test :],
    )
    pick = lambda items, idx: [items[i] for i in idx]  # noqa: E731
    return SequenceSet(
        pick(xs, train),
        pick(ys, train),
        pick(xs, valid),
        pick(ys, valid),
        padding=padding,
        test_x=pick(xs, test),
        test_y=pick(ys, test),
        **extra,
    )


def _npz(path: Path, config: dict, pattern: str, seed: int) -> SequenceSet:
    """The examples of an .npz: `x` and `y` (padded along time), optional `lengths` (input
    steps), `y_lengths` (target steps, for patterns whose targets have their own length),
    `vocab` and `labels` (the names of the ids of x and y, so `vocab: auto` can size them)."""
    padding = PADDING[pattern]
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(
                f"{path}: missing array {name!r}; it holds {list(arrays)}; save the inputs "
                "as x and the targets as y (np.savez(path, x=..., y=...))"
            )
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
    if padding["x_time"]:
        _check_lengths(path, "lengths", lengths, x.shape[1])
    limit = config.get("max_len")
    if limit is not None and padding["x_time"] and lengths.max() > limit:
        row = int(np.argmax(lengths > limit))
        raise DataError(
            f"{path}: example {row} has {lengths[row]} steps, more than data.max_len = {limit}"
        )
    y_lengths, padding = _npz_y_lengths(path, arrays, pattern, lengths)
    xs = [x[i, : lengths[i]] if padding["x_time"] else x[i] for i in range(len(x))]
    ys = [y[i, : y_lengths[i]] if y_lengths is not None else y[i] for i in range(len(y))]
    names = {
        key: _npz_names(path, arrays, key, of) for key, of in (("vocab", "x"), ("labels", "y"))
    }
    dataset = hold_out(
        xs,
        ys,
        float(config.get("valid_fraction", 0.1)),
        seed,
        padding,
        test_fraction=float(config.get("test_fraction", 0.0)),
        **names,
    )
    dataset.read = _npz_read(path, list(arrays), pattern)
    return dataset


def _npz_read(path: Path, keys: list[str], pattern: str) -> str:
    """The line that says which arrays of an .npz were read and which were not (`describe`
    saves it in data.json as `read`): `lengths` only where inputs have a time axis, and
    `y_lengths` only where targets have one."""
    used = {"x", "y", "vocab", "labels"}
    if PADDING[pattern]["x_time"]:
        used.add("lengths")
    if PADDING[pattern]["y_time"]:
        used.add("y_lengths")
    read = [key for key in ("x", "y", "lengths", "y_lengths", "vocab", "labels") if key in keys]
    read = [key for key in read if key in used]
    ignored = [key for key in keys if key not in read]
    line = f"npz {path}: read {', '.join(read)}"
    return line + (f"; ignored: {', '.join(ignored)}" if ignored else "")


def _check_lengths(path: Path, name: str, lengths: np.ndarray, steps: int) -> None:
    if lengths.min() < 1 or lengths.max() > steps:
        row = int(np.argmax((lengths < 1) | (lengths > steps)))
        raise DataError(
            f"{path}: {name} must lie in 1..{steps}; example {row} has length {lengths[row]}"
        )


def _npz_y_lengths(path: Path, arrays, pattern: str, lengths: np.ndarray):
    """(steps of each target to keep, or None for all of y; the padding rule). `y_lengths`
    where targets have their own length: one_to_many, encoder_decoder, and many_to_many when
    they differ from the input's `lengths` (CTC label sequences); else the input's lengths."""
    padding = PADDING[pattern]
    if not padding["y_time"]:
        return None, padding
    y, given = arrays["y"], arrays["y_lengths"] if "y_lengths" in arrays else None
    own = padding.get("y_own_lengths")
    if given is None or (not own and np.array_equal(given, lengths)):
        return (None if own else lengths), padding
    if given.shape != (len(y),) or given.dtype.kind not in "iu":
        raise DataError(f"{path}: y_lengths must be integers, one per example of y")
    _check_lengths(path, "y_lengths", given, y.shape[1])
    return given, {**padding, "y_own_lengths": True}


def _npz_names(path: Path, arrays, key: str, of: str) -> list[str] | None:
    """The names in string array `key` (vocab or labels) of the ids in array `of`, checked."""
    if key not in arrays:
        return None
    names, ids = arrays[key], arrays[of]
    if names.ndim != 1 or names.dtype.kind != "U" or not len(names):
        raise DataError(f"{path}: {key!r} must be a non-empty 1-D array of strings")
    if ids.dtype.kind not in "iu":
        raise DataError(f"{path}: {key!r} names integer ids, but {of!r} holds {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(names)):
        raise DataError(
            f"{path}: {of!r} holds ids {ids.min()}..{ids.max()}, but {key!r} names "
            f"{len(names)} (0..{len(names) - 1})"
        )
    return [str(name) for name in names]


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
        if getattr(dataset, "read", None):  # which arrays of an .npz were read
            out["read"] = dataset.read
    else:
        out.update(train=len(dataset.train), valid=len(dataset.valid))
    return json.loads(json.dumps(out))


def encode_chars(texts: list[str], config: dict, facts: dict, pattern: str) -> registry.Encoded:
    """Raw text as a character-stream run reads it (the `encode` hook of `predict`): one id
    per character of the run's vocabulary; a character it lacks is dropped and counted (a
    character vocabulary has no unknown id)."""
    index = {c: i for i, c in enumerate(facts.get("vocab") or [])}
    ids, tokens, unknown = [], [], 0
    for text in texts:
        kept = [c for c in text if c in index]
        unknown += len(text) - len(kept)
        ids.append(np.array([index[c] for c in kept], dtype=np.int64))
        tokens.append(kept)
    return registry.Encoded(ids, tokens, unknown, "dropped")


def _load_stdlib(config: dict, pattern: str, seed: int) -> Stream:
    text = python_stdlib_text(int(config.get("max_chars", STDLIB_CHARS)))
    ids, vocab = corpus_ids(lambda: _str_pieces(text), PRINTABLE)
    return _stream(ids, vocab, float(config.get("valid_fraction", 0.1)))


def _load_text(config: dict, pattern: str, seed: int) -> Stream:
    path = need_path(config)
    raw = _read_bytes(path)
    ids, vocab = corpus_ids(lambda: _utf8_pieces(path, raw))
    return _stream(ids, vocab, float(config.get("valid_fraction", 0.1)))


def _load_npz(config: dict, pattern: str, seed: int) -> SequenceSet:
    return _npz(need_path(config), config, pattern, seed)


_PATH = {"type": "string", "description": "the file (--data PATH sets it)"}
_VALID = {**FRACTION, "description": "share held out for validation (default 0.1)"}
CORE_SOURCES = [
    registry.DataSource(
        DEFAULT_SOURCE,
        _load_stdlib,
        {"max_chars": COUNT, "valid_fraction": _VALID},
        "the source of the Python standard library as a character stream",
        encode=encode_chars,
    ),
    registry.DataSource(
        "text",
        _load_text,
        {"path": _PATH, "valid_fraction": _VALID},
        "a UTF-8 file as a character stream (the last valid_fraction held out)",
        encode=encode_chars,
    ),
    registry.DataSource(
        "npz",
        _load_npz,
        {
            "path": _PATH,
            "valid_fraction": _VALID,
            "test_fraction": {**FRACTION, "description": "share held out for test (default 0)"},
            "max_len": {**COUNT, "description": "refuse examples longer than this"},
        },
        "arrays x, y and optional lengths, y_lengths, vocab, labels",
        suffixes={".npz": {}},
    ),
]
registry.register_app("core", CORE_SOURCES)
