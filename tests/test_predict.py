"""`seqgraph predict` and `seqgraph.load`: raw inputs through the run's own tokenizer and
vocabulary, batched, equal to `Model.forward`; `Model.save` round trips; bad input is one line."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

import seqgraph
from seqgraph import Model, cli
from seqgraph.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
POS = "good great fine lovely nice superb".split()
NEG = "bad awful poor terrible sad worse".split()
FILL = "the food was service and it is very".split()


def _spec(tmp, name: str, model: dict, data: dict, steps: int = 40, batch: int = 16) -> str:
    spec = {
        "name": name,
        "seed": 0,
        "model": model,
        "data": data,
        "train": {"steps": steps, "batch_size": batch, "lr": 0.01, "eval_every": steps},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def _train(spec: str, out) -> str:
    assert cli.main(["run", spec, "--out", str(out)]) == 0
    return str(out)


def _sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILL, 3) + [rng.choice(POS if label else NEG)] + rng.sample(FILL, 2)
        rng.shuffle(words)
        rows.append((" ".join(words[: rng.randint(2, 6)] + words[-1:]), ["neg", "pos"][label]))
    return rows


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    (tmp / "s.tsv").write_text("".join(f"{t}\t{y}\n" for t, y in _sentences(300)))
    spec = _spec(
        tmp,
        "tiny_cls",
        {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 8}],
            "layers": [{"cell": "gru", "hidden": 8}],
        },
        {"source": "tsv", "path": str(tmp / "s.tsv"), "tokenizer": "word"},
        steps=150,
    )
    return _train(spec, tmp / "run")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tag")
    rng = random.Random(1)
    lines = []
    for _ in range(200):
        words = [rng.choice(POS + NEG + FILL) for _ in range(rng.randint(2, 7))]
        tags = ["P" if w in POS else "N" if w in NEG else "O" for w in words]
        lines.append(f"{' '.join(words)}\t{' '.join(tags)}\n")
    (tmp / "t.tsv").write_text("".join(lines))
    spec = _spec(
        tmp,
        "tiny_tag",
        {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 8}],
            "layers": [{"cell": "gru", "hidden": 8, "bidirectional": True, "merge": "concat"}],
        },
        {"source": "tsv", "path": str(tmp / "t.tsv"), "tokenizer": "word"},
    )
    return _train(spec, tmp / "run")


@pytest.fixture(scope="module")
def chars(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chars")
    (tmp / "t.txt").write_text("abcab cabba\n" * 300)
    spec = _spec(
        tmp,
        "tiny_chars",
        {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 8}],
            "layers": [{"cell": "lstm", "hidden": 16}],
        },
        {"source": "text", "path": str(tmp / "t.txt")},
        steps=30,
    )
    spec_raw = yaml.safe_load(open(spec))
    spec_raw["train"]["seq_len"] = 16
    open(spec, "w").write(yaml.safe_dump(spec_raw))
    return _train(spec, tmp / "run")


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vec")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 7, 2))
    lengths = rng.integers(3, 8, size=64)
    np.savez(tmp / "v.npz", x=x, y=np.cumsum(x, axis=1)[..., :1], lengths=lengths)
    spec = _spec(
        tmp,
        "tiny_vec",
        {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 2},
            "target": {"type": "vectors", "size": 1},
            "layers": [{"cell": "gru", "hidden": 8}],
        },
        {"source": "npz", "path": str(tmp / "v.npz")},
        steps=20,
    )
    return _train(spec, tmp / "run"), tmp / "v.npz"


def _lines(capsys) -> tuple[list[str], list[str]]:
    out, err = capsys.readouterr()
    return out.splitlines(), err.splitlines()


# ---- the Python API --------------------------------------------------------------------------


def test_classifier_predictions_equal_model_forward_in_float64(classifier):
    predictor = seqgraph.load(classifier, dtype="float64")
    texts = ["the food was great", "awful", "it is very very bad and sad", "lovely"]
    records = predictor.predict(texts, batch_size=3)  # two batches, padded and bucketed
    vocab = predictor.facts["vocab"]
    labels = predictor.facts["labels"]
    assert labels == ["neg", "pos"]
    for text, record in zip(texts, records):
        ids = np.array([[vocab.index(w) for w in text.split()]], dtype=np.int64)
        logits = np.asarray(predictor.model.forward({"x": ids})["predictions"])[0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert record["input"] == text
        assert record["label"] == labels[int(np.argmax(probs))]
        assert list(record["probs"]) == labels
        np.testing.assert_allclose(list(record["probs"].values()), probs, rtol=0, atol=1e-12)
    assert predictor.unknown == 0
    assert records[0]["label"] == "pos" and records[1]["label"] == "neg"


def test_info_names_spec_pattern_labels_and_vocabulary(classifier):
    info = seqgraph.load(classifier).info()
    vocab = json.loads(open(f"{classifier}/data.json").read())["vocab"]
    assert (info["name"], info["pattern"], info["labels"]) == (
        "tiny_cls",
        "many_to_one",
        ["neg", "pos"],
    )
    assert info["vocab_size"] == len(vocab) and info["source"] == "tsv"


def test_unknown_tokens_map_to_unk_and_are_counted(classifier):
    predictor = seqgraph.load(classifier, dtype="float64")
    vocab = predictor.facts["vocab"]
    records = predictor.predict(["zzz great qqq", "", "food"])
    assert predictor.unknown == 2 and predictor.unknown_to == "<unk>"
    unk = vocab.index("<unk>")
    ids = np.array([[unk, vocab.index("great"), unk]])
    logits = np.asarray(predictor.model.forward({"x": ids})["predictions"])[0]
    probs = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(list(records[0]["probs"].values()), probs, atol=1e-12)
    assert records[1]["input"] == "" and sum(records[1]["probs"].values()) == pytest.approx(1.0)


def test_save_then_load_gives_identical_predictions(classifier, tmp_path):
    model = seqgraph.load_run(classifier)
    saved = model.save(tmp_path / "saved")
    texts = ["the food was great", "poor service", "zzz"]
    before = seqgraph.load(classifier).predict(texts)
    after = seqgraph.load(saved).predict(texts)
    assert after == before
    assert not any(k.startswith("opt/") for k in np.load(tmp_path / "saved" / "checkpoint.npz"))
    assert cli.main(["predict", saved, "--input", "the food was great"]) == 0


def test_bare_model_saves_spec_and_parameters_and_predicts_on_arrays(classifier, tmp_path):
    spec = yaml.safe_load(open(f"{classifier}/spec.yaml"))
    spec.pop("data")
    model = Model(spec, dtype="float64")
    model.save(tmp_path / "bare")
    assert json.loads((tmp_path / "bare" / "data.json").read_text()) == {"kind": "bare"}
    predictor = seqgraph.load(tmp_path / "bare", dtype="float64")
    ids = np.array([3, 4, 5])
    record = predictor.predict([ids])[0]
    logits = np.asarray(model.forward({"x": ids[None]})["predictions"])[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert record["input"] == ["3", "4", "5"] and list(record["probs"]) == ["0", "1"]
    np.testing.assert_allclose(list(record["probs"].values()), probs, atol=1e-12)
    with pytest.raises(DataError, match="does not know how to read raw input"):
        predictor.predict(["some text"])


def test_tagger_gives_a_tag_per_token(tagger):
    predictor = seqgraph.load(tagger, dtype="float64")
    texts = ["the food was great", "awful", "It is very bad and sad"]
    records = predictor.predict(texts)
    vocab, labels = predictor.facts["vocab"], predictor.facts["labels"]
    for text, record in zip(texts, records):
        tokens = text.lower().split()
        assert record["tokens"] == tokens and len(record["tags"]) == len(tokens)
        x = np.array([[vocab.index(t) for t in tokens]])
        logits = np.asarray(predictor.model.forward({"x": x})["predictions"])[0]
        assert record["tags"] == [labels[i] for i in logits.argmax(-1)]
    assert set(labels) == {"N", "O", "P"}


def test_char_stream_model_predicts_the_next_character_and_drops_unknown_ones(chars):
    predictor = seqgraph.load(chars, dtype="float64")
    records = predictor.predict(["abca", "ab#c", "##"])
    vocab = predictor.facts["vocab"]
    x = np.array([[vocab.index(c) for c in "abca"]])
    logits = np.asarray(predictor.model.forward({"x": x})["predictions"])[0]
    assert records[0] == {"tokens": list("abca"), "tags": [vocab[i] for i in logits.argmax(-1)]}
    assert records[1]["tokens"] == list("abc") and records[2] == {"tokens": [], "tags": []}
    assert predictor.unknown == 3 and predictor.unknown_to == "dropped"


def test_vector_model_predicts_numbers_equal_to_forward(vectors):
    run, _ = vectors
    predictor = seqgraph.load(run, dtype="float64")
    rng = np.random.default_rng(5)
    arrays = [rng.normal(size=(n, 2)) for n in (4, 9, 2)]
    records = predictor.predict(arrays)
    for array, record in zip(arrays, records):
        out = np.asarray(predictor.model.forward({"x": array[None]})["predictions"])[0]
        assert np.asarray(record["output"]).shape == (len(array), 1)
        np.testing.assert_allclose(record["output"], out, rtol=0, atol=1e-12)


def test_encoder_decoder_decodes_greedily_and_samples_reproducibly(tmp_path):
    spec = yaml.safe_load((ROOT / "specs" / "copy_seq2seq.yaml").read_text())
    spec["model"]["layers"][0]["hidden"] = 8
    spec["data"]["examples"] = 64
    spec["train"] = {"steps": 3, "batch_size": 8, "lr": 0.01}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run = _train(str(tmp_path / "s.yaml"), tmp_path / "run")
    predictor = seqgraph.load(run, dtype="float64")
    x = np.array([2, 3, 4, 5])
    record = predictor.predict([x], length=5)[0]
    greedy = predictor.model.forward({"x": x[None], "out_steps": 5}, "free")["predictions"]
    assert record == {
        "input": ["2", "3", "4", "5"],
        "output": [str(i) for i in greedy[0].argmax(-1)],
    }
    one = predictor.predict([x], length=5, sample=True, temperature=2.0, seed=3)
    assert one == predictor.predict([x], length=5, sample=True, temperature=2.0, seed=3)
    assert len(one[0]["output"]) == 5


# ---- the command line ------------------------------------------------------------------------


def test_cli_input_flags_give_json_lines_and_the_unknown_count(classifier, capsys):
    assert cli.main(["predict", classifier, "--input", "the food was great", "--input", "zzz"]) == 0
    out, err = _lines(capsys)
    records = [json.loads(line) for line in out]
    assert records == seqgraph.load(classifier).predict(["the food was great", "zzz"])
    assert len(err) == 1 and err[0].endswith("; 1 unknown token(s) mapped to <unk>")
    assert err[0].startswith("predicted 2 input(s) in ")


def test_cli_data_file_with_labels_and_tsv_output(classifier, tmp_path, capsys):
    rows = _sentences(5, seed=9)
    (tmp_path / "new.tsv").write_text("".join(f"{t}\t{y}\n" for t, y in rows))
    assert (
        cli.main(["predict", classifier, "--data", str(tmp_path / "new.tsv"), "--format", "tsv"])
        == 0
    )
    out, _ = _lines(capsys)
    expected = seqgraph.load(classifier).predict([t for t, _ in rows])
    assert out[0] == "input\tlabel\tp(neg)\tp(pos)"
    for line, record in zip(out[1:], expected):
        text, label, p_neg, p_pos = line.split("\t")
        assert (text, label) == (record["input"], record["label"])
        assert float(p_pos) == pytest.approx(record["probs"]["pos"], rel=1e-5)
    assert len(out) == 6


def test_cli_stdin_and_output_file(tagger, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("the food was great\n\nawful service\n"))
    out_file = tmp_path / "tags.jsonl"
    assert cli.main(["predict", tagger, "-o", str(out_file)]) == 0
    out, err = _lines(capsys)
    assert out == [] and f"to {out_file}" in err[0]
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert records == seqgraph.load(tagger).predict(["the food was great", "awful service"])
    assert records[1]["tokens"] == ["awful", "service"] and len(records[1]["tags"]) == 2


def test_cli_tagger_tsv_joins_tokens_and_tags(tagger, capsys):
    assert cli.main(["predict", tagger, "--input", "good food", "--format", "tsv"]) == 0
    out, _ = _lines(capsys)
    record = seqgraph.load(tagger).predict(["good food"])[0]
    assert out == ["tokens\ttags", f"good food\t{' '.join(record['tags'])}"]


def test_cli_char_model_and_dropped_characters(chars, capsys):
    assert cli.main(["predict", chars, "--input", "ab#"]) == 0
    out, err = _lines(capsys)
    assert json.loads(out[0])["tokens"] == ["a", "b"]
    assert err[0].endswith("; 1 unknown token(s) dropped")


def test_cli_vector_model_reads_npz_and_json_lines(vectors, monkeypatch, capsys):
    run, npz = vectors
    assert cli.main(["predict", run, "--data", str(npz)]) == 0
    out, _ = _lines(capsys)
    arrays = np.load(npz)
    assert len(out) == 64
    first = json.loads(out[0])
    length = int(arrays["lengths"][0])
    np.testing.assert_allclose(first["input"], arrays["x"][0, :length])
    expected = seqgraph.load(run).predict([arrays["x"][0, :length]])[0]["output"]
    np.testing.assert_allclose(first["output"], expected, rtol=0, atol=1e-6)  # float32
    monkeypatch.setattr("sys.stdin", io.StringIO("[[0.5, -1.0], [0.25, 2.0]]\n"))
    assert cli.main(["predict", run]) == 0
    out, _ = _lines(capsys)
    assert np.asarray(json.loads(out[0])["output"]).shape == (2, 1)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "not a run folder (no data.json)"),
        ("no_checkpoint", "no checkpoint; train first"),
        ("bad_format", "--format invalid choice: 'xml'"),
        ("vectors_text", "this model reads vectors; give a JSON list of numbers"),
        ("no_inputs", "no inputs; give --input TEXT, --data FILE or lines on stdin"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    case, message, classifier, vectors, tmp_path, monkeypatch, capsys
):
    run = classifier
    extra = ["--input", "x"]
    if case == "empty":
        run = str(tmp_path)
    elif case == "no_checkpoint":
        run = str(tmp_path / "copy")
        (tmp_path / "copy").mkdir()
        for name in ("spec.yaml", "data.json"):
            (tmp_path / "copy" / name).write_bytes(open(f"{classifier}/{name}", "rb").read())
    elif case == "bad_format":
        extra += ["--format", "xml"]
    elif case == "vectors_text":
        run = vectors[0]
    else:
        extra = []
        monkeypatch.setattr("sys.stdin", io.StringIO("\n\n"))
    assert cli.main(["predict", run, *extra]) == 2
    out, err = _lines(capsys)
    assert out == [] and len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]


def test_one_to_many_from_one_id_decodes_like_a_free_forward(tmp_path):
    spec = {
        "name": "otm",
        "model": {
            "pattern": "one_to_many",
            "input": {"type": "ids", "vocab": 5},
            "target": {"type": "ids", "vocab": 6},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 8}],
        },
    }
    model = Model(spec, dtype="float64")
    predictor = seqgraph.load(model.save(tmp_path / "otm"), dtype="float64")
    records = predictor.predict([np.array([2]), np.array([3])], length=4)
    free = model.forward({"x": np.array([2, 3]), "out_steps": 4}, "free")["predictions"]
    assert [r["output"] for r in records] == [[str(i) for i in row] for row in free.argmax(-1)]
    assert [r["input"] for r in records] == [["2"], ["3"]]
    assert predictor.info()["pattern"] == "one_to_many" and predictor.info()["source"] is None
