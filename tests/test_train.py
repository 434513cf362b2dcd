"""Training through the API and the CLI: true resume, Ctrl-C, NaN, data errors, subcommands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph import api
from seqgraph.cli import main
from seqgraph.errors import DataError
from seqgraph.train import run_folder
from seqgraph.train.optim import learning_rate, sampling_probability

TEXT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x = 1\n" * 40


def write_spec(tmp_path: Path, model: dict, data: dict, train: dict, name="tiny") -> Path:
    spec = {
        "name": name,
        "seed": 3,
        "model": model,
        "data": data,
        "train": {
            "log_every": 1,
            "eval_every": 1000,
            "checkpoint_every": 1000,
            "valid_batches": 2,
            "sample_length": 20,
            **train,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def char_spec(tmp_path: Path, **train) -> Path:
    text = tmp_path / "code.txt"
    text.write_text(TEXT)
    model = {
        "pattern": "many_to_many",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 6}],
        "layers": [{"cell": "lstm", "hidden": 8}],
    }
    settings = {
        "steps": 8,
        "batch_size": 4,
        "seq_len": 7,
        "prime": "def ",
        "schedule": {"name": "cosine", "warmup": 2},
        **train,
    }
    return write_spec(tmp_path, model, {"source": "text", "path": str(text)}, settings)


def seq2seq_spec(tmp_path: Path) -> Path:
    model = {
        "pattern": "encoder_decoder",
        "input": {"type": "ids", "vocab": 6},
        "target": {"type": "ids", "vocab": 6},
        "encoders": [{"type": "embedding", "size": 5}],
        "layers": [{"cell": "gru", "hidden": 6}],
    }
    data = {"source": "copy", "symbols": 4, "length": 3, "delay": 1, "examples": 40}
    train = {"steps": 6, "batch_size": 5, "scheduled_sampling": {"schedule": "linear", "k": 4}}
    return write_spec(tmp_path, model, data, train, name="copy")


def averaged_char_spec(tmp_path: Path) -> Path:
    """char_spec with weight averaging whose first average (step 2) precedes the cut at 3."""
    return char_spec(tmp_path, ema={"decay": 0.8, "start": 1})


def params_of(run_dir: Path) -> dict:
    """The checkpoint's parameters, and under raw/ those training goes on from (train.ema)."""
    params, raw, *_ = run_folder.load_training_state(run_dir)
    return {**params, **{f"raw/{k}": v for k, v in raw.items()}}


@pytest.mark.parametrize("make_spec", [char_spec, seq2seq_spec, averaged_char_spec])
def test_resume_reaches_bit_identical_parameters(tmp_path, make_spec):
    spec = make_spec(tmp_path)
    quiet = {"progress": False, "sample": False, "log": lambda line: None}
    whole = api.train(str(spec), out=str(tmp_path / "whole"), **quiet)
    assert whole["steps_done"] == whole["total_steps"] and not whole["stopped"]
    part = api.train(str(spec), out=str(tmp_path / "part"), stop_after=3, **quiet)
    assert part["stopped"] and part["steps_done"] == 3
    assert run_folder.load_checkpoint(tmp_path / "part")[3]["step"] == 3
    api.train(str(spec), out=str(tmp_path / "part"), resume=True, **quiet)
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "part")
    assert a.keys() == b.keys()
    assert any(k.startswith("raw/") for k in a) == (make_spec is averaged_char_spec)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    steps = [
        r["step"]
        for r in run_folder.Metrics(tmp_path / "part", 10**9).read()
        if r["kind"] == "train"
    ]
    assert steps == list(range(1, whole["total_steps"] + 1))  # no duplicates after resume


def test_run_prints_a_sample_and_subcommands_work(tmp_path, capsys):
    spec = char_spec(tmp_path, steps=4)
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--- sample ---" in printed and "def " in printed.split("--- sample ---")[1]
    for name in ("spec.yaml", "data.json", "checkpoint.npz", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    resolved = yaml.safe_load((out / "spec.yaml").read_text())
    assert resolved["model"]["input"]["vocab"] == len(set(TEXT))
    assert main(["sample", str(out), "--length", "15", "--prime", "cl"]) == 0
    assert capsys.readouterr().out.startswith("cl")
    assert main(["sample", str(out), "--length", "5", "--greedy"]) == 0
    assert len(capsys.readouterr().out.strip()) == len("def ") + 5
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 4 and 0 < result["loss"] < 10 and 0 <= result["accuracy"] <= 1
    assert main(["export", str(out), "--to", "pytorch"]) == 0
    exported = np.load(capsys.readouterr().out.strip())
    assert exported["weight_hh_l0"].shape == (32, 8)
    assert main(["run", str(spec), "--out", str(out)]) == 2  # never overwrite a run
    assert "--resume" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow to NaN is the point
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    model = {
        "pattern": "many_to_one",
        "input": {"type": "vectors", "size": 2},
        "target": {"type": "vectors", "size": 1},
        "layers": [{"cell": "rnn", "hidden": 4}],
    }
    data = {"source": "adding", "steps": 5, "examples": 30}
    train = {
        "steps": 50,
        "batch_size": 5,
        "lr": 1e12,
        "optimizer": {"name": "sgd"},
        "checkpoint_every": 1,
        "clip": None,
    }
    spec = write_spec(tmp_path, model, data, train, name="boom")
    out = tmp_path / "boom"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loss became" in err and "last good checkpoint" in err
    params, _, _, meta = run_folder.load_checkpoint(out)
    assert 1 <= meta["step"] < 50
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path):
    spec = char_spec(tmp_path, steps=100000, checkpoint_every=100000)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqgraph.cli", "run", str(spec), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.time() + 60
    metrics = out / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"continue with --resume" in stdout
    meta = run_folder.load_checkpoint(out)[3]
    assert meta["step"] >= 3
    summary = api.train(
        str(spec),
        out=str(out),
        resume=True,
        steps=meta["step"] + 2,
        progress=False,
        sample=False,
        log=lambda line: None,
    )
    assert summary["steps_done"] == meta["step"] + 2 and not summary["stopped"]


def test_data_errors_name_the_file_and_row(tmp_path):
    model = {
        "pattern": "many_to_one",
        "input": {"type": "ids", "vocab": "auto"},
        "target": {"type": "ids", "vocab": "auto"},
        "encoders": [{"type": "embedding", "size": 4}],
        "layers": [{"cell": "gru", "hidden": 4}],
    }
    bad_row = tmp_path / "bad.tsv"
    bad_row.write_text("good movie\tpos\nno label here\n")
    spec = write_spec(tmp_path, model, {"source": "tsv", "path": str(bad_row)}, {"steps": 1})
    with pytest.raises(DataError, match=r"bad.tsv:2: expected"):
        api.train(str(spec), progress=False, out=str(tmp_path / "r1"))
    labels = tmp_path / "labels.tsv"
    labels.write_text("good\tpos\nbad\tneg\nmeh\tneutral\n")
    spec = write_spec(
        tmp_path,
        model,
        {"source": "tsv", "path": str(labels), "labels": ["pos", "neg"]},
        {"steps": 1},
    )
    with pytest.raises(DataError, match=r"labels.tsv:3: label 'neutral'"):
        api.train(str(spec), progress=False, out=str(tmp_path / "r2"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        api.train(str(char_spec(tmp_path)), data=str(empty), out=str(tmp_path / "r3"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"abc\ndef \xe9t\xe9\n")
    with pytest.raises(DataError, match=r"latin.txt:2: not UTF-8"):
        api.train(str(char_spec(tmp_path)), data=str(latin), out=str(tmp_path / "r4"))
    arrays = tmp_path / "nan.npz"
    x = np.zeros((3, 4, 2))
    x[1, 2, 0] = np.nan
    np.savez(arrays, x=x, y=np.zeros((3, 1)))
    vec = {
        "pattern": "many_to_one",
        "input": {"type": "vectors", "size": 2},
        "target": {"type": "vectors", "size": 1},
        "layers": [{"cell": "rnn", "hidden": 3}],
    }
    spec = write_spec(tmp_path, vec, {"source": "npz", "path": str(arrays)}, {"steps": 1})
    with pytest.raises(DataError, match=r"nan.npz: array 'x' has NaN or Inf \(example 1\)"):
        api.train(str(spec), progress=False, out=str(tmp_path / "r5"))
    with pytest.raises(DataError, match="pass --data PATH"):
        api.train(str(write_spec(tmp_path, vec, {"source": "npz"}, {"steps": 1})))


def test_schedules_and_sampling_probability():
    config = {"lr": 1.0, "schedule": {"name": "cosine", "warmup": 10, "min_factor": 0.0}}
    assert learning_rate(config, 0, 110) == pytest.approx(0.1)
    assert learning_rate(config, 9, 110) == pytest.approx(1.0)
    assert learning_rate(config, 60, 110) == pytest.approx(0.5)
    assert learning_rate(config, 110, 110) == pytest.approx(0.0)
    step = {"lr": 2.0, "schedule": {"name": "step", "gamma": 0.5, "every": 10}}
    assert learning_rate(step, 25, 100) == pytest.approx(0.5)
    assert sampling_probability({"schedule": "linear", "k": 100}, 50) == pytest.approx(0.5)
    assert sampling_probability({"schedule": "exponential", "base": 0.5}, 2) == 0.75
    inv = sampling_probability({"schedule": "inverse_sigmoid", "k": 10}, 0)
    assert inv == pytest.approx(1 - 10 / 11)
    assert sampling_probability(None, 10**6) == 0.0


def test_truncated_bptt_with_stride_carries_the_state_after_k1_steps(tmp_path):
    """k1 < k2: each window's first k2-k1 steps only warm the state up, so the carried state
    at the window boundary equals a plain forward run over the whole stream."""
    from seqgraph.train import data as datasets

    stream = datasets.Stream(np.arange(200) % 7, np.arange(50) % 7, [str(i) for i in range(7)])
    first = stream.batch_at(0, 2, 10, 0, stride=4)
    second = stream.batch_at(1, 2, 10, 0, stride=4)
    assert first["reset"] and first["loss_from"] == 0 and second["loss_from"] == 6
    np.testing.assert_array_equal(second["x"][:, :6], first["x"][:, 4:])
    spec = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": 7},
            "target": {"type": "ids", "vocab": 7},
            "encoders": [{"type": "onehot"}],
            "layers": [{"cell": "gru", "hidden": 5}],
        }
    }
    model = api.Model(spec, dtype="float64")
    _, _, carried = model.train_step(first, state_at=4)
    whole = model.forward({"x": first["x"][:, :4]})["state"]
    np.testing.assert_allclose(carried["l0.h0"], whole["l0.h0"], rtol=0, atol=1e-14)
    second["state"] = carried
    loss, _, _ = model.train_step(second, state_at=4)
    logits = np.asarray(model.forward({"x": second["x"], "state": carried})["predictions"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, second["y"][..., None], -1)[..., 0]
    expected = -picked[:, 6:].sum() / 2  # only the last k1 = 4 steps, averaged over B = 2
    assert loss == pytest.approx(expected, rel=1e-12)
