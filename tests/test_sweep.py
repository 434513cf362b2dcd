"""`seqgraph sweep`: the space file, trials as run folders, pruning from the validation
records, several worker processes on one SQLite study, and a restart that continues it."""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import pytest
import yaml
from experiments_support import classifier_spec

from seqgraph.cli import main
from seqgraph.errors import SpecError
from seqgraph.experiments import space as spaces
from seqgraph.train import run_folder

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")
from seqgraph.experiments import sweep  # noqa: E402

SPACE = "train.lr: {log_uniform: [0.001, 0.05]}\nmodel.layers[0].hidden: {choice: [3, 5, 8]}\n"


def write_space(tmp_path, text: str = SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_two_workers_share_the_study_and_a_restart_continues_it(tmp_path, capsys):
    spec = classifier_spec(tmp_path, steps=2)
    out = tmp_path / "sweep"
    argv = ["sweep", str(spec), "--space", str(write_space(tmp_path)), "--out", str(out)]
    assert main([*argv, "--trials", "2", "--workers", "2", "--metric", "accuracy"]) == 0
    first = capsys.readouterr().out
    assert "0 trial(s) done, 2 to run" in first
    assert main([*argv, "--trials", "3", "--metric", "accuracy"]) == 0  # killed or not: continue
    assert "2 trial(s) done, 1 to run" in capsys.readouterr().out
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["train.lr"] == "0.01" and rows[0]["model.layers[0].hidden"] == "5"  # hand-set
    for row in rows:  # each trial is a run folder, scored by its last validation record
        assert row["state"] == "COMPLETE".lower()
        records = run_folder.read_metrics(row["run_dir"])
        last = [r for r in records if r["kind"] == "valid"][-1]
        assert float(row["accuracy"]) == pytest.approx(last["accuracy"])
        ran = yaml.safe_load((tmp_path / row["run_dir"] / "spec.yaml").read_text())
        assert ran["train"]["lr"] == pytest.approx(float(row["train.lr"]))
        assert ran["model"]["layers"][0]["hidden"] == int(row["model.layers[0].hidden"])
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["trial"])))
    best_spec = yaml.safe_load((out / "best.yaml").read_text())
    assert best_spec["train"]["lr"] == pytest.approx(float(best["train.lr"]))
    assert best_spec["train"]["steps"] == 2 and best_spec["name"] == "tiny_sentiment"
    assert (out / "history.png").stat().st_size > 1000
    assert (out / "importance.png").stat().st_size > 1000


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_trial_is_pruned_at_its_first_evaluation(tmp_path):
    spec = classifier_spec(tmp_path, steps=6, eval_every=2)
    options = sweep.SweepOptions(str(spec), str(write_space(tmp_path)), metric="valid_loss")
    base = yaml.safe_load(spec.read_text())
    params = spaces.read_space(options.space, base)
    study = optuna.create_study(pruner=AlwaysPrune())
    objective = sweep.TrialObjective(optuna, options, base, params, tmp_path / "out")
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values.keys() == {2}
    records = run_folder.read_metrics(tmp_path / "out" / "trial_000")
    assert [r["step"] for r in records if r["kind"] == "valid"] == [2]  # stopped right there
    assert trial.intermediate_values[2] == records[-1]["valid_loss"]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("train.lr: {normal: [0, 1]}\n", 1, "unknown key 'normal'"),
        (
            "train.batch_size: {int: [4, 8]}\ntrain.lr: {uniform: [0.1, 0.01]}\n",
            2,
            "is empty; write [low, high]",
        ),
        ("train.lr: {log_uniform: [0, 1]}\n", 1, "positive low end"),
        ("model.layers[3].hidden: {choice: [4]}\n", 1, "no such place"),
        ("model.layers[0].hidden: {choice: [4, 0]}\n", 1, "invalid with 0 there"),
        ("model..hidden: {choice: [4]}\n", 1, "not a spec path"),
    ],
)
def test_space_errors_name_the_file_line_and_fix(tmp_path, text, line, message):
    spec = classifier_spec(tmp_path)
    with pytest.raises(SpecError) as caught:
        spaces.read_space(write_space(tmp_path, text), yaml.safe_load(spec.read_text()))
    assert str(caught.value).startswith(f"{tmp_path / 'space.yaml'}:{line}: ")
    assert message in str(caught.value)


def test_sweep_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    spec = classifier_spec(tmp_path, steps=2)
    space = write_space(tmp_path)
    argv = ["sweep", str(spec), "--space", str(space), "--out", str(tmp_path / "s")]
    assert main([*argv, "--storage", "nosuchdb://x"]) == 2
    assert "--storage nosuchdb://x: cannot open the study database" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: seqgraph sweep needs optuna: pip install 'seqgraph[sweep]'\n"


def test_a_metric_the_records_lack_names_the_ones_they_hold():
    records = [{"kind": "valid", "step": 2, "valid_loss": 0.5, "accuracy": 1.0, "time": 1.0}]
    assert sweep.metric_value(records, "accuracy", "r") == 1.0
    with pytest.raises(Exception, match="no validation record holds 'bleu'.*accuracy, valid_loss"):
        sweep.metric_value(records, "bleu", "r")
    assert sweep.direction("valid_loss") == "minimize" and sweep.direction("cer") == "minimize"
    assert sweep.direction("accuracy") == "maximize"


SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.mark.parametrize("space", sorted((SPECS / "spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_space_fits_its_spec(space):
    base = yaml.safe_load((SPECS / space.name).read_text())
    params = spaces.read_space(space, base)
    hand = [spaces.get(base, p.path) for p in params]
    assert all(p.holds(v) for p, v in zip(params, hand))  # the hand-set spec is trial 0


def test_ctrl_c_in_a_trial_stops_the_sweep_not_just_the_trial(tmp_path, monkeypatch):
    spec = classifier_spec(tmp_path, steps=6)
    options = sweep.SweepOptions(str(spec), str(write_space(tmp_path)))
    base = yaml.safe_load(spec.read_text())
    real_run = sweep.train_run

    def interrupted_run(run_options, log):  # as if Ctrl-C came after the first step
        return real_run(dataclasses.replace(run_options, stop_after=1), log=log)

    monkeypatch.setattr(sweep, "train_run", interrupted_run)
    study = optuna.create_study()
    objective = sweep.TrialObjective(
        optuna, options, base, spaces.read_space(options.space, base), tmp_path / "out"
    )
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=3)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
    assert run_folder.load_checkpoint(tmp_path / "out" / "trial_000")[3]["step"] == 1


def test_a_killed_sweep_restarted_keeps_its_finished_trials(tmp_path, capsys):
    """SIGKILL during the second trial (no clean exit, no Python cleanup), then the same
    command: the first trial is kept as it was and the study runs to its count."""
    import contextlib
    import os
    import signal
    import sqlite3
    import subprocess
    import time

    spec = classifier_spec(tmp_path, steps=400)  # a trial of a second or more
    out = tmp_path / "sweep"
    argv = ["sweep", str(spec), "--space", str(write_space(tmp_path)), "--out", str(out)]
    argv += ["--trials", "3", "--metric", "accuracy"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen([sys.executable, "-m", "seqgraph", *argv], env=env, cwd=tmp_path)
    database = out / "study.db"
    storage = f"sqlite:///{database.resolve()}"
    deadline, done = time.monotonic() + 120, []
    while time.monotonic() < deadline and not done and process.poll() is None:
        time.sleep(0.2)
        # read-only SQL, not optuna.load_study: opening the storage creates its tables, and
        # doing so while the sweep creates them failed the sweep ("table trial_values
        # already exists"; regression)
        try:
            uri = f"file:{database}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                done = db.execute("SELECT number FROM trials WHERE state = 'COMPLETE'").fetchall()
        except sqlite3.Error:  # no database, no tables yet, or the sweep holds a lock
            continue
    assert done and process.poll() is None, "the first trial did not finish in time"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    study = optuna.load_study(study_name="tiny_sentiment", storage=storage)
    (finished,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[:1]
    first = (finished.number, finished.params, finished.value)
    assert main(argv) == 0
    assert "1 trial(s) done, 2 to run" in capsys.readouterr().out
    study = optuna.load_study(study_name="tiny_sentiment", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    kept = next(t for t in complete if t.number == first[0])
    assert (kept.number, kept.params, kept.value) == first
