"""Weight averaging (`train.ema`): the average follows torch's AveragedModel with
get_ema_multi_avg_fn step for step (float64); a run validates, keeps best.npz and checkpoints
the averaged weights while it trains on from the raw ones, which its checkpoint also holds;
`eval` and the rest read the averaged weights; without train.ema nothing changes; bad values
are one line naming the key and the fix."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqgraph import api, cli
from seqgraph.api_runs import load_run
from seqgraph.train import distributed, loop, run_folder
from seqgraph.train.ema import WeightAverage
from seqgraph.train.evaluate import evaluate
from seqgraph.train.optim import Optimizer

QUIET = {"progress": False, "sample": False, "log": lambda line: None}
SHAPES = {"W": (3, 4), "b": (4,)}


def _torch_average(torch, params: dict, decay: float):
    """(a module holding `params`, torch's EMA of it); torch's names have `__` for `.`."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    module = torch.nn.Module()
    for name, value in params.items():
        tensor = torch.nn.Parameter(torch.tensor(value.copy()))
        module.register_parameter(name.replace(".", "__"), tensor)
    return module, AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay))


@pytest.mark.parametrize("decay, start", [(0.9, 0), (0.99, 0), (0.8, 5)])
def test_average_follows_torch_averaged_model_for_20_adam_steps(decay, start):
    torch = pytest.importorskip("torch", reason="PyTorch is the weight-averaging reference")
    rng = np.random.default_rng(11)
    ours = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    module, reference = _torch_average(torch, ours, decay)
    optimizer, theirs = Optimizer({"name": "adam"}, np), torch.optim.Adam(module.parameters())
    average = WeightAverage(decay, start)
    for step in range(1, 21):
        grads = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
        ours = optimizer.update(ours, grads, 0.001)
        for name, tensor in module.named_parameters():
            tensor.grad = torch.tensor(grads[name])
        theirs.step()
        average.update(ours, step)
        if step > start:  # torch's SWA pattern: update_parameters from swa_start on
            reference.update_parameters(module)
            expected = dict(reference.module.named_parameters())
        else:  # no average yet: the weights themselves
            expected = dict(module.named_parameters())
        for name, value in average.averaged.items():
            want = expected[name].detach().numpy()
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-15, err_msg=f"{step}")
    assert all(not np.allclose(average.averaged[k], ours[k]) for k in ours)  # it did average


def _spec(tmp: Path, **train) -> Path:
    """A tiny GRU sentence classifier in float64 on 120 tab-separated lines."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(20)]
    rows = []
    for _ in range(120):
        sentence = [rng.choice(words) for _ in range(rng.randint(2, 5))]
        rows.append(f"{' '.join(sentence)}\t{'a' if 'w1' in sentence else 'b'}\n")
    (tmp / "s.tsv").write_text("".join(rows))
    spec = {
        "name": "averaged",
        "seed": 0,
        "dtype": "float64",
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "ids", "vocab": "auto"},
            "target": {"type": "ids", "vocab": "auto"},
            "encoders": [{"type": "embedding", "size": 6, "dropout": 0.2}],
            "layers": [{"cell": "gru", "hidden": 6}],
        },
        "data": {"source": "tsv", "path": str(tmp / "s.tsv"), "valid_fraction": 0.25},
        "train": {
            "steps": 20,
            "batch_size": 8,
            "lr": 0.05,
            "eval_every": 5,
            "valid_batches": 10,
            "log_every": 1,
            "checkpoint_every": 1000,
            **train,
        },
    }
    path = tmp / f"averaged{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trajectory(monkeypatch, spec: Path, out: Path) -> list[dict]:
    """The parameters after each step of a run, as its optimizer returned them."""
    steps, update = [], Optimizer.update

    def recorded(self, params, grads, lr):
        new = update(self, params, grads, lr)
        steps.append({k: np.array(v) for k, v in new.items()})
        return new

    monkeypatch.setattr(Optimizer, "update", recorded)
    api.train(str(spec), out=str(out), **QUIET)
    monkeypatch.undo()
    return steps


def test_a_run_checkpoints_torchs_average_of_its_trajectory(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is the weight-averaging reference")
    plain = _trajectory(monkeypatch, _spec(tmp_path), tmp_path / "plain")
    assert len(plain) == 20
    api.train(str(_spec(tmp_path, ema={"decay": 0.9})), out=str(tmp_path / "ema"), **QUIET)
    averaged, raw, *_ = run_folder.load_training_state(tmp_path / "ema")
    for name, value in plain[-1].items():  # averaging leaves training alone, bit for bit
        np.testing.assert_array_equal(raw[name], value, err_msg=name)
    module, reference = _torch_average(torch, plain[0], 0.9)
    for params in plain:
        with torch.no_grad():
            for name, tensor in module.named_parameters():
                tensor.copy_(torch.tensor(params[name.replace("__", ".")]))
        reference.update_parameters(module)
    for name, tensor in reference.module.named_parameters():
        want = tensor.detach().numpy()
        np.testing.assert_allclose(averaged[name.replace("__", ".")], want, rtol=1e-12)
    without = run_folder.load_training_state(tmp_path / "plain")
    assert without[1] == {}  # no raw/ arrays without train.ema
    for name, value in plain[-1].items():
        np.testing.assert_array_equal(without[0][name], value, err_msg=name)


def test_validation_best_npz_and_eval_use_the_averaged_weights(tmp_path):
    run = tmp_path / "run"
    summary = api.train(str(_spec(tmp_path, ema={"decay": 0.7})), out=str(run), **QUIET)
    averaged, raw, *_ = run_folder.load_training_state(run)
    last = api.evaluate_run(run, checkpoint="last")
    assert last["loss"] == pytest.approx(summary["valid"]["loss"], rel=1e-12)
    best = api.evaluate_run(run, checkpoint="best")
    assert best["loss"] == pytest.approx(summary["best"]["value"], rel=1e-12)
    model = load_run(run, checkpoint="last")  # what predict, sample, export and serve read
    for name, value in averaged.items():
        np.testing.assert_array_equal(np.asarray(model.params[name]), value, err_msg=name)
    dataset = loop.prepare(str(_spec(tmp_path)))[1]
    with_averaged = evaluate(model, dataset.valid_batches(8, 64))["loss"]
    model.set_params(raw)
    with_raw = evaluate(model, dataset.valid_batches(8, 64))["loss"]
    assert with_averaged == pytest.approx(last["loss"], rel=1e-12)
    assert abs(with_raw - with_averaged) > 1e-6  # the two sets of weights differ


def test_without_ema_and_before_its_start_training_is_unchanged(tmp_path):
    runs = {
        "plain": _spec(tmp_path),
        "late": _spec(tmp_path, ema={"decay": 0.9, "start": 20}),  # never averages
    }
    for name, spec in runs.items():
        api.train(str(spec), out=str(tmp_path / name), **QUIET)
    plain, late = (run_folder.load_training_state(tmp_path / name) for name in runs)
    for name in plain[0]:
        np.testing.assert_array_equal(plain[0][name], late[1][name], err_msg=name)
        np.testing.assert_array_equal(plain[0][name], late[0][name], err_msg=name)
    records = [
        [r for r in run_folder.read_metrics(tmp_path / name) if r["kind"] == "valid"]
        for name in runs
    ]
    assert [r["valid_loss"] for r in records[0]] == [r["valid_loss"] for r in records[1]]


def test_resume_with_ema_is_bit_identical(tmp_path):
    spec = _spec(tmp_path, ema={"decay": 0.8, "start": 2})
    api.train(str(spec), out=str(tmp_path / "whole"), **QUIET)
    api.train(str(spec), out=str(tmp_path / "part"), stop_after=7, **QUIET)
    api.train(str(spec), out=str(tmp_path / "part"), resume=True, **QUIET)
    for name in ("checkpoint.npz", "best.npz"):
        whole = run_folder.load_training_state(tmp_path / "whole", name)
        part = run_folder.load_training_state(tmp_path / "part", name)
        assert whole[4] == part[4]  # step, RNG, best counters
        for mine, theirs in zip(whole[:4], part[:4]):
            assert pickle.dumps(mine) == pickle.dumps(theirs), name


def test_ranks_start_from_rank_0s_average(tmp_path):
    """`_share_start` hands rank 0's average (read from the checkpoint) to every rank."""

    class TwoRanks(distributed.Single):
        size = 2

        def share(self, value):  # what travels between processes: a pickle
            return pickle.loads(pickle.dumps(value))

    spec = _spec(tmp_path, ema={"decay": 0.9})
    api.train(str(spec), out=str(tmp_path / "run"), **QUIET)
    averaged, raw, *_ = run_folder.load_training_state(tmp_path / "run")
    model = load_run(tmp_path / "run")
    model.set_params(raw)
    average = WeightAverage(0.9)
    average.averaged = {k: np.array(v) for k, v in averaged.items()}
    other = WeightAverage(0.9)
    optimizer = Optimizer({}, np)
    rng = np.random.default_rng(0)
    shared = loop._share_start(TwoRanks(), model, optimizer, average, rng, 20, {}, None)
    assert shared == (20, {}, None)
    assert average.averaged.keys() == averaged.keys()
    for name, value in averaged.items():
        np.testing.assert_array_equal(average.averaged[name], value)
    loop._share_start(TwoRanks(), model, optimizer, other, rng, 20, {}, None)
    assert other.averaged == {}  # a rank's own average is replaced by rank 0's


BAD_VALUES = [
    (0.999, "train.ema: got 0.999; expected object; write it as {decay: 0.999}"),
    ({"decay": 1.0}, "train.ema.decay: 1.0 is greater than or equal to the maximum of 1"),
    ({"decay": 0}, "train.ema.decay: 0 is less than or equal to the minimum of 0"),
    ({}, "train.ema: missing required key: 'decay'"),
    ({"decy": 0.9}, "train.ema.decy: unknown key 'decy'; did you mean 'decay'?"),
    ({"decay": 0.9, "start": -1}, "train.ema.start: -1 is less than the minimum of 0"),
]


@pytest.mark.parametrize("value, message", BAD_VALUES, ids=lambda v: str(v)[:20])
def test_a_bad_ema_is_one_line_naming_the_key_and_the_fix(tmp_path, capsys, value, message):
    spec = _spec(tmp_path, ema=value)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(spec) in err
    if "decay:" in message and "maximum" in message:
        assert "must be in (0, 1), such as 0.99 or 0.999" in err
    assert not (tmp_path / "run").exists()


def test_the_average_keeps_the_weights_dtype():
    weights = {"W": np.ones((2, 2), np.float32)}
    average = WeightAverage(0.999)
    for step in (1, 2, 3):
        weights = {"W": weights["W"] * np.float32(1.5)}
        average.update(weights, step)
    assert average.averaged["W"].dtype == np.float32
    # 1.5 after step 1 (a copy), then 0.001 of each new value folded in, in float32
    expected = np.float32(1.5)
    for value in (np.float32(2.25), np.float32(3.375)):
        expected = np.float32(0.999) * expected + np.float32(0.001) * value
    np.testing.assert_allclose(average.averaged["W"], expected, rtol=1e-6)
