"""Optimizers, schedules, clipping and scheduled sampling against independent references.

Optimizers run side by side with `torch.optim` on the same gradients for several steps
(float64), and for 20 steps of a real loss under each schedule with warm-up, driven by
torch's own schedulers (LinearLR, then StepLR, ExponentialLR or CosineAnnealingLR through
SequentialLR). Learning-rate schedules and scheduled-sampling decays are also compared with
their formulas written out here (Bengio et al. 2015 for the sampling decays). Clipping runs
on hand-made gradients whose norm and squared norm sit on opposite sides of the limit, and
against torch.nn.utils.clip_grad_norm_ / clip_grad_value_.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from seqgraph.train.loop import _Loop
from seqgraph.train.optim import Optimizer, clip, learning_rate, sampling_probability

torch = pytest.importorskip("torch", reason="PyTorch is the optimizer reference")

SHAPES = {"W": (3, 4), "b": (4,)}
LRS = [0.1, 0.05, 0.2, 0.01, 0.1, 0.3]  # a different rate each step


def _torch_optimizer(config: dict, params: list, lr: float = 1.0):
    """The torch.optim optimizer `config` names, with torch's own defaults for what it leaves
    out (so seqgraph's defaults are checked too)."""
    options = {k: v for k, v in config.items() if k != "name"}
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    kind = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
    }[config["name"]]
    return kind(params, lr=lr, **options)


OPTIMIZER_CONFIGS = [
    {"name": "sgd"},
    {"name": "sgd", "momentum": 0.9},
    {"name": "sgd", "momentum": 0.9, "nesterov": True},
    {"name": "sgd", "momentum": 0.5, "nesterov": True, "weight_decay": 0.1},
    {"name": "adam"},
    {"name": "adam", "betas": (0.8, 0.95)},
    {"name": "adam", "weight_decay": 0.01},
    {"name": "adamw"},  # torch's default decay, 0.01
    {"name": "adamw", "weight_decay": 0.3, "betas": (0.85, 0.99)},
    {"name": "adagrad"},  # torch's eps, 1e-10
    {"name": "adagrad", "weight_decay": 0.05, "eps": 1e-6},
    {"name": "rmsprop"},
    {"name": "rmsprop", "weight_decay": 0.05, "alpha": 0.9},
]


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_optimizer_steps_match_torch_optim(config):
    rng = np.random.default_rng(7)
    ours = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    theirs = {name: torch.tensor(v.copy(), requires_grad=True) for name, v in ours.items()}
    optimizer = Optimizer(config, np)
    reference = _torch_optimizer(config, list(theirs.values()))
    for lr in LRS:
        grads = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
        ours = optimizer.update(ours, grads, lr)
        for group in reference.param_groups:
            group["lr"] = lr
        for name, tensor in theirs.items():
            tensor.grad = torch.tensor(grads[name])
        reference.step()
        for name, tensor in theirs.items():
            np.testing.assert_allclose(
                ours[name], tensor.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=name
            )


def test_adamw_decays_before_the_adam_step_and_unlike_l2():
    """AdamW (Loshchilov & Hutter 2019, as torch.optim.AdamW): p <- p (1 - lr wd), then the
    Adam step of the bare gradient; with a zero gradient only the decay moves p. Adam's L2
    puts wd p into the gradient instead, which the first step normalises to lr sign(p)."""
    p = np.array([2.0, -0.5])
    zero = np.zeros(2)
    decoupled = Optimizer({"name": "adamw", "weight_decay": 0.1}, np)
    np.testing.assert_allclose(decoupled.update({"p": p}, {"p": zero}, 0.5)["p"], p * 0.95)
    coupled = Optimizer({"name": "adam", "weight_decay": 0.1, "eps": 0.0}, np)
    np.testing.assert_allclose(
        coupled.update({"p": p}, {"p": zero}, 0.5)["p"], p - 0.5 * np.sign(p)
    )


# ---- 20-step trajectories: every optimizer under every schedule with warm-up -----------------

TRAJECTORY_STEPS, BASE_LR, WARMUP = 20, 0.05, 3
TRAJECTORY_OPTIMIZERS = [
    {"name": "sgd"},
    {"name": "sgd", "momentum": 0.9},
    {"name": "sgd", "momentum": 0.9, "nesterov": True},
    {"name": "adagrad"},
    {"name": "rmsprop"},
    {"name": "adam"},
    {"name": "adamw", "weight_decay": 0.1},
]
SCHEDULES = [
    {"name": "constant", "warmup": WARMUP},
    {"name": "step", "warmup": WARMUP, "gamma": 0.5, "every": 4},
    {"name": "exponential", "warmup": WARMUP, "gamma": 0.9},
    {"name": "cosine", "warmup": WARMUP, "min_factor": 0.1},
]


def _torch_schedule(schedule: dict, optimizer):
    """torch's schedulers for `schedule`: LinearLR from 1/W reaching 1 at epoch W - 1 (our
    warm-up, lr (step + 1) / W), then at epoch W the main schedule from its epoch 0."""
    sched = torch.optim.lr_scheduler
    warm = sched.LinearLR(optimizer, 1 / WARMUP, 1.0, total_iters=WARMUP - 1)
    name = schedule["name"]
    if name == "constant":
        main = sched.LambdaLR(optimizer, lambda epoch: 1.0)
    elif name == "step":
        main = sched.StepLR(optimizer, schedule["every"], schedule["gamma"])
    elif name == "exponential":
        main = sched.ExponentialLR(optimizer, schedule["gamma"])
    else:
        main = sched.CosineAnnealingLR(
            optimizer, TRAJECTORY_STEPS - WARMUP, eta_min=BASE_LR * schedule["min_factor"]
        )
    return sched.SequentialLR(optimizer, [warm, main], milestones=[WARMUP])


def _loss_grad_numpy(p: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The gradient of sum(log cosh(p - target) + 0.05 p^2): bounded, so every optimizer
    stays finite, and different at every step, so trajectories feed back on themselves."""
    return np.tanh(p - target) + 0.1 * p


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s["name"])
@pytest.mark.parametrize(
    "config", TRAJECTORY_OPTIMIZERS, ids=lambda c: "-".join(map(str, c.values()))
)
def test_trajectories_match_torch_optim_with_its_schedulers(config, schedule):
    rng = np.random.default_rng(3)
    start = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    targets = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    ours = dict(start)
    theirs = {name: torch.tensor(v.copy(), requires_grad=True) for name, v in start.items()}
    train = {"lr": BASE_LR, "schedule": schedule}
    optimizer = Optimizer(config, np)
    reference = _torch_optimizer(config, list(theirs.values()), lr=BASE_LR)
    scheduler = _torch_schedule(schedule, reference)
    for step in range(TRAJECTORY_STEPS):
        lr = learning_rate(train, step, TRAJECTORY_STEPS)
        assert lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12), step
        grads = {name: _loss_grad_numpy(ours[name], targets[name]) for name in ours}
        ours = optimizer.update(ours, grads, lr)
        reference.zero_grad()
        loss = sum(
            (torch.log(torch.cosh(t - torch.tensor(targets[n]))) + 0.05 * t * t).sum()
            for n, t in theirs.items()
        )
        loss.backward()
        reference.step()
        scheduler.step()
        for name, tensor in theirs.items():
            np.testing.assert_allclose(
                ours[name], tensor.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{step}"
            )
    assert ours["W"][0, 0] != start["W"][0, 0]  # it moved


def test_adam_first_step_is_bias_corrected():
    """Adam's first step moves each weight by lr * sign(g) (m_hat / sqrt(v_hat) = g / |g|)."""
    optimizer = Optimizer({"name": "adam", "eps": 0.0}, np)
    g = np.array([0.5, -2.0, 1e-3])
    new = optimizer.update({"p": np.zeros(3)}, {"p": g}, 0.1)
    np.testing.assert_allclose(new["p"], -0.1 * np.sign(g), rtol=1e-12)


# ---- learning-rate schedules ---------------------------------------------------------------


def test_learning_rate_schedules_follow_their_formulas():
    total = 200
    for step in (0, 1, 4, 5, 17, 60, 123, 199, 200):
        # warmup 5 steps: linear ramp (step + 1) / warmup, then the schedule from step - warmup
        warm = {"lr": 0.3, "schedule": {"name": "exponential", "gamma": 0.99, "warmup": 5}}
        expected = 0.3 * (step + 1) / 5 if step < 5 else 0.3 * 0.99 ** (step - 5)
        assert learning_rate(warm, step, total) == pytest.approx(expected, rel=1e-13)

        stepped = {"lr": 0.1, "schedule": {"name": "step", "gamma": 0.3, "every": 50}}
        assert learning_rate(stepped, step, total) == pytest.approx(
            0.1 * 0.3 ** math.floor(step / 50), rel=1e-13
        )

        floor = 0.1
        cosine = {"lr": 0.02, "schedule": {"name": "cosine", "min_factor": floor, "warmup": 4}}
        if step < 4:
            expected = 0.02 * (step + 1) / 4
        else:
            progress = min(step - 4, total - 4) / (total - 4)
            expected = 0.02 * (floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2)
        assert learning_rate(cosine, step, total) == pytest.approx(expected, rel=1e-13)

        assert learning_rate({"lr": 0.7}, step, total) == 0.7


# ---- scheduled-sampling decays (Bengio et al. 2015, section 2.4) --------------------------


@pytest.mark.parametrize("step", [0, 1, 10, 250, 1000, 2500, 5000, 20000])
def test_sampling_decays_follow_the_paper(step):
    """epsilon_i is the probability of feeding the truth; the model's own output is fed with
    probability 1 - epsilon_i, floored by `min_truth`."""
    k = 500.0
    linear = max(0.05, 1.0 - step / k)  # epsilon_i = max(epsilon, k - c i), here k=1, c=1/k
    exponential = 0.995**step  # epsilon_i = k^i, k < 1
    inverse_sigmoid = k / (k + math.exp(step / k))  # epsilon_i = k / (k + exp(i / k)), k >= 1
    cases = [
        ({"schedule": "linear", "k": k, "min_truth": 0.05}, linear),
        ({"schedule": "exponential", "base": 0.995}, exponential),
        ({"schedule": "inverse_sigmoid", "k": k}, inverse_sigmoid),
    ]
    for config, truth in cases:
        assert sampling_probability(config, step) == pytest.approx(
            1.0 - truth, rel=1e-12, abs=1e-15
        )


def test_inverse_sigmoid_moves_with_step_over_k():
    """At i = k ln k the truth probability is exactly one half."""
    k = 200.0
    step = k * math.log(k)
    config = {"schedule": "inverse_sigmoid", "k": k}
    assert sampling_probability(config, step) == pytest.approx(0.5, rel=1e-12)


# ---- scheduled-sampling coins: one per sequence and per step ------------------------------


class _Data:
    def batch_at(self, step, batch_size, seq_len, seed, stride=None):
        return {
            "x": np.zeros((batch_size, seq_len), int),
            "y": np.zeros((batch_size, seq_len), int),
        }

    def valid_batches(self, batch_size, seq_len, split="valid"):
        return iter(())  # the loop asks whether there is validation data at all


def test_scheduled_sampling_draws_one_coin_per_sequence_and_step():
    model = SimpleNamespace(
        backend=SimpleNamespace(xp=np),
        seed=0,
        spec=SimpleNamespace(model=SimpleNamespace(feeds_back=True)),
    )
    config = {
        "batch_size": 64,
        "seq_len": 50,
        "scheduled_sampling": {"schedule": "linear", "k": 100},
    }
    rng = np.random.default_rng(11)
    loop = _Loop(model, None, _Data(), config, rng, None, None, print, None)
    batch, feedback = loop.batch(50, {})  # p = 1 - (1 - 50/100) = 0.5
    coins = np.asarray(batch["use_model"])
    assert feedback == "scheduled"
    assert coins.shape == (64, 50) and coins.dtype == bool
    assert abs(coins.mean() - 0.5) < 0.05  # 3,200 fair coins: sd 0.009
    # coins differ along time within a sequence and across sequences at one step
    assert all(0 < row.sum() < 50 for row in coins)
    assert all(0 < column.sum() < 64 for column in coins.T)
    # at step 0 of a linear schedule the truth is always fed
    assert not np.asarray(loop.batch(0, {})[0]["use_model"]).any()
    # a later step draws fresh coins
    assert not np.array_equal(np.asarray(loop.batch(50, {})[0]["use_model"]), coins)


# ---- gradient clipping on hand-made gradients ---------------------------------------------


def _grads():
    # global norm sqrt(9 + 16 + 0 + 144) = 13; squared norm 169
    return {"a": np.array([3.0, -4.0]), "b": np.array([[0.0], [12.0]])}


def test_global_norm_clip_scales_by_limit_over_norm_plus_torchs_epsilon():
    """clip_grad_norm_'s factor is max / (norm + 1e-6), so the clipped norm is a hair under
    the limit (seqgraph once used max / norm; torch's is the one users compare with)."""
    clipped, fired, norm = clip(_grads(), {"kind": "global_norm", "max": 6.5}, np)
    assert fired and norm == pytest.approx(13.0, rel=1e-15)
    scale = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(clipped["a"], [3.0 * scale, -4.0 * scale], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[0.0], [12.0 * scale]], rtol=1e-15)
    total = math.sqrt(sum(float(np.sum(g * g)) for g in clipped.values()))
    assert total == pytest.approx(6.5 * 13.0 / (13.0 + 1e-6), rel=1e-14)


@pytest.mark.parametrize("limit", [13.5, 20.0, 100.0, 168.0])
def test_global_norm_clip_does_not_fire_below_the_limit(limit):
    """Limits between the norm (13) and its square (169) catch a norm without the root."""
    grads = _grads()
    clipped, fired, norm = clip(grads, {"kind": "global_norm", "max": limit}, np)
    assert not fired and norm == pytest.approx(13.0, rel=1e-15)
    for name in grads:
        np.testing.assert_array_equal(clipped[name], grads[name])


@pytest.mark.parametrize("limit", [0.5, 6.5, 12.9999995, 13.0, 13.0000005, 40.0])
def test_global_norm_clip_matches_torch_clip_grad_norm(limit):
    """The same gradients after clipping and the same norm returned, at limits far below,
    just around (where the 1e-6 decides) and above the norm."""
    rng = np.random.default_rng(5)
    grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    scale = 13.0 / math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    grads = {k: g * scale for k, g in grads.items()}  # global norm 13
    tensors = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()
    ]
    for tensor, g in zip(tensors, grads.values()):
        tensor.grad = torch.tensor(g)
    torch_norm = float(torch.nn.utils.clip_grad_norm_(tensors, limit))
    clipped, fired, norm = clip(grads, {"kind": "global_norm", "max": limit}, np)
    assert norm == pytest.approx(torch_norm, rel=1e-14)
    assert fired == (limit / (norm + 1e-6) < 1.0)
    for tensor, name in zip(tensors, grads):
        np.testing.assert_allclose(clipped[name], tensor.grad.numpy(), rtol=1e-14, atol=0)


def test_per_param_norm_and_value_clips_match_torch_per_parameter():
    """per_param_norm is clip_grad_norm_ on each parameter alone; value is clip_grad_value_."""
    rng = np.random.default_rng(9)
    grads = {"a": rng.normal(size=(5,)) * 3, "b": rng.normal(size=(2, 2)) * 0.1}
    for kind, limit in (("per_param_norm", 1.0), ("value", 0.5)):
        clipped, _, _ = clip(grads, {"kind": kind, "max": limit}, np)
        for name, g in grads.items():
            tensor = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
            tensor.grad = torch.tensor(g)
            if kind == "value":
                torch.nn.utils.clip_grad_value_([tensor], limit)
            else:
                torch.nn.utils.clip_grad_norm_([tensor], limit)
            np.testing.assert_allclose(clipped[name], tensor.grad.numpy(), rtol=1e-14, atol=0)


def test_value_clip_clamps_each_element():
    grads = {"a": np.array([3.0, -0.5, -7.0]), "b": np.array([0.25])}
    clipped, fired, norm = clip(grads, {"kind": "value", "max": 1.0}, np)
    assert fired and norm == pytest.approx(math.sqrt(9 + 0.25 + 49 + 0.0625), rel=1e-15)
    np.testing.assert_array_equal(clipped["a"], [1.0, -0.5, -1.0])
    np.testing.assert_array_equal(clipped["b"], [0.25])
    _, fired, _ = clip({"a": np.array([0.5, -1.0])}, {"kind": "value", "max": 1.0}, np)
    assert not fired


def test_per_param_norm_clip_scales_each_parameter_on_its_own():
    clipped, fired, _ = clip(_grads(), {"kind": "per_param_norm", "max": 10.0}, np)
    assert fired
    np.testing.assert_array_equal(clipped["a"], [3.0, -4.0])  # norm 5: kept
    np.testing.assert_allclose(clipped["b"], [[0.0], [12.0 * 10 / (12 + 1e-6)]], rtol=1e-15)


def test_no_clip_config_reports_the_norm_only():
    grads = _grads()
    clipped, fired, norm = clip(grads, None, np)
    assert clipped is grads and not fired and norm == pytest.approx(13.0, rel=1e-15)


# ---- the schema takes adamw, with its own default decay ------------------------------------

SPEC_WITH_OPTIMIZER = """\
model:
  pattern: many_to_many
  input: {type: ids, vocab: 5}
  target: {type: ids, vocab: 5}
  encoders:
    - {type: embedding, size: 4}
  layers:
    - {cell: gru, hidden: 3}
train:
  lr: 0.01
  optimizer: {name: %s}
"""


def test_schema_takes_adamw_and_names_the_line_of_an_unknown_optimizer():
    from seqgraph.errors import SpecError
    from seqgraph.spec.load import load_spec

    spec = load_spec(SPEC_WITH_OPTIMIZER % "adamw")
    optimizer = Optimizer(spec.train["optimizer"], np)
    assert (optimizer.name, optimizer.weight_decay, optimizer.eps) == ("adamw", 0.01, 1e-8)
    assert Optimizer({"name": "adagrad"}, np).eps == 1e-10  # torch.optim.Adagrad's
    with pytest.raises(SpecError, match=r"spec:11: train\.optimizer\.name: got 'adamx'; .*adamw"):
        load_spec(SPEC_WITH_OPTIMIZER % "adamx")
