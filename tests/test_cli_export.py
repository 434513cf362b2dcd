"""`python -m seqgraph` as a real process, and `export --to onnx|pytorch|keras|onnx_weights`
on a tiny trained run folder: each file loads in the tool it is meant for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import char_spec

from seqgraph import Model, api
from seqgraph.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _python_m(*argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "seqgraph", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_python_m_seqgraph_help_lists_the_commands():
    done = _python_m("--help")
    assert done.returncode == 0, done.stderr
    for command in ("check", "run", "sample", "eval", "export", "render", "schema", "gradflow"):
        assert command in done.stdout


def test_python_m_seqgraph_check_and_its_errors(tmp_path):
    done = _python_m("check", "specs/compare_rnn.yaml", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("compare_rnn: many_to_many, ")
    missing = tmp_path / "nope.yaml"
    done = _python_m("check", str(missing))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {missing}: <root>: file not found; check the path\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    out = folder / "run"
    assert main(["run", str(char_spec(folder, steps=2)), "--out", str(out)]) == 0
    return out


def _export(run_dir: Path, to: str, capsys, output: Path | None = None) -> Path:
    argv = ["export", str(run_dir), "--to", to] + (["-o", str(output)] if output else [])
    capsys.readouterr()
    assert main(argv) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_file()
    return path


def test_export_onnx_runs_in_onnxruntime(run_dir, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = _export(run_dir, "onnx", capsys, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    model = api.load_run(run_dir)
    vocab = model.spec.model.input.size
    rng = np.random.default_rng(0)
    x, lengths = rng.integers(0, vocab, (2, 5)), np.array([5, 5])
    ours = np.asarray(model.forward({"x": x, "lengths": lengths})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": lengths.astype(np.int32)})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def test_export_keras_weights_have_keras_keys_and_shapes(run_dir, capsys):
    path = _export(run_dir, "keras", capsys)
    assert path == run_dir / "model.keras.npz"  # the default name
    model = api.load_run(run_dir)
    hidden, embedded = 8, 6
    with np.load(path) as weights:
        arrays = dict(weights)
    assert arrays["l0.kernel"].shape == (embedded, 4 * hidden)
    assert arrays["l0.recurrent_kernel"].shape == (hidden, 4 * hidden)
    assert arrays["l0.bias"].shape == (4 * hidden,)
    # Keras's LSTM gate order i, f, c, o is PyTorch's; one bias, the sum of the two
    np.testing.assert_array_equal(arrays["l0.kernel"], np.asarray(model.params["l0.W_ih"]))
    np.testing.assert_array_equal(
        arrays["l0.bias"], np.asarray(model.params["l0.b_ih"] + model.params["l0.b_hh"])
    )
    outside = set(model.params) - {f"l0.{n}" for n in ("W_ih", "W_hh", "b_ih", "b_hh")}
    assert set(arrays) == {"l0.kernel", "l0.recurrent_kernel", "l0.bias"} | outside
    # and a fresh model reading them computes the run's function
    fresh = Model(model.spec, dtype=str(np.asarray(model.params["l0.W_ih"]).dtype), seed=99)
    fresh.import_params(path, "keras")
    batch = {"x": np.array([[1, 2, 3, 4]]), "y": np.array([[2, 3, 4, 5]])}
    assert fresh.forward(batch)["loss"] == pytest.approx(model.forward(batch)["loss"], rel=1e-6)


def test_export_onnx_weights_have_onnx_layout(run_dir, tmp_path, capsys):
    path = _export(run_dir, "onnx_weights", capsys, tmp_path / "w.npz")
    with np.load(path) as weights:
        arrays = dict(weights)
    assert arrays["l0.W"].shape == (1, 32, 6)  # (directions, 4*hidden, input), gates i o f c
    assert arrays["l0.R"].shape == (1, 32, 8)
    assert arrays["l0.B"].shape == (1, 64)  # Wb and Rb side by side


def test_export_pytorch_weights_load_into_nn_lstm(run_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = _export(run_dir, "pytorch", capsys, tmp_path / "t.npz")
    with np.load(path) as weights:
        state = {k: torch.tensor(v) for k, v in weights.items() if k.endswith("_l0")}
    lstm = torch.nn.LSTM(6, 8, batch_first=True)
    lstm.load_state_dict(state, strict=True)
