"""Labelled sentences for sequence classification: `text<TAB>label` files (`source: tsv`) or
one file of sentences per label (`source: labelled_lines`, e.g. rt-polarity.pos/.neg).

Tagging (`pattern: many_to_many`, tsv only): a line `tok tok tok<TAB>TAG TAG TAG` gives one tag
per token, so the text is split at whitespace (lower-cased by the word tokenizer; the char
tokenizer takes one tag per character) and the tags are the labels.

Splits: `split: mod10` takes each file's line i into train when i % 10 is 0..7, validation
when 8 and test when 9 (the split suggested beside the shared data sets); `fold: k` (0-9)
turns the wheel by k, test when i % 10 is (9 + k) % 10 and validation one below it, so the ten
folds test every line once (10-fold cross-validation, as Kim 2014 reports); `split: random`
holds out `valid_fraction` (and `test_fraction`) at random. The vocabulary is built from the
training split only (`<pad>` = 0, `<unk>` = 1), so held-out words stay unknown.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError
from seqgraph.spec.registry import DataSource, Encoded
from seqgraph.spec.schema import COUNT, FRACTION
from seqgraph.train.data import PADDING, SequenceSet, read_text

FOLD = {
    "type": "integer",
    "minimum": 0,
    "maximum": 9,
    "description": "with split: mod10, which tenth is the test set: line i when i % 10 is "
    "(9 + fold) % 10, validation one below (default 0: test 9, validation 8)",
}
PAD_MULTIPLE = 8  # batch lengths padded up to a multiple of this (see `train.data.pad`)
TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text: str, words: bool) -> list[str]:
    """Lower-cased words and punctuation (words=True), or characters."""
    text = text.lower()
    return TOKEN.findall(text) if words else list(text)


def _files(config: dict) -> list[Path]:
    root = Path(config.get("root", "."))
    if config.get("path"):
        return [Path(config["path"])]
    files = config.get("files")
    if not files:
        raise DataError(
            f"data.source {config.get('source')!r} needs a file: pass --data PATH "
            "(a file, or the folder that holds data.files)"
        )
    names = files.values() if isinstance(files, dict) else files
    paths = [root / name for name in names]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; pass --data with the folder that holds "
                f"{', '.join(map(str, names))}"
            )
    return paths


def read_rows(config: dict, read_text) -> list[tuple[str, str, int, Path]]:
    """(text, label, line index within its file, file) for every non-blank example."""
    rows = []
    if config.get("source") == "labelled_lines":
        files = config.get("files") or {}
        if not isinstance(files, dict):
            raise DataError(
                "data.files of labelled_lines maps each label to its file: "
                "{pos: rt-polarity.pos, neg: rt-polarity.neg}"
            )
        for (label, _), path in zip(files.items(), _files(config)):
            for index, line in enumerate(read_text(path).splitlines()):
                if line.strip():
                    rows.append((line.strip(), str(label), index, path))
        return rows
    delimiter = config.get("delimiter", "\t")
    for path in _files(config):
        lines = read_text(path).splitlines()
        for index, row in enumerate(csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[-1].strip():
                raise DataError(
                    f"{path}:{index + 1}: expected `text{delimiter!r}label`, got {row!r}"
                )
            rows.append((delimiter.join(row[:-1]), row[-1].strip(), index, path))
    return rows


def split_rows(rows: list, config: dict, seed: int) -> tuple[list, list, list]:
    """(train, valid, test) lists of rows."""
    fold = int(config.get("fold", 0))
    if config.get("split", "random") == "mod10":
        parts: tuple[list, list, list] = ([], [], [])
        for row in rows:
            turned = (row[2] - fold) % 10  # fold 0: test 9, valid 8; fold 1: test 0, valid 9
            parts[0 if turned < 8 else 1 if turned == 8 else 2].append(row)
        return parts
    if fold:
        raise DataError(
            f"data.fold {fold} picks one of the ten parts of `split: mod10`; "
            "set data.split: mod10, or remove fold"
        )
    order = np.random.default_rng([seed, 11]).permutation(len(rows))
    n_valid = int(round(len(rows) * float(config.get("valid_fraction", 0.1))))
    n_test = int(round(len(rows) * float(config.get("test_fraction", 0.0))))
    pick = [rows[i] for i in order]
    return pick[n_valid + n_test :], pick[:n_valid], pick[n_valid : n_valid + n_test]


def _tags(label: str, tagged: bool) -> list[str]:
    return label.split() if tagged else [label]


def _tokens(text: str, words: bool, tagged: bool) -> list[str]:
    """A line's tokens; tagged lines are split at whitespace, where their tags line up."""
    return text.lower().split() if tagged and words else tokenize(text, words)


def encode(config: dict, train: list, held_out: list[list], tagged: bool = False):
    """Labels, vocabulary (from train only) and id arrays for every split; `tagged`: one
    label (tag) per token, for many_to_many."""
    every = train + [row for part in held_out for row in part]
    labels = sorted({tag for row in every for tag in _tags(row[1], tagged)})
    if config.get("labels") is not None:
        allowed = [str(a) for a in config["labels"]]
        for _, label, index, path in every:
            for tag in _tags(label, tagged):
                if tag not in allowed:
                    kind = "tag" if tagged else "label"
                    raise DataError(f"{path}:{index + 1}: {kind} {tag!r} is not one of {allowed}")
        labels = allowed
    words = config.get("tokenizer", "word") == "word"
    tokens = (_tokens(text, words, tagged) for text, *_ in train)
    vocab = vocabulary(("<pad>", "<unk>"), tokens, int(config.get("min_count", 1)))
    index = {t: i for i, t in enumerate(vocab)}

    limit = config.get("max_len")
    label_id = {label: i for i, label in enumerate(labels)}

    def ids(part):
        xs, ys = [], []
        for text, label, line, path in part:
            tokens = _tokens(text, words, tagged)
            if tagged and len(_tags(label, tagged)) != len(tokens):
                raise DataError(
                    f"{path}:{line + 1}: {len(tokens)} tokens but {len(_tags(label, tagged))} "
                    "tags; many_to_many reads one tag per token: `tok tok tok<TAB>TAG TAG TAG`"
                )
            if limit is not None and len(tokens) > limit:
                raise DataError(
                    f"{path}:{line + 1}: {len(tokens)} tokens, more than "
                    f"data.max_len = {limit}; raise max_len or shorten the line"
                )
            xs.append(np.array([index.get(t, 1) for t in tokens] or [1], dtype=np.int64))
            tags = [label_id[tag] for tag in _tags(label, tagged)]
            ys.append(np.array(tags, dtype=np.int64) if tagged else np.int64(tags[0]))
        return xs, ys

    return labels, vocab, ids(train), [ids(part) for part in held_out]


def _check_pattern(config: dict, pattern: str) -> None:
    source = config.get("source", "tsv")
    if pattern == "many_to_one" or (pattern == "many_to_many" and source == "tsv"):
        return
    if pattern == "many_to_many":
        raise DataError(
            "data.source 'labelled_lines' gives one label per line (many_to_one); for a tag "
            "per token use source: tsv with lines `tok tok tok<TAB>TAG TAG TAG`"
        )
    raise DataError(
        f"data.source {source!r} reads many_to_one (a label per line) or, for tsv, "
        f"many_to_many (a tag per token); set model.pattern to one of them, not {pattern}"
    )


def load(config: dict, pattern: str, seed: int) -> SequenceSet:
    """The `tsv` or `labelled_lines` data set: ids of tokens, one label per sentence (or, in
    many_to_many, one tag per token)."""
    _check_pattern(config, pattern)
    rows = read_rows(config, read_text)
    if not rows:
        raise DataError("the data files hold no examples")
    train, valid, test = split_rows(rows, config, seed)
    tagged = pattern == "many_to_many"
    labels, vocab, (xs, ys), held = encode(config, train, [valid, test], tagged)
    (vx, vy), (tx, ty) = held
    padding = {**PADDING[pattern], "multiple": int(config.get("pad_multiple", PAD_MULTIPLE))}
    return SequenceSet(
        xs, ys, vx, vy, vocab=vocab, labels=labels, padding=padding, test_x=tx, test_y=ty
    )


def encode_raw(texts: list[str], config: dict, facts: dict, pattern: str) -> Encoded:
    """Raw sentences as a trained run reads them (the `encode` hook of `predict`): its
    tokenizer, its vocabulary from data.json, `<unk>` for a word it has not seen, and an
    empty sentence as one `<unk>`, as in training."""
    words = config.get("tokenizer", "word") == "word"
    tagged = pattern == "many_to_many"
    return encode_tokens([_tokens(text, words, tagged) for text in texts], facts)


def vocabulary(specials: tuple, sequences, min_count: int) -> list[str]:
    """A training split's vocabulary: `specials` first (their ids are fixed), then every token
    seen at least `min_count` times, sorted; rarer ones will read as `<unk>`. The text
    sources (tsv, conll, parallel) all build theirs so."""
    counts: dict[str, int] = {}
    for sequence in sequences:
        for token in sequence:
            counts[token] = counts.get(token, 0) + 1
    return [*specials, *sorted(t for t, n in counts.items() if n >= min_count)]


def encode_tokens(token_lists: list[list[str]], facts: dict) -> Encoded:
    """Tokens as ids of a trained run's vocabulary (`facts["vocab"]`, from data.json):
    `<unk>` (id 1 when the vocabulary lacks it) for a token it has not seen, counted, and an
    empty input as one `<unk>` step, as in training, so every input gets a record. The
    `encode` hooks of the text sources share it."""
    index = {t: i for i, t in enumerate(facts.get("vocab") or [])}
    unk = index.get("<unk>", 1)
    ids, shown, unknown = [], [], 0
    for tokens in token_lists:
        unknown += sum(t not in index for t in tokens)
        ids.append(np.array([index.get(t, unk) for t in tokens] or [unk], dtype=np.int64))
        shown.append(tokens or ["<unk>"])
    return Encoded(ids, shown, unknown)


def read_inputs(path, config: dict) -> list[str]:
    """The sentences of a file in this source's format, labels (or tags) optional: a line
    with the delimiter loses its last column (the label), a line without is all text."""
    delimiter = config.get("delimiter", "\t")
    if config.get("source") == "labelled_lines":
        delimiter = None
    out = []
    for line in read_text(Path(path)).splitlines():
        if not line.strip():
            continue
        if delimiter and delimiter in line:
            line = line.rsplit(delimiter, 1)[0]
        out.append(line.strip())
    return out


def _options(files: str) -> dict:
    return {
        "path": {"type": "string", "description": "one file (--data FILE sets it)"},
        "root": {"type": "string", "description": "folder that holds `files` (--data FOLDER)"},
        "files": {"type": ["array", "object"], "description": files},
        "split": {"enum": ["random", "mod10"]},
        "fold": FOLD,
        "max_len": {**COUNT, "description": "refuse examples longer than this"},
        "test_fraction": FRACTION,
        "valid_fraction": FRACTION,
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 1},
        "tokenizer": {"enum": ["word", "char"]},
        "min_count": COUNT,
        "pad_multiple": {
            **COUNT,
            "description": "pad each batch to a multiple of this many steps (default 8; "
            "padded steps are masked) so few plan shapes are compiled",
        },
        "labels": {"type": "array"},
    }


SOURCES = [
    DataSource(
        "tsv",
        load,
        _options("a list of files"),
        "rows of text<TAB>label, for sentence classification (many_to_one), or of "
        "tok tok<TAB>TAG TAG, a tag per token (many_to_many)",
        suffixes={".tsv": {}, ".csv": {"delimiter": ","}},
        folder_option="root",
        encode=encode_raw,
        read_inputs=read_inputs,
    ),
    DataSource(
        "labelled_lines",
        load,
        _options("{label: file}"),
        "one file of sentences per label",
        folder_option="root",
        encode=encode_raw,
        read_inputs=read_inputs,
    ),
]
