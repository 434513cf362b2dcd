"""`train.log_to`: TensorBoard event files and an MLflow run hold what metrics.jsonl holds."""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from experiments_support import classifier_spec

from seqgraph import api
from seqgraph.cli import main
from seqgraph.train import tracking


def read_events(folder) -> list:
    """Every Event of the TFRecord files in `folder`, read without TensorBoard: each record is
    a little-endian length, its CRC, the serialized Event and the data's CRC."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12 : at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    return events


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_file_holds_the_scalars_and_the_spec(tmp_path):
    pytest.importorskip("tensorboardX", reason="the track extra is not installed")
    spec = classifier_spec(tmp_path, log_to=["tensorboard"])
    api.train(str(spec), out=str(tmp_path / "run"), progress=False)
    records = metrics(tmp_path / "run")
    scalars, texts = {}, []
    for event in read_events(tmp_path / "run" / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
            elif value.tag.endswith("text_summary"):
                texts.append(value.tensor.string_val[0].decode())
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for record in train:  # float32 in the event file
        step = record["step"]
        assert scalars["train/loss"][step] == pytest.approx(record["loss"], rel=1e-6)
        assert scalars["train/lr"][step] == pytest.approx(0.01)
        assert scalars["train/clip_rate"][step] == record["clip_rate"]
        for layer in ("enc0", "l0", "out"):  # one norm per layer, and they make up the whole
            assert scalars[f"grad_norm/{layer}"][step] == pytest.approx(
                record["grad_norms"][layer], rel=1e-6
            )
        whole = sum(v**2 for v in record["grad_norms"].values()) ** 0.5
        assert whole == pytest.approx(record["grad_norm"], rel=1e-9)
    for record in valid:
        assert scalars["valid/accuracy"][record["step"]] == pytest.approx(record["accuracy"])
        assert scalars["valid/valid_loss"][record["step"]] == pytest.approx(
            record["valid_loss"], rel=1e-6
        )
    assert any("pattern: many_to_one" in text for text in texts)  # the spec as run


def test_mlflow_file_store_holds_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the track extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    spec = classifier_spec(tmp_path, log_to=["mlflow"])
    api.train(str(spec), out=str(tmp_path / "run"), progress=False)
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tiny_sentiment")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    records = metrics(tmp_path / "run")
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history == {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    accuracy = client.get_metric_history(run.info.run_id, "valid/accuracy")
    assert [m.step for m in accuracy] == [2, 4, 6]
    spec_file = client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path))
    assert "tiny_sentiment" in open(spec_file).read()


def test_a_missing_tracker_is_one_line_with_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking.BACKENDS, "tensorboard", "no_such_module_xyz")
    spec = classifier_spec(tmp_path, log_to=["tensorboard"])
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: train.log_to: tensorboard needs the no_such_module_xyz package: "
        "pip install 'seqgraph[track]'"
    ]
    assert not (tmp_path / "run").exists()  # refused before the folder was made


def test_log_to_takes_only_known_trackers(tmp_path, capsys):
    spec = classifier_spec(tmp_path, log_to=["wandb"])
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.log_to[0]" in err and "tensorboard, mlflow" in err


def test_a_text_run_sends_its_sample_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX", reason="the track extra is not installed")
    (tmp_path / "code.txt").write_text("def add(a, b):\n    return a + b\n" * 30)
    spec = {
        "name": "tiny_text",
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "gru", "hidden": 6}],
        },
        "data": {"source": "text", "path": str(tmp_path / "code.txt")},
        "train": {"steps": 2, "batch_size": 2, "seq_len": 5, "prime": "def ", "log_every": 1,
                  "sample_length": 12, "log_to": ["tensorboard"]},
    }  # fmt: skip
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = api.train(str(path), out=str(tmp_path / "run"), progress=False, log=lambda _: None)
    texts = {
        value.tag: value.tensor.string_val[0].decode()
        for event in read_events(tmp_path / "run" / "tensorboard")
        for value in event.summary.value
        if value.tag.endswith("text_summary")
    }
    shown = "\n".join(
        line.removeprefix("    ") for line in texts["sample/text_summary"].split("\n")
    )
    assert shown == summary["sample"] and summary["sample"].startswith("def ")
