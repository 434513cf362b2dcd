"""CTC end to end: the op against PyTorch and finite differences, its edge cases, a tiny
bidirectional LSTM + CTC model's gradients, batch checks, decoding and scoring."""

from __future__ import annotations

import json

import array_api_compat.numpy as xnp
import numpy as np
import pytest
import yaml
from support import check_param_grads, host, record, require_gpu

from seqgraph import Model, api, load_spec
from seqgraph.cli import main
from seqgraph.engine import ops
from seqgraph.errors import DataError, SpecError
from seqgraph.train import data as datasets
from seqgraph.train.ctc import (
    baseline,
    edit_distance,
    greedy_decode,
    nearest,
    references,
    score,
)

CTC = ops.OPS["ctc"]
EPS = 1e-6


def ragged_case(seed: int = 0):
    """Six sequences: ragged inputs, repeated labels, an empty label, a tight fit (T = S +
    repeats) and padding that holds ids other than 0."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(6, 9, 5)) * 2
    labels = np.array(
        [[1, 2, 3, 4], [2, 2, 3, 3], [4, 0, 0, 0], [1, 1, 1, 0], [3, 1, 4, 2], [2, 3, 3, 1]]
    )
    input_lengths = np.array([9, 7, 5, 5, 4, 9])
    label_lengths = np.array([4, 4, 0, 3, 4, 2])
    return logits, labels, input_lengths, label_lengths


def test_ctc_matches_torch_loss_and_gradient():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    logits, labels, input_lengths, label_lengths = ragged_case()
    out = CTC.forward(xnp, logits, labels, input_lengths, label_lengths)
    g = np.random.default_rng(1).uniform(0.5, 2.0, size=6)
    grad = CTC.vjp(xnp, g, out, logits, labels, input_lengths, label_lengths)[0]

    z = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.ctc_loss(
        torch.log_softmax(z, -1).transpose(0, 1),
        torch.tensor(labels),
        torch.tensor(input_lengths),
        torch.tensor(label_lengths),
        blank=0,
        reduction="none",
    )
    (expected * torch.tensor(g)).sum().backward()
    loss_error = np.max(np.abs(out - expected.detach().numpy()))
    grad_error = np.max(np.abs(grad - z.grad.numpy()))
    record("ctc: loss vs torch ctc_loss float64 (abs)", loss_error, "ragged_case")
    record("ctc: dlogits vs torch ctc_loss float64 (abs)", grad_error, "ragged_case")
    assert np.all(np.isfinite(out)) and out.min() > 0
    assert loss_error < 1e-12 and grad_error < 1e-12


def test_ctc_per_element_finite_differences():
    logits, labels, input_lengths, label_lengths = ragged_case(2)
    args = (labels, input_lengths, label_lengths)
    g = np.random.default_rng(3).normal(size=6)
    grad = CTC.vjp(xnp, g, CTC.forward(xnp, logits, *args), logits, *args)[0]
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += EPS
        down[index] -= EPS
        numeric[index] = g @ (CTC.forward(xnp, up, *args) - CTC.forward(xnp, down, *args))
    numeric /= 2 * EPS
    record("ctc: per-element VJP vs central differences (abs)", np.max(np.abs(grad - numeric)))
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # frames after each input's end get no gradient
    assert np.all(grad[1, 7:] == 0) and np.all(grad[4, 4:] == 0)


def test_empty_label_is_all_blanks():
    logits, labels, input_lengths, _ = ragged_case()
    out = CTC.forward(xnp, logits, labels, input_lengths, np.zeros(6, dtype=np.int64))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [-logp[b, : input_lengths[b], 0].sum() for b in range(6)]
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_too_short_input_is_infinite_with_zero_gradient():
    """[1, 1, 2] needs 4 frames (a blank between the two 1s): 3 frames give +inf."""
    logits = np.random.default_rng(0).normal(size=(2, 4, 3))
    labels, lengths = np.array([[1, 1, 2], [1, 1, 2]]), np.array([3, 4])
    out = CTC.forward(xnp, logits, labels, lengths, np.array([3, 3]))
    assert out[0] == np.inf and np.isfinite(out[1])
    grad = CTC.vjp(xnp, np.ones(2), out, logits, labels, lengths, np.array([3, 3]))[0]
    assert np.all(grad[0] == 0) and np.all(np.isfinite(grad)) and np.any(grad[1] != 0)


def test_float32_with_large_logits_stays_finite():
    logits, labels, input_lengths, label_lengths = ragged_case()
    big = logits * 40
    args = (labels, input_lengths, label_lengths)
    out64 = CTC.forward(xnp, big, *args)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out32 = CTC.forward(xnp, big.astype(np.float32), *args)
        grad32 = CTC.vjp(xnp, np.ones(6, np.float32), out32, big.astype(np.float32), *args)[0]
    assert out32.dtype == np.float32 and np.all(np.isfinite(grad32))
    np.testing.assert_allclose(out32, out64, rtol=1e-5)


# ---- a model -------------------------------------------------------------------------------


def ctc_spec(hidden: int = 3) -> dict:
    layer = {"cell": "lstm", "hidden": hidden, "bidirectional": True}
    return {
        "name": "tiny_ctc",
        "seed": 5,
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": 4},
            "loss": "ctc",
            "layers": [layer, dict(layer)],
        },
    }


def ctc_batch() -> dict:
    x = np.random.default_rng(4).normal(size=(3, 6, 3))
    return {
        "x": x,
        "lengths": np.array([6, 4, 5]),
        "y": np.array([[1, 2, 2], [3, 0, 0], [1, 1, 0]]),
        "y_lengths": np.array([3, 1, 2]),
    }


@pytest.mark.parametrize("engine", ["interp", "plan"])
def test_bidirectional_lstm_ctc_gradients_match_central_differences(engine):
    model = Model(ctc_spec(), dtype="float64", engine=engine)
    check_param_grads(
        model, ctc_batch(), "ctc: 2-layer BiLSTM + CTC param grads (rel)", label=engine
    )


def test_plan_and_interpreter_agree_on_a_ctc_model():
    batch = ctc_batch()
    results = [
        Model(ctc_spec(), dtype="float64", engine=e).loss_and_grads(batch)
        for e in ("interp", "plan")
    ]
    (loss_i, grads_i), (loss_p, grads_p) = results
    assert loss_i == pytest.approx(loss_p, rel=1e-12) and loss_i > 0
    for name in grads_i:
        np.testing.assert_allclose(host(grads_p[name]), host(grads_i[name]), rtol=1e-10, atol=1e-13)


def test_ctc_loss_is_the_batch_mean_of_the_op():
    model = Model(ctc_spec(), dtype="float64", engine="interp")
    batch = ctc_batch()
    out = model.forward(batch)
    assert out["predictions"].shape == (3, 6, 4)
    nll = CTC.forward(
        xnp, host(out["predictions"]), batch["y"], batch["lengths"], batch["y_lengths"]
    )
    assert out["loss"] == pytest.approx(float(np.mean(nll)), rel=1e-12)


def test_ctc_batches_are_checked():
    model = Model(ctc_spec(), dtype="float64")
    batch = ctc_batch()
    with pytest.raises(DataError, match="id 0, the CTC blank"):
        model.forward({**batch, "y": np.array([[1, 0, 2], [3, 0, 0], [1, 1, 0]])})
    with pytest.raises(DataError, match="sequence 2 has 2 input steps, too few .* needs 3"):
        model.forward({**batch, "lengths": np.array([6, 4, 2])})
    with pytest.raises(DataError, match="must lie in 0..3"):
        model.forward({**batch, "y_lengths": np.array([3, 4, 1])})


def test_ctc_spec_checks():
    spec = ctc_spec()
    assert load_spec(spec).model.loss == "ctc"
    spec["model"]["pattern"] = "many_to_one"
    with pytest.raises(SpecError, match="use pattern many_to_many"):
        load_spec(spec)
    spec = ctc_spec()
    spec["model"]["target"] = {"type": "vectors", "size": 4}
    with pytest.raises(SpecError, match="ctc needs `target: {type: ids}`"):
        load_spec(spec)
    plain = ctc_spec()
    del plain["model"]["loss"]
    assert load_spec(plain).model.loss == "softmax_ce"


# ---- decoding and scores -------------------------------------------------------------------


def test_greedy_decode_merges_repeats_and_drops_blanks():
    path = np.array([[0, 1, 1, 0, 1, 2, 2, 0], [3, 3, 0, 3, 2, 2, 1, 1]])
    logits = np.eye(4)[path]
    assert greedy_decode(logits, [8, 5]) == [[1, 1, 2], [3, 3, 2]]
    assert greedy_decode(logits) == [[1, 1, 2], [3, 3, 2, 1]]


def test_edit_distance_and_scores():
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 4]) == 2
    assert edit_distance([5, 1, 2], [1, 2, 5]) == 2
    assert nearest([1, 9], [(2, 3), (1, 2), (1, 9, 9)]) == (1, 2)
    result = score([[1, 2, 3], [4, 5]], [[1, 3], [4, 5]])
    assert result["per"] == pytest.approx(1 / 5)
    assert result["digit_accuracy"] == 0.5 and result["nearest_accuracy"] == 1.0
    guess, floor = baseline([[1, 2], [1, 2], [1, 3], [4]], [[1, 2], [4]])
    assert guess == (1, 2)
    assert floor["per"] == pytest.approx(2 / 3) and floor["digit_accuracy"] == 0.5


def npz_ctc_run(tmp_path) -> tuple:
    """A CTC spec on the generic npz source: labels as long as the frames, no repeats."""
    rng = np.random.default_rng(5)
    labels = rng.integers(1, 4, size=(20, 6))
    labels[:, 1::2] = 4  # no two equal neighbours, so every label sequence fits its frames
    path = tmp_path / "ctc.npz"
    np.savez(path, x=rng.normal(size=(20, 6, 3)).astype(np.float32), y=labels)
    spec = {
        "name": "npz_ctc",
        "seed": 3,
        "model": {**ctc_spec()["model"], "input": {"type": "vectors", "size": 3}},
        "data": {"source": "npz", "valid_fraction": 0.3},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "valid_batches": 5},
    }
    spec["model"]["target"] = {"type": "ids", "vocab": 5}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return str(spec_path), str(path)


def test_any_ctc_model_is_scored_by_greedy_decoding_whatever_its_data_source(tmp_path, capsys):
    """Regression: PER is the CTC loss's score, not the spoken-digit application's."""
    spec, data = npz_ctc_run(tmp_path)
    out = tmp_path / "run"
    assert main(["run", spec, "--data", data, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    progress = next(line for line in printed if line.startswith("step 2: validation"))
    assert ", PER " in progress and progress.count(",") == 2  # short: PER, digit accuracy
    assert "; PER " in next(line for line in printed if line.startswith("done: 4 steps"))
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    model = api.load_run(out)
    dataset = datasets.load(model.spec.data, "many_to_many", model.spec.seed)
    refs, hyps = [], []
    for batch in dataset.valid_batches(4, 0):
        refs += references(batch)
        logits = np.asarray(model.forward(batch)["predictions"])
        hyps += greedy_decode(logits, batch.get("lengths"))
    expected = score(refs, hyps)
    assert result["sequences"] == len(refs) == 6
    assert result["per"] == expected["per"]
    assert result["digit_accuracy"] == expected["digit_accuracy"]
    assert result["nearest_accuracy"] == expected["nearest_accuracy"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "per" in m] == [2, 4]


@pytest.mark.gpu
def test_ctc_on_cupy_matches_numpy():
    """The op (array API code on CuPy) and a BiLSTM + CTC model through the plan on the GPU."""
    cupy = require_gpu()
    import array_api_compat.cupy as xcp

    case = ragged_case()
    g = np.linspace(0.5, 2.0, 6)
    out = CTC.forward(xnp, *case)
    grad = CTC.vjp(xnp, g, out, *case)[0]
    on_gpu = [cupy.asarray(a) for a in case]
    out_gpu = CTC.forward(xcp, *on_gpu)
    grad_gpu = CTC.vjp(xcp, cupy.asarray(g), out_gpu, *on_gpu)[0]
    assert isinstance(grad_gpu, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out_gpu), out, rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(grad_gpu), grad, rtol=1e-10, atol=1e-13)
    batch = ctc_batch()
    want_loss, want = Model(ctc_spec(), dtype="float64").loss_and_grads(batch)
    got_loss, got = Model(ctc_spec(), backend="cupy", dtype="float64").loss_and_grads(batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-10)
    worst = max(float(np.max(np.abs(host(got[k]) - host(want[k])))) for k in want)
    record("ctc: cupy float64 vs numpy model grads (abs)", worst)
    assert worst < 1e-10
