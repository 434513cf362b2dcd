"""Early stopping and the best checkpoint: a tiny classifier on labels that carry no signal,
so its validation loss falls for a few evaluations and then climbs as it memorises its
training set. The run stops `patience` evaluations after its best; best.npz holds the
parameters of that evaluation; a resumed run counts on; `--checkpoint best|last` and
`checkpoint=` pick the file; bad values are one line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import seqgraph
from seqgraph import api, cli
from seqgraph.errors import DataError, SpecError
from seqgraph.train import run_folder
from seqgraph.train.best import Best, default_mode

EVAL_EVERY, PATIENCE = 4, 3
QUIET = {"progress": False, "log": lambda line: None}


def _write_spec(tmp: Path, **train) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    rows = [
        (" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))), rng.choice("ab"))
        for _ in range(120)
    ]
    (tmp / "s.tsv").write_text("".join(f"{text}\t{label}\n" for text, label in rows))
    spec = {
        "name": "early",
        "seed": 0,
        "dtype": "float64",
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 8}],
            "layers": [{"cell": "gru", "hidden": 8}],
        },
        "data": {
            "source": "tsv",
            "path": str(tmp / "s.tsv"),
            "tokenizer": "word",
            "valid_fraction": 0.25,
        },
        "train": {
            "steps": 200,
            "batch_size": 16,
            "lr": 0.05,
            "eval_every": EVAL_EVERY,
            "valid_batches": 50,  # every validation batch, as `eval` reads them
            "log_every": 1000,
            "early_stopping": {"patience": PATIENCE},
            **train,
        },
    }
    path = tmp / "early.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """(spec, run folder, summary, log lines) of one uninterrupted run that stops early."""
    tmp = tmp_path_factory.mktemp("early")
    spec = _write_spec(tmp)
    lines: list[str] = []
    summary = api.train(str(spec), out=str(tmp / "run"), progress=False, log=lines.append)
    return spec, tmp / "run", summary, lines


def test_early_stopping_stops_patience_evaluations_after_the_best(stopped):
    _, run, summary, lines = stopped
    best = summary["best"]
    assert summary["early_stopped"] and not summary["stopped"]
    assert summary["steps_done"] == best["step"] + PATIENCE * EVAL_EVERY < 200
    valid = {r["step"]: r["valid_loss"] for r in _records(run, "valid")}
    assert best["value"] == min(valid.values()) == valid[best["step"]]
    later = [loss for step, loss in valid.items() if step > best["step"]]
    assert len(later) == PATIENCE and all(loss >= best["value"] for loss in later)
    # every new best is recorded, the last of them is the run's best
    assert _records(run, "best")[-1] == {
        "kind": "best",
        "step": best["step"],
        "metric": "valid_loss",
        "value": best["value"],
    }
    (stop,) = _records(run, "early_stop")
    assert (stop["step"], stop["best_step"], stop["best"]) == (
        summary["steps_done"],
        best["step"],
        best["value"],
    )
    # the progress line says when the best was set; the last line says why it stopped
    assert f"new best valid_loss {best['value']:.4f} at step {best['step']}" in "\n".join(lines)
    assert lines[-1] == (
        f"early stopping at step {summary['steps_done']}: valid_loss has not improved in "
        f"{PATIENCE} validations; best valid_loss {best['value']:.4f} at step {best['step']} "
        f"(kept in {run / 'best.npz'})"
    )
    meta = run_folder.load_checkpoint(run)[3]
    assert meta["step"] == summary["steps_done"]
    assert meta["best"] == {
        "metric": "valid_loss",
        "mode": "min",
        "value": best["value"],
        "step": best["step"],
        "stale": PATIENCE,
    }


def test_best_npz_holds_the_parameters_of_the_best_evaluation(stopped):
    _, run, summary, _ = stopped
    best = summary["best"]
    rescored = api.evaluate_run(run, checkpoint="best")
    assert rescored["checkpoint"] == "best" and rescored["step"] == best["step"]
    assert rescored["loss"] == pytest.approx(best["value"], rel=1e-12)
    last = api.evaluate_run(run, checkpoint="last")
    assert last["step"] == summary["steps_done"]
    assert last["loss"] == pytest.approx(summary["valid"]["loss"], rel=1e-12)
    assert last["loss"] > rescored["loss"]
    assert api.evaluate_run(run)["checkpoint"] == "best"  # the default, when best.npz exists


def test_resume_keeps_the_best_score_and_the_patience_counter(stopped, tmp_path):
    spec, whole, summary, _ = stopped
    best_step = summary["best"]["step"]
    part = tmp_path / "part"
    halted = api.train(str(spec), out=str(part), stop_after=best_step + 6, **QUIET)
    assert halted["stopped"]
    meta = run_folder.load_checkpoint(part)[3]
    assert (meta["best"]["step"], meta["best"]["stale"]) == (best_step, 1)
    resumed = api.train(str(spec), out=str(part), resume=True, **QUIET)
    assert resumed["early_stopped"] and resumed["steps_done"] == summary["steps_done"]
    assert resumed["best"] == {**summary["best"], "path": str(part / "best.npz")}
    for name in (run_folder.BEST, run_folder.CHECKPOINT):
        ours, theirs = (run_folder.load_checkpoint(d, name)[0] for d in (part, whole))
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name} {key}")
    # resuming a run that already stopped early trains no further and repeats no record
    # (regression: it wrote a second early_stop and a second final validation)
    records = (part / "metrics.jsonl").read_text()
    again = api.train(str(spec), out=str(part), resume=True, **QUIET)
    assert again["early_stopped"] and again["steps_done"] == summary["steps_done"]
    assert (part / "metrics.jsonl").read_text() == records
    assert again["valid"] == resumed["valid"] and again["best"] == resumed["best"]


def test_checkpoint_flag_picks_the_file(stopped, tmp_path, capsys):
    _, run, summary, _ = stopped
    capsys.readouterr()

    def probs(*flags: str) -> list[float]:
        assert cli.main(["predict", str(run), "--input", "w1 w2 w3", *flags]) == 0
        return list(json.loads(capsys.readouterr().out)["probs"].values())

    best, last, default = probs("--checkpoint", "best"), probs("--checkpoint", "last"), probs()
    assert default == best and not np.allclose(best, last, rtol=1e-3)
    python_side = seqgraph.load(run, checkpoint="last").predict(["w1 w2 w3"])[0]["probs"]
    assert list(python_side.values()) == pytest.approx(last, rel=1e-12)
    assert cli.main(["eval", str(run), "--checkpoint", "last"]) == 0
    assert f"at step {summary['steps_done']} (last checkpoint)" in capsys.readouterr().out
    out = tmp_path / "w.npz"
    assert cli.main(["export", str(run), "--to", "pytorch", "-o", str(out)]) == 0
    exported = seqgraph.load_run(run, checkpoint="best").export_params("pytorch")
    with np.load(out) as written:
        for key, value in exported.items():
            np.testing.assert_array_equal(written[key], value)


def test_bad_or_missing_checkpoint_is_one_line(stopped, tmp_path, capsys):
    _, run, _, _ = stopped
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "best.npz").unlink()
    capsys.readouterr()
    assert cli.main(["eval", str(bare), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bare / 'best.npz'}: no best")
    assert "--checkpoint last" in err
    assert cli.main(["eval", str(bare)]) == 0  # the default falls back to the last
    assert "(last checkpoint)" in capsys.readouterr().out
    assert cli.main(["sample", str(run), "--checkpoint", "middle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint" in err and "'best', 'last'" in err
    with pytest.raises(DataError, match="checkpoint 'middle' is not one of best, last"):
        seqgraph.load(run, checkpoint="middle")


@pytest.mark.parametrize(
    "early, expected",
    [
        (
            {"mode": "up"},
            r"early\.yaml:\d+: train\.early_stopping\.mode: got 'up'; expected one of: min, max",
        ),
        ({"patience": 0}, r"early\.yaml:\d+: train\.early_stopping\.patience: "),
        ({"min_delta": -0.1}, r"early\.yaml:\d+: train\.early_stopping\.min_delta: "),
        (
            {"metric": "valid_bleu"},
            r"early\.yaml:\d+: train\.early_stopping\.metric: 'valid_bleu' is not a validation "
            r"metric of this run; use one of valid_accuracy, valid_loss$",
        ),
    ],
)
def test_bad_early_stopping_settings_are_one_line_with_their_line(tmp_path, early, expected):
    spec = _write_spec(tmp_path, early_stopping=early)
    with pytest.raises(SpecError, match=expected):
        api.train(str(spec), out=str(tmp_path / "run"), steps=1, **QUIET)


def test_early_stopping_without_validation_data_is_refused(tmp_path, capsys):
    spec = _write_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["valid_fraction"] = 0.0
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.early_stopping: stops on a validation metric" in err
    assert "(no validation data: valid_fraction 0.0 gives 0 examples" in err
    assert "raise data.valid_fraction or drop train.early_stopping" in err


def test_mode_defaults_from_the_metric_name_and_min_delta_must_be_beaten():
    assert [default_mode(m) for m in ("valid_loss", "valid_per", "valid_cer")] == ["min"] * 3
    assert [default_mode(m) for m in ("valid_accuracy", "valid_macro_f1", "valid_bleu")] == [
        "max"
    ] * 3
    best = Best.from_config({"metric": "valid_accuracy", "patience": 2, "min_delta": 0.01})
    assert best.mode == "max"
    seen = [best.observe(step, {"valid_accuracy": a}) for step, a in enumerate([0.5, 0.505, 0.52])]
    assert seen == [True, False, True] and (best.step, best.stale) == (2, 0)
    assert not best.observe(3, {"valid_accuracy": float("nan")}) and best.stale == 1
    assert not best.exhausted and not best.observe(4, {"valid_accuracy": 0.5}) and best.exhausted


def test_serve_answers_with_the_checkpoint_asked(stopped, monkeypatch):
    pytest.importorskip("uvicorn", reason="seqgraph[serve] (uvicorn) is not installed")
    from seqgraph import serve

    _, run, summary, _ = stopped
    served = []
    monkeypatch.setattr(serve, "create_app", lambda predictor, limits: predictor)
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **options: served.append(app.info()))
    for flags in (["--checkpoint", "last"], ["--checkpoint", "best"], []):
        assert cli.main(["serve", str(run), "--port", "0", *flags]) == 0
    best_step = summary["best"]["step"]
    assert [info["step"] for info in served] == [summary["steps_done"], best_step, best_step]


def test_run_prints_where_the_best_checkpoint_is(tmp_path, capsys):
    spec = _write_spec(tmp_path, early_stopping={"metric": "valid_accuracy"})
    out = tmp_path / "run"
    assert cli.main(["run", str(spec), "--out", str(out), "--steps", str(2 * EVAL_EVERY)]) == 0
    printed = capsys.readouterr().out.splitlines()
    best = next(r for r in reversed(_records(out, "best")))
    assert best["metric"] == "valid_accuracy"
    assert printed[-1] == (
        f"best valid_accuracy {best['value']:.4f} at step {best['step']}: {out / 'best.npz'}"
    )
    assert any("new best valid_accuracy" in line for line in printed)
