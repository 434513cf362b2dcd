"""CoNLL-style per-token tagging (`source: conll`, `--data FILE.conll`): one token a line with
its tag, a blank line between sequences, for `pattern: many_to_many`.

    EU<TAB>B-ORG
    rejects<TAB>O
    German<TAB>B-MISC

Columns are split at tabs when a line holds one, else at whitespace; the token is column
`token_column` (default 0, the first) and the tag column `tag_column` (default the last), so
the extra columns of CoNLL-2003 (part of speech, chunk) are ignored unless chosen. Lines
starting with `-DOCSTART-` end a sequence and are skipped, as are comment lines starting with
`#` (CoNLL-U's `# text = ...`; a tab-separated line whose token is `#` is a token).

`level: word` (default): each token is one input id. `level: char`: each of the token's
characters is one input id, tagged with the token's tag, except that a `B-X` tag becomes
`I-X` after the token's first character. That keeps BIO spans well formed (one `B-` per
entity, as a span-level scorer expects) and the token's tag is its first character's, so char
tags read back to token tags exactly; no tag the file lacks is invented (no separator steps).

The vocabulary is built from the training split only (`<pad>` = 0, `<unk>` = 1); the labels
(tags) are those of every split, sorted, or `labels:`. `lowercase` is off by default: casing
is a strong cue for named entities. Splits as for `tsv`: `split: random` holds out
`valid_fraction` (and `test_fraction`) of the sequences, `split: mod10` takes sequence i into
train when i % 10 is 0..7, validation when 8 and test when 9 (`fold: k` turns that by k).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.apps.sentences import (
    FOLD,
    PAD_MULTIPLE,
    encode_tokens,
    split_rows,
    vocabulary,
)
from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource, Encoded
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train.data import PADDING, SequenceSet, need_path, read_text

SPECIALS = ("<pad>", "<unk>")  # ids 0, 1


def _columns(line: str) -> list[str]:
    return line.split("\t") if "\t" in line else line.split()


def _skipped(line: str) -> bool:
    """A `-DOCSTART-` or comment line (a tab-separated `#<TAB>tag` is a token)."""
    if line.startswith("-DOCSTART-"):
        return True
    return line.startswith("#") and not ("\t" in line and line.split("\t")[0] == "#")


def _pick(columns: list[str], config: dict, where: str) -> tuple[str, str]:
    """(token, tag) of a line's columns, as `token_column` and `tag_column` choose."""
    if len(columns) < 2:
        raise DataError(
            f"{where}: expected at least 2 columns (token, tag); got {len(columns)}; "
            "separate the token and its tag with a tab, and sequences with a blank line"
        )
    picked = []
    for option, default in (("token_column", 0), ("tag_column", len(columns) - 1)):
        column = int(config.get(option, default))
        if column >= len(columns):
            raise DataError(
                f"{where}: data.{option} is {column}, but the line has {len(columns)} columns "
                f"(0..{len(columns) - 1}); choose a column every line has"
            )
        picked.append(columns[column].strip())
    token, tag = picked
    if not token or not tag:
        raise DataError(f"{where}: an empty token or tag; give each line `token<TAB>tag`")
    return token, tag


def read_sequences(path: Path, config: dict) -> list[tuple[list[str], list[str], int, Path]]:
    """(tokens, tags, sequence index, file) for every sequence of a CoNLL file."""
    rows: list = []
    tokens: list[str] = []
    tags: list[str] = []

    def close() -> None:
        if tokens:
            rows.append((list(tokens), list(tags), len(rows), path))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            close()
            continue
        if _skipped(line):
            continue
        token, tag = _pick(_columns(line), config, f"{path}:{number}")
        tokens.append(token.lower() if config.get("lowercase", False) else token)
        tags.append(tag)
    close()
    return rows


def units(tokens: list[str], tags: list[str], level: str) -> tuple[list[str], list[str]]:
    """The model's steps and their tags: the tokens, or (`char`) their characters, a `B-X`
    becoming `I-X` after a token's first character."""
    if level != "char":
        return tokens, tags
    chars, char_tags = [], []
    for token, tag in zip(tokens, tags):
        inside = "I-" + tag[2:] if tag.startswith("B-") else tag
        chars.extend(token)
        char_tags.extend([tag] + [inside] * (len(token) - 1))
    return chars, char_tags


def _labels(config: dict, rows: list) -> list[str]:
    found = sorted({tag for _, tags, *_ in rows for tag in tags})
    if config.get("labels") is None:
        return found
    allowed = [str(a) for a in config["labels"]]
    for _, tags, index, path in rows:
        for tag in tags:
            if tag not in allowed:
                raise DataError(
                    f"{path}: sequence {index + 1}: tag {tag!r} is not one of {allowed}; "
                    "add it to data.labels or drop data.labels"
                )
    return allowed


def _ids(part: list, index: dict, label_id: dict, limit) -> tuple[list, list]:
    xs, ys = [], []
    for steps, tags, number, path in part:
        if limit is not None and len(steps) > limit:
            raise DataError(
                f"{path}: sequence {number + 1} has {len(steps)} steps, more than "
                f"data.max_len = {limit}; raise max_len or split the sequence"
            )
        xs.append(np.array([index.get(u, 1) for u in steps], dtype=np.int64))
        ys.append(np.array([label_id[t] for t in tags], dtype=np.int64))
    return xs, ys


def load(config: dict, pattern: str, seed: int) -> SequenceSet:
    """The `conll` data set: per step an input id and a tag id (many_to_many)."""
    if pattern != "many_to_many":
        raise DataError(
            "data.source 'conll' gives one tag per token; set model.pattern: many_to_many, "
            f"not {pattern}"
        )
    path = need_path(config, "CoNLL file")
    level = config.get("level", "word")
    rows = [(*units(t, g, level), i, p) for t, g, i, p in read_sequences(path, config)]
    if not rows:
        raise DataError(f"{path}: no sequences; write `token<TAB>tag` lines")
    train, valid, test = split_rows(rows, config, seed)
    if not train:
        raise DataError(f"{path}: {len(rows)} sequences leave none for training")
    labels = _labels(config, rows)
    vocab = vocabulary(SPECIALS, (steps for steps, *_ in train), int(config.get("min_count", 1)))
    index = {u: i for i, u in enumerate(vocab)}
    label_id = {t: i for i, t in enumerate(labels)}
    limit = config.get("max_len")
    (xs, ys), (vx, vy), (tx, ty) = (
        _ids(part, index, label_id, limit) for part in (train, valid, test)
    )
    padding = {**PADDING[pattern], "multiple": int(config.get("pad_multiple", PAD_MULTIPLE))}
    return SequenceSet(
        xs, ys, vx, vy, vocab=vocab, labels=labels, padding=padding, test_x=tx, test_y=ty
    )


def encode_raw(texts: list[str], config: dict, facts: dict, pattern: str) -> Encoded:
    """Raw sentences as a trained tagger reads them (the `encode` hook of `predict`): tokens
    split at whitespace, lower-cased if the run was, each token (`level: word`) or character
    (`level: char`) one step of the run's vocabulary (`encode_tokens`)."""
    lower, level = bool(config.get("lowercase", False)), config.get("level", "word")
    steps = []
    for text in texts:
        words = (text.lower() if lower else text).split()
        steps.append(units(words, ["O"] * len(words), level)[0])
    return encode_tokens(steps, facts)


CONLL_SUFFIXES = (".conll", ".bio", ".iob")


def read_inputs(path, config: dict) -> list[str]:
    """The sentences of a data file: in a CoNLL file (by its suffix), each sequence's tokens
    (column `token_column`) joined by spaces, tags optional; in any other file (`.txt`), one
    sentence a line, as standard input gives them. The suffix decides because the content
    cannot: a line of words reads as CoNLL columns."""
    lines = read_text(Path(path)).splitlines()
    if Path(path).suffix.lower() not in CONLL_SUFFIXES:
        return [line.strip() for line in lines if line.strip()]
    column = int(config.get("token_column", 0))
    sentences: list[str] = []
    words: list[str] = []
    for line in [*lines, ""]:
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(" ".join(words))
                words = []
        elif not _skipped(line):
            columns = _columns(line)
            words.append(columns[column] if column < len(columns) else columns[0])
    return sentences


OPTIONS = {
    "path": {"type": "string", "description": "the CoNLL file (--data FILE sets it)"},
    "token_column": {
        "type": "integer",
        "minimum": 0,
        "description": "0-based column of the token (default 0)",
    },
    "tag_column": {
        "type": "integer",
        "minimum": 0,
        "description": "0-based column of the tag (default: the last)",
    },
    "level": {"enum": ["word", "char"], "description": "a step per token (word) or character"},
    "lowercase": {"type": "boolean", "description": "lower-case tokens (default false)"},
    "split": {"enum": ["random", "mod10"]},
    "fold": FOLD,
    "valid_fraction": {**FRACTION, "description": "share of sequences held out (default 0.1)"},
    "test_fraction": {**FRACTION, "description": "share held out for test (default 0)"},
    "min_count": {**COUNT, "description": "rarer training tokens become <unk> (default 1)"},
    "max_len": {**COUNT, "description": "refuse sequences longer than this"},
    "labels": {"type": "array", "description": "the tags, in id order (default: sorted)"},
    "pad_multiple": {
        **COUNT,
        "description": "pad each batch to a multiple of this many steps (default 8)",
    },
}

SOURCES = [
    DataSource(
        "conll",
        load,
        OPTIONS,
        "token<TAB>tag a line, a blank line between sequences (many_to_many tagging)",
        suffixes={suffix: {} for suffix in CONLL_SUFFIXES},
        encode=encode_raw,
        read_inputs=read_inputs,
    ),
]
