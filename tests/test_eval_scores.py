"""Honest scores from `seqgraph eval`: a decoder's teacher-forced and free-running token
accuracy and exact match, a classifier's macro-F1 and confusion matrix, a tagger's per-tag F1;
every number on real target steps only, recomputed here from `Model.forward` on one sequence
at a time (so no padding at all) and from the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from seqgraph import api
from seqgraph.api_runs import load_run
from seqgraph.cli import main
from seqgraph.train import data as datasets
from seqgraph.train.evaluate import evaluate

TOL = 1e-12


def write_spec(tmp_path, pattern: str, data: dict, model: dict, steps: int = 6) -> str:
    spec = {
        "name": f"scores_{pattern}",
        "seed": 3,
        "dtype": "float64",
        "model": {"pattern": pattern, "layers": [{"cell": "gru", "hidden": 8}], **model},
        "data": data,
        "train": {"steps": steps, "batch_size": 8, "eval_every": 1000, "lr": 0.02},
    }
    path = tmp_path / f"{pattern}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def train_and_eval(tmp_path, spec: str, capsys, *extra) -> tuple[dict, object, object]:
    """(eval --json's numbers, the run's model, its data set)."""
    out = tmp_path / "run"
    assert main(["run", spec, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--json", *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    model = load_run(out)
    config = datasets.data_config(model.spec.data, None)
    return result, model, datasets.load(config, model.spec.model.pattern, model.spec.seed)


def logits(model, batch: dict, feedback: str = "teacher") -> np.ndarray:
    """The model's output for a batch of one, its only sequence: (T, C) or (C,)."""
    return np.asarray(model.forward(batch, feedback=feedback)["predictions"])[0]


def nats(scores: np.ndarray, ids) -> float:
    """Softmax cross-entropy of logits (C,) or (T, C) at the true ids, summed over steps."""
    scores = np.atleast_2d(scores)
    ids = np.atleast_1d(ids)
    top = scores.max(axis=-1)
    log_norm = top + np.log(np.exp(scores - top[:, None]).sum(axis=-1))
    return float((log_norm - scores[np.arange(len(ids)), ids]).sum())


def f1_by_hand(truth: list, guess: list, names: list) -> dict:
    """{name: (precision, recall, f1, support)} for every class that is true or guessed."""
    out = {}
    for c, name in enumerate(names):
        tp = sum(t == c and g == c for t, g in zip(truth, guess))
        guessed, support = guess.count(c), truth.count(c)
        if not guessed and not support:
            continue
        p = tp / guessed if guessed else 0.0
        r = tp / support if support else 0.0
        out[name] = (p, r, 2 * p * r / (p + r) if p + r else 0.0, support)
    return out


# ---- decoders: digit reversal from an npz with target lengths -------------------------------


def reversal_npz(path, count: int = 60, seed: int = 0) -> None:
    """Digits 1..9, 1 to 7 of them, reversed; 0 pads; ids 10 is the decoder's start."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, size=count)
    lengths[:2] = [1, 7]  # very different lengths side by side in one held-out batch
    x = np.zeros((count, 7), dtype=np.int64)
    y = np.zeros((count, 7), dtype=np.int64)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.integers(1, 10, size=n)
        y[i, :n] = x[i, :n][::-1]
    np.savez(path, x=x, y=y, lengths=lengths, y_lengths=lengths)


DECODER = {
    "input": {"type": "ids", "vocab": 11},
    "target": {"type": "ids", "vocab": 11},
    "encoders": [{"type": "embedding", "size": 6}],
    "feedback_encoders": [{"type": "embedding", "size": 6}],
    "bos": 10,
}


def test_decoder_reports_teacher_forced_free_running_and_exact_match(tmp_path, capsys):
    reversal_npz(tmp_path / "rev.npz")
    data = {"source": "npz", "path": str(tmp_path / "rev.npz"), "valid_fraction": 0.4}
    spec = write_spec(tmp_path, "encoder_decoder", data, DECODER)
    result, model, dataset = train_and_eval(tmp_path, spec, capsys)
    loss = teacher = free = exact = tokens = 0
    for x, y in zip(dataset.valid_x, dataset.valid_y):
        batch = {"x": x[None], "y": y[None], "y_lengths": np.array([len(y)])}
        taught = logits(model, batch)
        loss += nats(taught, y)
        teacher += int((taught.argmax(-1) == y).sum())
        right = logits(model, batch, "free").argmax(-1) == y
        free += int(right.sum())
        exact += bool(right.all())
        tokens += len(y)
    count = len(dataset.valid_y)
    assert tokens == sum(len(y) for y in dataset.valid_y) < count * 7  # padding would add
    assert result["kind"] == "decoder" and result["tokens"] == tokens
    assert result["sequences"] == count
    assert result["loss"] == pytest.approx(loss / tokens, abs=TOL)
    assert result["accuracy"] == result["accuracy_teacher"]
    assert result["accuracy_teacher"] == pytest.approx(teacher / tokens, abs=TOL)
    assert result["accuracy_free"] == pytest.approx(free / tokens, abs=TOL)
    assert result["exact_match"] == pytest.approx(exact / count, abs=TOL)
    assert 0 < result["accuracy_free"] < 1  # the numbers are not degenerate
    assert main(["eval", str(tmp_path / "run")]) == 0
    line = capsys.readouterr().out
    assert (
        f"teacher-forced accuracy {teacher / tokens:.4f}; free-running accuracy "
        f"{free / tokens:.4f}, exact match {exact / count:.4f} over {count} sequences"
    ) in line
    assert ", accuracy " not in line  # labelled once, as teacher-forced


def test_padding_is_excluded_from_every_decoder_score(tmp_path):
    """One batch of a 1-step and a 7-step sequence scores as the two scored alone."""
    reversal_npz(tmp_path / "rev.npz")
    data = {"source": "npz", "path": str(tmp_path / "rev.npz"), "valid_fraction": 0.4}
    spec = write_spec(tmp_path, "encoder_decoder", data, DECODER, steps=2)
    api.train(spec, progress=False, out=str(tmp_path / "run"), log=lambda *a: None)
    model = load_run(tmp_path / "run")
    xs = [np.array([3]), np.array([1, 2, 3, 4, 5, 6, 7])]
    ys = [x[::-1] for x in xs]
    together = datasets.pad(xs, ys, y_time=True, y_own_lengths=True)
    assert together["y"].shape == (2, 7)
    alone = [datasets.pad([x], [y], y_time=True, y_own_lengths=True) for x, y in zip(xs, ys)]
    one = evaluate(model, [together], kind="decoder")
    two = evaluate(model, alone, kind="decoder")
    assert one["tokens"] == two["tokens"] == 8
    for key in ("accuracy", "accuracy_teacher", "accuracy_free", "exact_match", "sequences"):
        assert one[key] == pytest.approx(two[key], abs=TOL), key
    assert one["loss"] == pytest.approx(two["loss"], abs=TOL)


# ---- classifiers: an npz of id sequences, three named classes -------------------------------


def classes_npz(path, count: int = 90, seed: int = 1) -> None:
    """The class is the first token's id mod 3; sequences of 2 to 9 ids from 1..9."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, size=count)
    x = np.zeros((count, 9), dtype=np.int64)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.integers(1, 10, size=n)
    y = x[:, 0] % 3
    np.savez(path, x=x, y=y, lengths=lengths, labels=np.array(["zero", "one", "two"]))


def test_classifier_reports_accuracy_macro_f1_and_a_confusion_matrix(tmp_path, capsys):
    classes_npz(tmp_path / "cls.npz")
    data = {"source": "npz", "path": str(tmp_path / "cls.npz"), "valid_fraction": 0.3}
    model_part = {
        "input": {"type": "ids", "vocab": 10},
        "target": {"type": "ids", "vocab": 3},
        "encoders": [{"type": "embedding", "size": 6}],
    }
    spec = write_spec(tmp_path, "many_to_one", data, model_part, steps=10)
    result, model, dataset = train_and_eval(tmp_path, spec, capsys)
    truth, guess, loss = [], [], 0.0
    for x, y in zip(dataset.valid_x, dataset.valid_y):
        probs = logits(model, {"x": x[None], "y": np.array([y])})
        truth.append(int(y))
        guess.append(int(probs.argmax()))
        loss += nats(probs, y)
    names = ["zero", "one", "two"]
    counts = [
        [sum(t == i and g == j for t, g in zip(truth, guess)) for j in range(3)] for i in range(3)
    ]
    by_class = f1_by_hand(truth, guess, names)
    count = len(truth)
    assert result["kind"] == "classifier" and result["tokens"] == count
    assert result["loss"] == pytest.approx(loss / count, abs=TOL)
    assert result["accuracy"] == pytest.approx(np.mean(np.equal(truth, guess)), abs=TOL)
    assert result["confusion"] == {"labels": names, "counts": counts}
    assert result["macro_f1"] == pytest.approx(
        np.mean([f1 for _, _, f1, _ in by_class.values()]), abs=TOL
    )
    png = tmp_path / "run" / "confusion.png"
    assert result["confusion_png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(map(sum, result["confusion"]["counts"])) == count == len(dataset.valid_y)
    elsewhere = tmp_path / "elsewhere.png"
    assert main(["eval", str(tmp_path / "run"), "--confusion", str(elsewhere)]) == 0
    line = capsys.readouterr().out
    assert elsewhere.is_file() and f"wrote confusion matrix: {elsewhere}" in line
    assert f"accuracy {np.mean(np.equal(truth, guess)):.4f}" in line
    assert f"macro-F1 {result['macro_f1']:.4f}" in line
    png.unlink()
    png.mkdir()  # a run folder where confusion.png cannot be written is still evaluated
    with pytest.warns(UserWarning, match="no confusion.png"):
        again = api.evaluate_run(tmp_path / "run")
    assert "confusion_png" not in again and again["confusion"] == result["confusion"]


# ---- taggers: a TSV of tokens and their tags -------------------------------------------------

TAGGED = (
    "the cat sat\tDT NN VB\n"
    "a dog ran home\tDT NN VB NN\n"
    "dogs ran\tNN VB\n"
    "the old cat sat on the mat today\tDT JJ NN VB IN DT NN RB\n"
) * 6


def test_tagger_reports_token_accuracy_and_per_tag_f1(tmp_path, capsys):
    (tmp_path / "tags.tsv").write_text(TAGGED)
    data = {"source": "tsv", "path": str(tmp_path / "tags.tsv"), "valid_fraction": 0.25}
    model_part = {
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 6}],
    }
    spec = write_spec(tmp_path, "many_to_many", data, model_part, steps=8)
    result, model, dataset = train_and_eval(tmp_path, spec, capsys)
    truth, guess, loss = [], [], 0.0
    for x, y in zip(dataset.valid_x, dataset.valid_y):
        probs = logits(model, {"x": x[None], "y": y[None]})
        truth += [int(t) for t in y]
        guess += [int(g) for g in probs.argmax(-1)]
        loss += nats(probs, y)
    names = dataset.labels
    by_tag = f1_by_hand(truth, guess, names)
    tokens = len(truth)
    assert len({len(y) for y in dataset.valid_y}) > 1  # ragged: padding would be scored
    assert result["kind"] == "tagger" and result["tokens"] == tokens
    assert result["loss"] == pytest.approx(loss / tokens, abs=TOL)
    assert result["accuracy"] == pytest.approx(np.mean(np.equal(truth, guess)), abs=TOL)
    assert set(result["tags"]) == set(by_tag)
    for name, (p, r, f1, support) in by_tag.items():
        got = result["tags"][name]
        assert got["support"] == support
        for key, want in (("precision", p), ("recall", r), ("f1", f1)):
            assert got[key] == pytest.approx(want, abs=TOL), (name, key)
    macro = np.mean([f1 for _, _, f1, _ in by_tag.values()])
    assert result["macro_f1"] == pytest.approx(macro, abs=TOL)
    assert "confusion" not in result
    assert main(["eval", str(tmp_path / "run")]) == 0
    line = capsys.readouterr().out
    assert f"token accuracy {np.mean(np.equal(truth, guess)):.4f}; macro-F1 {macro:.4f}" in line
