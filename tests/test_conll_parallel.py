"""The CoNLL (per-token tags) and parallel-text (seq2seq pairs) sources: tiny files made here,
their ids and vocabularies, their one-line errors, and a few training steps end to end through
the CLI with the example specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from seqgraph import cli
from seqgraph.apps import conll, parallel
from seqgraph.errors import DataError
from seqgraph.train import data as datasets

SPECS = Path(__file__).resolve().parent.parent / "specs"
CONLL = (
    "-DOCSTART- -X- O O\n\n"
    "# a comment line\n"
    "EU\tNNP\tB-NP\tB-ORG\nrejects\tVBZ\tB-VP\tO\nGerman\tJJ\tB-NP\tB-MISC\n\n"
    "Peter\tNNP\tB-NP\tB-PER\nBlackburn\tNNP\tI-NP\tI-PER\n\n"
)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def short_run(spec: Path, tmp_path, steps: int = 3) -> str:
    """The example spec with a few small steps (the model and data sections as shipped)."""
    raw = yaml.safe_load(spec.read_text())
    raw["train"] = {**raw["train"], "steps": steps, "batch_size": 4, "eval_every": 1000}
    raw["train"].pop("scheduled_sampling", None)
    path = tmp_path / spec.name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ---- CoNLL -----------------------------------------------------------------------------------


def test_conll_word_level_reads_sequences_and_the_last_column(tmp_path):
    path = write(tmp_path, "a.conll", CONLL * 5)
    config = {"source": "conll", "path": path, "valid_fraction": 0.2}
    data = datasets.load(config, "many_to_many", seed=0)
    assert data.labels == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    assert data.vocab[:2] == ["<pad>", "<unk>"] and "EU" in data.vocab  # cased by default
    assert len(data.x) + len(data.valid_x) == 10 and len(data.valid_x) == 2
    for x, y in zip(data.x + data.valid_x, data.y + data.valid_y):
        pair = ([data.vocab[i] for i in x], [data.labels[i] for i in y])
        assert pair in (
            (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
            (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        )
    batch = data.batch_at(0, 4, 0, seed=0)
    assert batch["y"].shape == batch["x"].shape


def test_conll_columns_lowercase_and_whitespace_separated_lines(tmp_path):
    path = write(tmp_path, "b.txt", "The DT B-NP\ncat NN I-NP\n\nA DT B-NP\n")
    config = {"path": path, "tag_column": 1, "lowercase": True, "valid_fraction": 0}
    data = conll.load(config, "many_to_many", seed=0)
    assert data.labels == ["DT", "NN"]
    assert sorted(data.vocab) == sorted(["<pad>", "<unk>", "the", "cat", "a"])
    chosen = conll.load({**config, "token_column": 2, "lowercase": False}, "many_to_many", 0)
    assert chosen.labels == ["DT", "NN"] and chosen.vocab == ["<pad>", "<unk>", "B-NP", "I-NP"]


def test_conll_char_level_tags_each_character_and_keeps_bio_spans(tmp_path):
    path = write(tmp_path, "c.conll", "Al\tB-PER\nBo\tI-PER\nran\tO\n")
    config = {"source": "conll", "path": path, "level": "char", "valid_fraction": 0}
    data = datasets.load(config, "many_to_many", seed=0)
    chars = "".join(data.vocab[i] for i in data.x[0])
    tags = [data.labels[i] for i in data.y[0]]
    assert chars == "AlBoran"
    assert tags == ["B-PER", "I-PER", "I-PER", "I-PER", "O", "O", "O"]


def test_conll_errors_name_the_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.conll", "EU\tB-ORG\nrejects\n")
    with pytest.raises(
        DataError, match=r"bad.conll:2: expected at least 2 columns \(token, tag\); got 1"
    ):
        datasets.load({"source": "conll", "path": bad}, "many_to_many", 0)
    short = write(tmp_path, "short.conll", "EU\tNNP\tB-ORG\nrejects\tO\n")
    with pytest.raises(
        DataError, match=r"short.conll:2: data.token_column is 2, but the line has 2"
    ):
        datasets.load({"source": "conll", "path": short, "token_column": 2}, "many_to_many", 0)
    good = write(tmp_path, "good.conll", CONLL)
    with pytest.raises(DataError, match="set model.pattern: many_to_many, not many_to_one"):
        datasets.load({"source": "conll", "path": good}, "many_to_one", 0)
    with pytest.raises(DataError, match="sequence 1 has 3 steps, more than data.max_len = 2"):
        datasets.load({"source": "conll", "path": good, "max_len": 2}, "many_to_many", 0)


def test_conll_suffix_picks_the_source():
    config = datasets.data_config({}, "train.conll")
    assert config["source"] == "conll" and config["path"] == "train.conll"


def test_conll_tagger_spec_trains_and_evals_through_the_cli(tmp_path, capsys):
    data = write(tmp_path, "train.conll", CONLL * 8)
    spec = short_run(SPECS / "conll_tagger.yaml", tmp_path)
    run = str(tmp_path / "run")
    assert cli.main(["run", spec, "--data", data, "--out", run]) == 0
    assert cli.main(["eval", run, "--split", "test"]) == 0
    facts = json.loads((tmp_path / "run" / "data.json").read_text())
    assert facts["labels"] == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    assert facts["train"] + facts["valid"] + facts["test"] == 16
    resolved = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert resolved["model"]["target"]["vocab"] == 5
    assert resolved["model"]["input"]["vocab"] == len(facts["vocab"])
    capsys.readouterr()


# ---- parallel text ---------------------------------------------------------------------------

WORDS = ["stone", "river", "cat", "moon", "tree", "bird", "cloud", "sea", "hill", "rain"]
REVERSED = "".join(f"{w}\t{w[::-1]}\tCC-BY\n" for w in WORDS)


def test_parallel_has_separate_vocabularies_and_targets_end_with_eos(tmp_path):
    path = write(tmp_path, "p.tsv", "# pairs\nab\tXY\n\nabc\tZ\n")
    config = {"source": "parallel", "path": path, "valid_fraction": 0}
    data = datasets.load(config, "encoder_decoder", seed=0)
    assert data.vocab == ["<pad>", "<unk>", "a", "b", "c"]
    assert data.labels == ["<pad>", "<bos>", "<eos>", "<unk>", "X", "Y", "Z"]
    pairs = sorted((x.tolist(), y.tolist()) for x, y in zip(data.x, data.y))
    assert pairs == [([2, 3], [4, 5, 2]), ([2, 3, 4], [6, 2])]
    batch = data.batch_at(0, 2, 0, seed=0)
    # targets padded after <eos>; y_lengths count <eos>, so padding adds no loss
    assert sorted(batch["y_lengths"].tolist()) == [2, 3]
    for y, n in zip(batch["y"], batch["y_lengths"]):
        assert y[n - 1] == parallel.EOS and not y[n:].any()


def test_parallel_word_level_and_unknown_held_out_tokens(tmp_path):
    lines = "".join(f"the {w}\tle {w}\n" for w in WORDS)
    path = write(tmp_path, "w.tsv", lines)
    config = {"path": path, "source_level": "word", "target_level": "word"}
    data = parallel.load({**config, "valid_fraction": 0.2}, "encoder_decoder", seed=0)
    assert "the" in data.vocab and "le" in data.labels and "t" not in data.vocab
    unseen = [w for w in WORDS if w not in data.vocab]
    assert len(unseen) == 2  # the held-out words: <unk> on both sides
    for x, y in zip(data.valid_x, data.valid_y):
        assert x.tolist()[1] == 1 and y.tolist()[1] == 3 and y[-1] == parallel.EOS


def test_parallel_errors_name_the_file_and_line(tmp_path):
    bad = write(tmp_path, "bad.tsv", "ab\tba\nno tab here\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected source<TAB>target; got 1 column"):
        datasets.load({"source": "parallel", "path": bad}, "encoder_decoder", 0)
    empty = write(tmp_path, "empty.tsv", "ab\t\n")
    with pytest.raises(DataError, match=r"empty.tsv:1: the target is empty"):
        datasets.load({"source": "parallel", "path": empty}, "encoder_decoder", 0)
    good = write(tmp_path, "good.tsv", REVERSED)
    with pytest.raises(DataError, match="set model.pattern: encoder_decoder, not many_to_many"):
        datasets.load({"source": "parallel", "path": good}, "many_to_many", 0)
    with pytest.raises(DataError, match=r"good.tsv:1: 5 source and 5 target tokens \(\+ <eos>\)"):
        datasets.load({"source": "parallel", "path": good, "max_len": 5}, "encoder_decoder", 0)


def test_parallel_reverse_spec_trains_and_evals_through_the_cli(tmp_path, capsys):
    data = write(tmp_path, "words.tsv", REVERSED * 4)
    spec = short_run(SPECS / "parallel_reverse.yaml", tmp_path)
    run = str(tmp_path / "run")
    assert cli.main(["run", spec, "--data", data, "--out", run]) == 0
    assert cli.main(["eval", run]) == 0
    facts = json.loads((tmp_path / "run" / "data.json").read_text())
    resolved = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert resolved["model"]["input"]["vocab"] == len(facts["vocab"])
    assert resolved["model"]["target"]["vocab"] == len(facts["labels"])
    assert facts["labels"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    out = capsys.readouterr().out
    assert "accuracy" in out, out
    # the run's own last line labels the teacher-forced number and adds free-running scores
    done = next(line for line in out.splitlines() if line.startswith("done:"))
    last = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in last if r["kind"] == "valid"][-1]
    assert f"free-running accuracy {final['accuracy_free']:.4f}" in done, done
    assert f"teacher-forced accuracy {final['accuracy_teacher']:.4f}" in done, done
    assert ", accuracy" not in done and "exact match" in done, done


# ---- predict reads raw text the way each source trained ----------------------------------------


def test_conll_tagger_predicts_raw_sentences_and_conll_files_alike(tmp_path, capsys):
    data = write(tmp_path, "train.conll", CONLL * 8)
    spec = short_run(SPECS / "conll_tagger.yaml", tmp_path)
    run = str(tmp_path / "run")
    assert cli.main(["run", spec, "--data", data, "--out", run]) == 0
    capsys.readouterr()
    tags_only = write(tmp_path, "new.conll", "EU\nrejects\nZorro\n\nPeter\tB-PER\n")
    assert cli.main(["predict", run, "--data", tags_only]) == 0
    from_file = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["predict", run, "--input", "EU rejects Zorro", "--input", "Peter"]) == 0
    captured = capsys.readouterr()
    from_text = [json.loads(line) for line in captured.out.splitlines()]
    assert from_file == from_text
    assert [r["tokens"] for r in from_text] == [["EU", "rejects", "Zorro"], ["Peter"]]
    labels = json.loads((tmp_path / "run" / "data.json").read_text())["labels"]
    assert all(len(r["tags"]) == len(r["tokens"]) for r in from_text)
    assert {t for r in from_text for t in r["tags"]} <= set(labels)
    assert "1 unknown" in captured.err, captured.err  # Zorro, never seen in training
    # any other file is one sentence a line (regression: a .txt read as CoNLL columns gave
    # one sentence of each line's first word)
    lines = write(tmp_path, "new.txt", "EU rejects Zorro\n\nPeter\n")
    assert cli.main(["predict", run, "--data", lines]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == from_text


def test_conll_encode_follows_the_runs_level_and_case():
    facts = {"vocab": ["<pad>", "<unk>", "e", "u", "r"]}
    encoded = conll.encode_raw(["EU  r", ""], {"level": "char", "lowercase": True}, facts, "")
    assert [ids.tolist() for ids in encoded.ids] == [[2, 3, 4], [1]]
    assert encoded.tokens == [["e", "u", "r"], ["<unk>"]] and encoded.unknown == 0


def test_parallel_run_predicts_raw_sources_and_pair_files_alike(tmp_path, capsys):
    data = write(tmp_path, "words.tsv", REVERSED * 4)
    spec = short_run(SPECS / "parallel_reverse.yaml", tmp_path)
    run = str(tmp_path / "run")
    assert cli.main(["run", spec, "--data", data, "--out", run]) == 0
    capsys.readouterr()
    pairs = write(tmp_path, "new.tsv", "# sources, targets optional\nstone\tenots\nsky\n")
    assert cli.main(["predict", run, "--data", pairs]) == 0
    from_file = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["predict", run, "--input", "stone", "--input", "sky"]) == 0
    captured = capsys.readouterr()
    from_text = [json.loads(line) for line in captured.out.splitlines()]
    assert from_file == from_text and len(from_text) == 2
    assert [r["input"] for r in from_text] == ["stone", "sky"]
    assert "2 unknown" in captured.err, captured.err  # "k" and "y" are not source characters


def test_parallel_reads_raw_sources_for_predict(tmp_path):
    """predict's hooks: a raw source through the run's source tokenizer and vocabulary
    (`<unk>` for a token it lacks); a file's first column, targets ignored."""
    facts = {"vocab": ["<pad>", "<unk>", "a", "b"]}
    encoded = parallel.encode_raw(["ab", "bza"], {"source_level": "char"}, facts, "")
    assert [list(ids) for ids in encoded.ids] == [[2, 3], [3, 1, 2]]
    assert encoded.tokens == [["a", "b"], ["b", "z", "a"]] and encoded.unknown == 1
    words = parallel.encode_raw(["A b"], {"source_level": "word", "lowercase": True}, facts, "")
    assert list(words.ids[0]) == [2, 3]
    path = tmp_path / "pairs.tsv"
    path.write_text("# header\nab\tba\n\nbza\n")
    assert parallel.read_inputs(path, {}) == ["ab", "bza"]


def test_a_decoder_stopped_early_still_reports_free_running_scores(tmp_path, capsys):
    """Regression (merge of early stopping with the kind scores): the early stop's validation
    was reused as the final one, without the decoder's free-running scores."""
    data = write(tmp_path, "words.tsv", REVERSED * 4)
    raw = yaml.safe_load(Path(short_run(SPECS / "parallel_reverse.yaml", tmp_path, 20)).read_text())
    raw["train"].update(eval_every=2, early_stopping={"patience": 1, "min_delta": 100.0})
    spec = tmp_path / "early.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(spec), "--data", data, "--out", str(tmp_path / "run")]) == 0
    done = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("done"))
    assert done.startswith("done (stopped early): 4 steps"), done
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    final = [r for r in map(json.loads, records) if r["kind"] == "valid"][-1]
    assert final["step"] == 4 and f"exact match {final['exact_match']:.4f}" in done, done
