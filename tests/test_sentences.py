"""Labelled sentences: the mod10 split, a vocabulary from the training split only, and
one-file-per-label sources."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph.train import data as datasets
from seqgraph.train.data import data_config


def test_labelled_lines_mod10_split_and_train_only_vocab(tmp_path):
    (tmp_path / "good.txt").write_text("".join(f"fine film {i}\n" for i in range(20)))
    bad = [f"dull plot {i}" for i in range(19)] + ["zebra"]  # line 19: i % 10 == 9, test
    (tmp_path / "bad.txt").write_text("\n".join(bad) + "\n")
    config = data_config(
        {
            "source": "labelled_lines",
            "files": {"pos": "good.txt", "neg": "bad.txt"},
            "split": "mod10",
        },
        str(tmp_path),
    )
    assert config["root"] == str(tmp_path)
    data = datasets.load(config, "many_to_one", seed=0)
    assert (len(data.x), len(data.valid_x), len(data.test_x)) == (32, 4, 4)
    assert data.labels == ["neg", "pos"]
    assert "zebra" not in data.vocab and "18" not in data.vocab and "17" in data.vocab
    unk = data.vocab.index("<unk>")
    assert [int(v) for v in data.test_x[-1]] == [unk]  # a word never seen in training
    batch = next(data.valid_batches(8, 0, split="test"))
    assert batch["x"].shape[0] == 4 and sorted(batch["y"].tolist()) == [0, 0, 1, 1]


def test_the_ten_folds_test_every_line_once(tmp_path):
    """`fold: k` turns the mod10 wheel: fold k tests the lines with i % 10 == (9 + k) % 10 and
    validates on the tenth below; over the ten folds each line is tested exactly once and
    never trained on in its own fold."""
    lines = "".join(f"u{i}{' w' * i}\t{i % 2}\n" for i in range(40))  # line i: i + 1 tokens
    (tmp_path / "s.tsv").write_text(lines)
    config = {"source": "tsv", "path": str(tmp_path / "s.tsv"), "split": "mod10"}
    tested = []
    for fold in range(10):
        data = datasets.load({**config, "fold": fold}, "many_to_one", seed=0)
        assert (len(data.x), len(data.valid_x), len(data.test_x)) == (32, 4, 4)
        lines_of = [len(seq) - 1 for seq in data.test_x]
        assert lines_of == [i for i in range(40) if i % 10 == (9 + fold) % 10]
        validated = sorted(len(seq) - 1 for seq in data.valid_x)
        assert validated == [i for i in range(40) if i % 10 == (8 + fold) % 10]
        held = {f"u{i}" for i in range(40) if i % 10 in ((8 + fold) % 10, (9 + fold) % 10)}
        assert not held & set(data.vocab) and len(data.vocab) == 2 + 32 + 1  # pad, unk, w
        tested += lines_of
    assert sorted(tested) == list(range(40))
    plain = datasets.load(config, "many_to_one", seed=0)  # fold 0 is the plain mod10 split
    assert [len(seq) - 1 for seq in plain.test_x] == [9, 19, 29, 39]
    from seqgraph.errors import DataError

    with pytest.raises(DataError, match="data.fold 3 picks one of the ten parts"):
        datasets.load({**config, "split": "random", "fold": 3}, "many_to_one", seed=0)


def test_tsv_random_split_is_seeded(tmp_path):
    rows = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(50))
    (tmp_path / "s.tsv").write_text(rows)
    config = {
        "source": "tsv",
        "path": str(tmp_path / "s.tsv"),
        "valid_fraction": 0.2,
        "test_fraction": 0.2,
    }
    a = datasets.load(config, "many_to_one", seed=3)
    b = datasets.load(config, "many_to_one", seed=3)
    assert (len(a.x), len(a.valid_x), len(a.test_x)) == (30, 10, 10)
    assert all(np.array_equal(u, v) for u, v in zip(a.valid_x, b.valid_x))


def test_too_long_and_zero_length_examples_are_refused_with_their_place(tmp_path):
    import pytest

    from seqgraph.errors import DataError

    (tmp_path / "s.tsv").write_text("short one\t1\nthis line is far too long\t0\n")
    with pytest.raises(DataError, match=r"s.tsv:2: 6 tokens, more than data.max_len = 3"):
        datasets.load(
            {"source": "tsv", "path": str(tmp_path / "s.tsv"), "max_len": 3}, "many_to_one", seed=0
        )
    np.savez(
        tmp_path / "a.npz", x=np.zeros((3, 4, 2)), y=np.zeros((3, 1)), lengths=np.array([4, 0, 2])
    )
    with pytest.raises(
        DataError,
        match=r"a.npz: lengths must lie in 1..4; example 1 has "
        r"length 0",
    ):
        datasets.load({"source": "npz", "path": str(tmp_path / "a.npz")}, "many_to_one", 0)


def test_padding_to_a_multiple_changes_no_number():
    """Sentences pad each batch up to a multiple of data.pad_multiple (default 8) steps, so
    bucketed batches share a few plan shapes; the extra steps are masked, so the loss and
    every gradient equal those of the batch padded only to its longest sentence."""
    from seqgraph import Model

    raw = {
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": 9},
            "target": {"type": "ids", "vocab": 2},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "lstm", "hidden": 5, "bidirectional": True}],
        },
        "dtype": "float64",
    }
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 9, size=n) for n in (3, 5, 2)]
    ys = [np.int64(1), np.int64(0), np.int64(1)]
    tight = datasets.pad(xs, ys, **datasets.PADDING["many_to_one"])
    loose = datasets.pad(xs, ys, **datasets.PADDING["many_to_one"], multiple=8)
    assert tight["x"].shape == (3, 5) and loose["x"].shape == (3, 8)
    model = Model(raw)
    loss, grads = model.loss_and_grads(tight)
    loose_loss, loose_grads = model.loss_and_grads(loose)
    assert loose_loss == pytest.approx(loss, rel=1e-13)
    for name in grads:
        np.testing.assert_allclose(loose_grads[name], grads[name], rtol=1e-11, atol=1e-14)
