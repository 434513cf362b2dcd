"""Parallel text for sequence-to-sequence models (`source: parallel`, `pattern:
encoder_decoder`): `source<TAB>target` a line, e.g. a word and its reversal.

    stone<TAB>enots
    river<TAB>revir
    cat<TAB>tac

Columns after the second are ignored (Tatoeba/Anki exports carry an attribution there); blank
lines and lines starting with `#` are skipped. The source and the target each have their own
tokenizer (`source_level`, `target_level`: `char`, the default, or `word`, split at
whitespace; `lowercase` lower-cases both) and their own vocabulary, built from the training
split only:
- input (`vocab`): `<pad>` = 0, `<unk>` = 1, then the source tokens;
- target (`labels`): `<pad>` = 0, `<bos>` = 1, `<eos>` = 2, `<unk>` = 3, then the target
  tokens. A spec sets `model.bos: 1`. Every target ends with `<eos>`, and its `y_lengths`
  count that step, so the decoder learns where to stop, and padded steps after it add no loss.
`vocab: auto` sizes the input from `vocab` and the target from `labels`.

Splits: `valid_fraction` (and `test_fraction`) of the lines held out at random, seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.apps.sentences import encode_tokens, split_rows, vocabulary
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource, Encoded
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train.data import PADDING, SequenceSet, need_path, read_text

SOURCE_SPECIALS = ("<pad>", "<unk>")  # ids 0, 1
TARGET_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
BOS, EOS = 1, 2


def tokens(text: str, level: str, lowercase: bool = False) -> list[str]:
    """A side's tokens: its characters (`char`) or its whitespace-separated words (`word`)."""
    text = text.lower() if lowercase else text
    return text.split() if level == "word" else list(text)


def read_pairs(path: Path, config: dict) -> list[tuple[list[str], list[str], int, Path]]:
    """(source tokens, target tokens, line index, file) for every pair of a file."""
    lower = bool(config.get("lowercase", False))
    levels = config.get("source_level", "char"), config.get("target_level", "char")
    rows = []
    for index, line in enumerate(read_text(path).splitlines()):
        if not line.strip() or line.startswith("#"):
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            raise DataError(
                f"{path}:{index + 1}: expected source<TAB>target; got 1 column; "
                "separate the source and the target with a tab"
            )
        source, target = (tokens(c, level, lower) for c, level in zip(columns[:2], levels))
        if not source or not target:
            side = "source" if not source else "target"
            raise DataError(f"{path}:{index + 1}: the {side} is empty; give both sides text")
        rows.append((source, target, index, path))
    return rows


def _ids(part: list, source_index: dict, target_index: dict, limit) -> tuple[list, list]:
    xs, ys = [], []
    unknown = TARGET_SPECIALS.index("<unk>")
    for source, target, line, path in part:
        if limit is not None and max(len(source), len(target) + 1) > limit:
            raise DataError(
                f"{path}:{line + 1}: {len(source)} source and {len(target)} target tokens "
                f"(+ <eos>), more than data.max_len = {limit}; raise max_len or shorten the line"
            )
        xs.append(np.array([source_index.get(t, 1) for t in source], dtype=np.int64))
        ys.append(np.array([target_index.get(t, unknown) for t in target] + [EOS], np.int64))
    return xs, ys


def load(config: dict, pattern: str, seed: int) -> SequenceSet:
    """The `parallel` data set: source ids, and target ids ending with `<eos>`."""
    if pattern != "encoder_decoder":
        raise DataError(
            "data.source 'parallel' pairs a source with a target sequence; set "
            f"model.pattern: encoder_decoder, not {pattern}"
        )
    path = need_path(config, "source<TAB>target file")
    rows = read_pairs(path, config)
    if not rows:
        raise DataError(f"{path}: no pairs; write `source<TAB>target` lines")
    train, valid, test = split_rows(rows, {**config, "split": "random"}, seed)
    if not train:
        raise DataError(f"{path}: {len(rows)} pairs leave none for training")
    return sequence_set(train, valid, test, config)


def sequence_set(train: list, valid: list, test: list, config: dict) -> SequenceSet:
    """Source and target vocabularies from `train`'s rows (`read_pairs`' tuples), and the
    ids of every split, each target ending with `<eos>` (also the `dates` source's end)."""
    min_count = int(config.get("min_count", 1))
    vocab = vocabulary(SOURCE_SPECIALS, (row[0] for row in train), min_count)
    labels = vocabulary(TARGET_SPECIALS, (row[1] for row in train), min_count)
    source_index = {t: i for i, t in enumerate(vocab)}
    target_index = {t: i for i, t in enumerate(labels)}
    limit = config.get("max_len")
    parts = [_ids(part, source_index, target_index, limit) for part in (train, valid, test)]
    (xs, ys), (vx, vy), (tx, ty) = parts
    padding = PADDING["encoder_decoder"]
    return SequenceSet(
        xs, ys, vx, vy, vocab=vocab, labels=labels, padding=padding, test_x=tx, test_y=ty
    )


def encode_raw(texts: list[str], config: dict, facts: dict, pattern: str) -> Encoded:
    """Raw source sentences as a trained run reads them (the `encode` hook of `predict`): the
    run's `source_level` tokenizer and `lowercase`, its source vocabulary (`encode_tokens`)."""
    level, lower = config.get("source_level", "char"), bool(config.get("lowercase", False))
    return encode_tokens([tokens(text, level, lower) for text in texts], facts)


def read_inputs(path, config: dict) -> list[str]:
    """The sources of a parallel file, targets optional: each line's first column (blank and
    `#` lines skipped, as in training)."""
    return [
        line.split("\t")[0]
        for line in read_text(Path(path)).splitlines()
        if line.strip() and not line.startswith("#")
    ]


_LEVEL = {"enum": ["char", "word"]}
OPTIONS = {
    "path": {"type": "string", "description": "the source<TAB>target file (--data FILE)"},
    "source_level": {**_LEVEL, "description": "source tokens: char (default) or word"},
    "target_level": {**_LEVEL, "description": "target tokens: char (default) or word"},
    "lowercase": {"type": "boolean", "description": "lower-case both sides (default false)"},
    "valid_fraction": {**FRACTION, "description": "share of pairs held out (default 0.1)"},
    "test_fraction": {**FRACTION, "description": "share held out for test (default 0)"},
    "min_count": {**COUNT, "description": "rarer training tokens become <unk> (default 1)"},
    "max_len": {**COUNT, "description": "refuse pairs longer than this (target with <eos>)"},
}

SOURCES = [
    DataSource(
        "parallel",
        load,
        OPTIONS,
        "source<TAB>target a line, separate vocabularies, targets end with <eos> (encoder_decoder)",
        encode=encode_raw,
        read_inputs=read_inputs,
    ),
]
