"""Data formats and their edges: per-token tags in a TSV, an npz's test split, target lengths
and names, a text corpus kept as small ids windowed without copies, and split sizes."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from seqgraph import api
from seqgraph.apps.mulaw import AudioStream
from seqgraph.errors import DataError, SpecError
from seqgraph.train import data as datasets
from seqgraph.train.loop import prepare

TAGGED = "the cat sat\tDT NN VB\nA dog ran home\tDT NN VB NN\n" * 10


def tagger(tmp_path, data: dict, pattern="many_to_many", vocab="auto") -> str:
    spec = {
        "name": "tagger",
        "seed": 1,
        "model": {
            "pattern": pattern,
            "input": {"type": "ids", "vocab": vocab},
            "target": {"type": "ids", "vocab": vocab},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 4}],
        },
        "data": data,
        "train": {"steps": 2, "batch_size": 4, "eval_every": 1000, "sample_length": 3},
    }
    path = tmp_path / "tagger.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


# ---- 1. per-token labels in a TSV ------------------------------------------------------------


def test_tsv_tags_give_one_target_per_token(tmp_path):
    """Used to fail in `pad` with `TypeError: object of type 'numpy.int64' has no len()`."""
    (tmp_path / "tags.tsv").write_text(TAGGED)
    config = {"source": "tsv", "path": str(tmp_path / "tags.tsv"), "valid_fraction": 0.2}
    data = datasets.load(config, "many_to_many", seed=1)  # the seed of `tagger`
    assert data.labels == ["DT", "NN", "VB"]
    for x, y in zip(data.x + data.valid_x, data.y + data.valid_y):
        assert x.shape == y.shape and y.dtype == np.int64
        words = [data.vocab[i] for i in x]
        tags = [data.labels[i] for i in y]
        assert (words, tags) in (
            (["the", "cat", "sat"], ["DT", "NN", "VB"]),
            (["a", "dog", "ran", "home"], ["DT", "NN", "VB", "NN"]),
        )
    batch = data.batch_at(0, 4, 0, seed=0)
    assert batch["y"].shape == batch["x"].shape
    np.testing.assert_array_equal(batch["lengths"], (batch["x"] != 0).sum(axis=1))
    summary = api.train(
        tagger(tmp_path, config), progress=False, out=str(tmp_path / "run"), log=print
    )
    assert summary["steps_done"] == 2
    result = api.evaluate_run(tmp_path / "run")
    assert result["tokens"] == sum(len(y) for y in data.valid_y) and "accuracy" in result


def test_tsv_tag_count_mismatch_names_the_file_and_line(tmp_path):
    (tmp_path / "bad.tsv").write_text("the cat sat\tDT NN VB\na dog ran home\tDT NN VB\n")
    config = {"source": "tsv", "path": str(tmp_path / "bad.tsv")}
    with pytest.raises(DataError, match=r"bad.tsv:2: 4 tokens but 3 tags; many_to_many"):
        datasets.load(config, "many_to_many", seed=0)
    (tmp_path / "odd.tsv").write_text("the cat\tDT NN\nthe dog\tDT XX\n")
    config = {"source": "tsv", "path": str(tmp_path / "odd.tsv"), "labels": ["DT", "NN"]}
    with pytest.raises(DataError, match=r"odd.tsv:2: tag 'XX' is not one of"):
        datasets.load(config, "many_to_many", seed=0)


def test_sentence_sources_refuse_patterns_they_cannot_fill(tmp_path):
    (tmp_path / "pos.txt").write_text("good\n")
    lines = {"source": "labelled_lines", "root": str(tmp_path), "files": {"pos": "pos.txt"}}
    with pytest.raises(DataError, match="labelled_lines' gives one label per line"):
        datasets.load(lines, "many_to_many", seed=0)
    (tmp_path / "s.tsv").write_text("good\tpos\n")
    with pytest.raises(DataError, match="set model.pattern to one of them, not encoder_decoder"):
        datasets.load({"source": "tsv", "path": str(tmp_path / "s.tsv")}, "encoder_decoder", 0)


# ---- 2. npz: test split, target lengths, names -----------------------------------------------


def save_npz(path, n=40, **extra):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 5, (n, 6)), y=rng.integers(0, 3, n), **extra)
    return str(path)


def test_npz_honours_test_fraction_and_keeps_training_examples_without_it(tmp_path):
    path = save_npz(tmp_path / "a.npz")
    plain = datasets.load({"source": "npz", "path": path}, "many_to_one", seed=2)
    zero = datasets.load({"source": "npz", "path": path, "test_fraction": 0}, "many_to_one", 2)
    with_test = datasets.load(
        {"source": "npz", "path": path, "test_fraction": 0.25}, "many_to_one", seed=2
    )
    assert plain.split_sizes() == {"train": 36, "valid": 4, "test": 0}
    assert with_test.split_sizes() == {"train": 26, "valid": 4, "test": 10}
    for a, b in zip(plain.x + plain.valid_x, zero.x + zero.valid_x):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain.valid_x, with_test.valid_x):  # validation does not move
        np.testing.assert_array_equal(a, b)
    assert next(with_test.valid_batches(32, 0, split="test"))["x"].shape == (10, 6)
    with pytest.raises(DataError, match="hold one out with data.test_fraction .* train again"):
        next(plain.valid_batches(32, 0, split="test"))
    with pytest.raises(DataError, match="leave none for training"):
        datasets.load({"source": "npz", "path": path, "test_fraction": 0.95}, "many_to_one", 2)


def test_eval_split_test_works_once_test_fraction_is_set(tmp_path):
    names = {"vocab": np.array(list("abcde")), "labels": np.array(["n", "p", "q"])}
    path = save_npz(tmp_path / "a.npz", **names)
    spec = tagger(tmp_path, {"source": "npz", "path": path, "test_fraction": 0.25}, "many_to_one")
    api.train(spec, progress=False, out=str(tmp_path / "run"), log=print)
    result = api.evaluate_run(tmp_path / "run", split="test")
    assert (result["split"], result["tokens"]) == ("test", 10)


def test_npz_vocab_auto_reads_names_or_says_what_to_add(tmp_path):
    bare = save_npz(tmp_path / "bare.npz")
    with pytest.raises(SpecError, match=r"this data names none.*string arrays `vocab`"):
        api.train(tagger(tmp_path, {"source": "npz", "path": bare}, "many_to_one"))
    named = save_npz(
        tmp_path / "named.npz", vocab=np.array(list("abcde")), labels=np.array(["n", "p", "q"])
    )
    spec, dataset, _ = prepare(tagger(tmp_path, {"source": "npz", "path": named}, "many_to_one"))
    assert (spec.model.input.size, spec.model.target.size) == (5, 3)
    assert dataset.vocab == list("abcde") and dataset.labels == ["n", "p", "q"]
    short = save_npz(tmp_path / "short.npz", vocab=np.array(list("abc")))
    with pytest.raises(DataError, match=r"short.npz: 'x' holds ids 0..4, but 'vocab' names 3"):
        datasets.load({"source": "npz", "path": short}, "many_to_one", 0)


def test_npz_y_lengths_keep_padding_out_of_the_targets(tmp_path):
    """An encoder-decoder's targets have their own lengths; without `y_lengths` being read, a
    model was scored on the padding after each target."""
    x = np.array([[1, 2, 3, 0], [4, 1, 0, 0], [2, 2, 2, 2]])
    y = np.array([[3, 2, 1, 0, 0], [1, 4, 0, 0, 0], [2, 2, 2, 2, 2]])
    lengths, y_lengths = np.array([3, 2, 4]), np.array([3, 2, 5])
    path = tmp_path / "s2s.npz"
    np.savez(path, x=x, y=y, lengths=lengths, y_lengths=y_lengths)
    config = {"source": "npz", "path": str(path), "valid_fraction": 0}
    data = datasets.load(config, "encoder_decoder", seed=0)
    batch = data.batch_at(0, 3, 0, seed=0)
    order = [int(np.flatnonzero((x[:, :2] == row[:2]).all(axis=1))[0]) for row in batch["x"]]
    np.testing.assert_array_equal(batch["y_lengths"], y_lengths[order])
    for row, i in zip(batch["y"], order):
        np.testing.assert_array_equal(row[: y_lengths[i]], y[i, : y_lengths[i]])
        assert not row[y_lengths[i] :].any()
    np.savez(path, x=x, y=y, lengths=lengths, y_lengths=np.array([3, 0, 5]))
    with pytest.raises(DataError, match=r"y_lengths must lie in 1..5; example 1 has length 0"):
        datasets.load(config, "encoder_decoder", seed=0)


def test_npz_ctc_labels_keep_their_own_lengths_in_many_to_many(tmp_path):
    """Label sequences shorter than the input (CTC) carry `y_lengths`; labels equal to the
    input's lengths are cut by `lengths` as before."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 8, 3))
    y = np.zeros((12, 3), dtype=np.int64)
    y_lengths = rng.integers(1, 4, size=12)
    for i, n in enumerate(y_lengths):
        y[i, :n] = rng.integers(1, 4, size=n)
    path = tmp_path / "ctc.npz"
    np.savez(path, x=x, y=y, y_lengths=y_lengths, labels=np.array(["_", "a", "b", "c"]))
    config = {"source": "npz", "path": str(path), "valid_fraction": 0.25}
    data = datasets.load(config, "many_to_many", seed=0)
    batch = data.batch_at(0, 4, 0, seed=0)
    assert batch["x"].shape[1] == 8 and batch["y"].shape[1] == batch["y_lengths"].max()
    spec = {
        "name": "ctc",
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": "auto"},
            "loss": "ctc",
            "layers": [{"cell": "gru", "hidden": 4}],
        },
        "data": config,
        "train": {"steps": 2, "batch_size": 4, "eval_every": 1000},
    }
    (tmp_path / "ctc.yaml").write_text(yaml.safe_dump(spec))
    api.train(str(tmp_path / "ctc.yaml"), progress=False, out=str(tmp_path / "run"), log=print)
    result = api.evaluate_run(tmp_path / "run")
    assert result["tokens"] == sum(len(v) for v in data.valid_y)  # labels, not padding
    same = tmp_path / "same.npz"
    lengths = np.array([3, 2])
    np.savez(
        same, x=np.ones((2, 3), int), y=np.ones((2, 3), int), lengths=lengths, y_lengths=lengths
    )
    plain = datasets.load(
        {"source": "npz", "path": str(same), "valid_fraction": 0}, "many_to_many", 0
    )
    assert "y_lengths" not in plain.batch_at(0, 2, 0, 0) and [len(v) for v in plain.y] == [3, 2]


def test_synthetic_sources_take_a_test_fraction_too():
    config = {"source": "copy", "examples": 50, "symbols": 3, "length": 2, "delay": 1}
    plain = datasets.load(config, "many_to_many", seed=4)
    split = datasets.load({**config, "test_fraction": 0.2}, "many_to_many", seed=4)
    assert split.split_sizes() == {"train": 35, "valid": 5, "test": 10}
    assert plain.split_sizes()["test"] == 0
    assert next(split.valid_batches(64, 0, split="test"))["x"].shape[0] == 10


# ---- 3. a text corpus as small ids, windowed without copies ----------------------------------


def old_stream(text: str, valid_fraction: float):
    """The text loader before ids became small: one Python int per character, as int64."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    cut = int(len(ids) * (1 - valid_fraction))
    return datasets.Stream(ids[:cut], ids[cut:], vocab)


@pytest.mark.parametrize("chunk", [datasets.CHUNK, 5, 7])
def test_text_batches_are_those_of_the_int64_loader(tmp_path, monkeypatch, chunk):
    """Small chunks cut multi-byte characters (é: 2 bytes, →: 3, 😀: 4) between two reads."""
    monkeypatch.setattr(datasets, "CHUNK", chunk)
    text = "Ünïcode → ok 😀\n" * 9 + "def f(x):\n    return x * 2  # é\n" * 20
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    new = datasets.load({"source": "text", "path": str(tmp_path / "t.txt")}, "many_to_many", 0)
    old = old_stream(text, 0.1)
    assert new.vocab == old.vocab and new.train.dtype == np.uint8
    for step in (0, 1, 5, 17):
        for stride in (None, 3):
            a, b = new.batch_at(step, 3, 8, 0, stride), old.batch_at(step, 3, 8, 0, stride)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
                assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype
    pairs = list(zip(new.valid_batches(2, 4), old.valid_batches(2, 4)))
    assert pairs
    for a, b in pairs:
        assert a["x"].dtype == np.int64
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])


@pytest.mark.parametrize("chunk", [datasets.CHUNK, 4, 5, 6])
def test_a_byte_that_is_not_utf8_is_named_by_line_in_any_chunk(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(datasets, "CHUNK", chunk)
    (tmp_path / "l.txt").write_bytes("abc\ndéf\n→ \xe9t\xe9\n".encode() + b"x \xe9t\xe9\n")
    with pytest.raises(DataError, match=r"l.txt:4: not UTF-8 \(byte 21\)"):
        datasets.load({"source": "text", "path": str(tmp_path / "l.txt")}, "many_to_many", 0)
    with pytest.raises(DataError, match=r"l.txt:4: not UTF-8 \(byte 21\)"):
        datasets.read_text(tmp_path / "l.txt")
    (tmp_path / "cut.txt").write_bytes(b"ab\nc\xe2\x86X\n")  # a character cut by a bad byte
    with pytest.raises(DataError, match=r"cut.txt:2: not UTF-8 \(byte 4\)"):
        datasets.load({"source": "text", "path": str(tmp_path / "cut.txt")}, "many_to_many", 0)


def test_corpus_ids_are_small_and_windows_are_views():
    assert [datasets.ids_dtype(n) for n in (2, 256, 257, 65536, 65537)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.int32,
    ]
    wide = "".join(chr(0x4E00 + i) for i in range(300)) * 3
    ids, vocab = datasets.corpus_ids(lambda: datasets._str_pieces(wide))
    assert ids.dtype == np.uint16 and len(vocab) == 300 and vocab == sorted(set(wide))
    stream = datasets._stream(ids, vocab, 0.1)
    assert np.shares_memory(stream.train, ids) and np.shares_memory(stream.valid, ids)
    x, y = stream.window(3, 4, 10, 10)
    assert np.shares_memory(x, ids) and np.shares_memory(y, ids)
    batch = stream.batch_at(3, 4, 10, 0)
    assert batch["x"].dtype == np.int64  # only the batch becomes what a model reads
    np.testing.assert_array_equal(batch["x"], x)


def test_stdlib_text_keeps_its_printable_alphabet():
    data = datasets.load({"max_chars": 5000}, "many_to_many", 0)
    assert data.vocab == sorted(set(datasets.PRINTABLE)) and data.train.dtype == np.uint8
    with pytest.raises(DataError, match="not in the alphabet"):
        datasets.corpus_ids(lambda: iter(["tab\tok é"]), datasets.PRINTABLE)


# ---- 4. the size of each split ---------------------------------------------------------------


def test_split_sizes_and_validation_batch_counts(tmp_path):
    stream = datasets.Stream(np.arange(200) % 7, np.arange(30) % 7, [str(i) for i in range(7)])
    assert stream.split_sizes() == {"train": 200, "valid": 30}
    for batch_size, seq_len in ((2, 5), (4, 7), (4, 8), (16, 2)):
        count = len(list(stream.valid_batches(batch_size, seq_len)))
        assert stream.valid_batch_count(batch_size, seq_len) == count
    assert stream.valid_batch_count(4, 8) == 0  # too short for one window: nothing to average
    audio = AudioStream(np.arange(300) % 5, np.arange(90) % 5, list("01234"), test=np.zeros(9))
    assert audio.split_sizes() == {"train": 300, "valid": 90, "test": 9}
    for split in ("valid", "test"):
        count = len(list(audio.valid_batches(4, 5, split)))
        assert audio.valid_batch_count(4, 5, split) == count
    path = save_npz(tmp_path / "a.npz", n=10)
    empty = datasets.load({"source": "npz", "path": path, "valid_fraction": 0}, "many_to_one", 0)
    assert empty.split_sizes() == {"train": 10, "valid": 0, "test": 0}
    assert empty.valid_batch_count(4, 0) == 0 == len(list(empty.valid_batches(4, 0)))
    some = datasets.load({"source": "npz", "path": path, "valid_fraction": 0.5}, "many_to_one", 0)
    assert some.valid_batch_count(2, 0) == 3 == len(list(some.valid_batches(2, 0)))


def test_validation_batches_are_a_fair_sample_of_a_split_in_file_order():
    """Regression: a run validates on its first `valid_batches` batches, and rt-polarity's
    held-out split is one label's file then the other's; its first 20 batches held 533
    negatives and 107 positives, so validation accuracy and best.npz followed one label."""
    xs = [np.array([1 + i % 7, 2], dtype=np.int64) for i in range(400)]
    ys = [np.array([int(i >= 200)], dtype=np.int64) for i in range(400)]  # sorted labels
    data = datasets.SequenceSet(xs, ys, xs, ys, padding=datasets.PADDING["many_to_one"])
    batches = list(data.valid_batches(32, 0))
    first = np.concatenate([np.ravel(b["y"]) for b in batches[:5]])  # 160 of the 400
    assert 0.4 < first.mean() < 0.6, first.mean()
    seen = np.concatenate([np.ravel(b["y"]) for b in batches])
    assert len(seen) == 400 and seen.sum() == 200  # every example, once
    again = np.concatenate([np.ravel(b["y"]) for b in data.valid_batches(32, 0)])
    assert (again == seen).all()  # the same order at every validation
