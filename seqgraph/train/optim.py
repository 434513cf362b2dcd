"""Optimizers, learning-rate schedules, gradient clipping and scheduled-sampling schedules.

Everything works on backend arrays through `xp` and keeps its state in plain dicts of arrays,
so a checkpoint can save it and a resumed run continues bit for bit.

Each optimizer, schedule and clip follows `torch.optim` (and `torch.nn.utils.clip_grad_norm_`)
step for step, defaults included, so a user's expectations carry over; the float64
trajectories are compared in tests/test_optim_reference.py. `weight_decay` is L2 (added to
the gradient) except for `adamw`, whose decay is decoupled from the gradient (Loshchilov &
Hutter 2019) and, as in torch.optim.AdamW, scaled by the scheduled learning rate.
"""

from __future__ import annotations

import math

from seqgraph.errors import DataError

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
# Where torch.optim's default differs from the one shared by the others (eps 1e-8, decay 0).
EPS_DEFAULTS = {"adagrad": 1e-10}
WEIGHT_DECAY_DEFAULTS = {"adamw": 0.01}
# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6): kept, so clipped gradients match.
CLIP_NORM_EPS = 1e-6
SCHEDULES = ("constant", "step", "exponential", "cosine")
CLIPS = ("global_norm", "per_param_norm", "value")


class Optimizer:
    """SGD (momentum, Nesterov), Adagrad, RMSprop, Adam or AdamW; `state` (and `steps`) are
    saved in checkpoints."""

    def __init__(self, config: dict, xp):
        self.name = config.get("name", "adam")
        if self.name not in OPTIMIZERS:
            raise DataError(
                f"train.optimizer.name {self.name!r} is unknown; use one of {', '.join(OPTIMIZERS)}"
            )
        self.xp = xp
        self.momentum = float(config.get("momentum", 0.0))
        self.nesterov = bool(config.get("nesterov", False))
        self.beta1, self.beta2 = (float(b) for b in config.get("betas", (0.9, 0.999)))
        self.alpha = float(config.get("alpha", 0.99))  # RMSprop's decay
        self.eps = float(config.get("eps", EPS_DEFAULTS.get(self.name, 1e-8)))
        self.weight_decay = float(
            config.get("weight_decay", WEIGHT_DECAY_DEFAULTS.get(self.name, 0.0))
        )
        self.state: dict[str, dict] = {}
        self.steps = 0

    def _slot(self, name: str, slot: str, like):
        per_param = self.state.setdefault(name, {})
        if slot not in per_param:
            per_param[slot] = self.xp.zeros_like(like)
        return per_param[slot]

    def update(self, params: dict, grads: dict, lr: float) -> dict:
        """New parameter values after one step with learning rate `lr`."""
        self.steps += 1
        return {name: self._update_one(name, params[name], grads[name], lr) for name in params}

    def _update_one(self, name: str, p, g, lr: float):
        if self.name == "adamw":  # decoupled: shrink the weights, leave the gradient alone
            return self._adam(name, p * (1 - lr * self.weight_decay), g, lr)
        if self.weight_decay:  # L2: the penalty's gradient joins the loss's
            g = g + self.weight_decay * p
        if self.name == "sgd":
            if not self.momentum:
                return p - lr * g
            v = self.momentum * self._slot(name, "velocity", p) + g
            self.state[name]["velocity"] = v
            return p - lr * (g + self.momentum * v if self.nesterov else v)
        if self.name == "adagrad":
            s = self._slot(name, "sum_sq", p) + g * g
            self.state[name]["sum_sq"] = s
            return p - lr * g / (self.xp.sqrt(s) + self.eps)
        if self.name == "rmsprop":
            s = self.alpha * self._slot(name, "mean_sq", p) + (1 - self.alpha) * g * g
            self.state[name]["mean_sq"] = s
            return p - lr * g / (self.xp.sqrt(s) + self.eps)
        return self._adam(name, p, g, lr)

    def _adam(self, name: str, p, g, lr: float):
        m = self.beta1 * self._slot(name, "m", p) + (1 - self.beta1) * g
        v = self.beta2 * self._slot(name, "v", p) + (1 - self.beta2) * g * g
        self.state[name]["m"], self.state[name]["v"] = m, v
        m_hat = m / (1 - self.beta1**self.steps)
        v_hat = v / (1 - self.beta2**self.steps)
        return p - lr * m_hat / (self.xp.sqrt(v_hat) + self.eps)


def learning_rate(config: dict, step: int, total: int) -> float:
    """The learning rate at `step` (0-based) from `train.lr` and `train.schedule`."""
    base = float(config.get("lr", 0.002))
    schedule = config.get("schedule") or {}
    name = schedule.get("name", "constant")
    if name not in SCHEDULES:
        raise DataError(
            f"train.schedule.name {name!r} is unknown; use one of {', '.join(SCHEDULES)}"
        )
    warmup = int(schedule.get("warmup", 0))
    if step < warmup:
        return base * (step + 1) / warmup
    after = step - warmup
    if name == "step":
        factor = float(schedule.get("gamma", 0.5)) ** (after // int(schedule.get("every", 1000)))
    elif name == "exponential":
        factor = float(schedule.get("gamma", 0.999)) ** after
    elif name == "cosine":
        span = max(1, total - warmup)
        floor = float(schedule.get("min_factor", 0.0))
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(after, span) / span))
    else:
        factor = 1.0
    return base * factor


def clip(grads: dict, config: dict | None, xp) -> tuple[dict, bool, float]:
    """Clip gradients as `train.clip` says; returns (grads, whether it fired, global norm)."""
    norm = math.sqrt(sum(float(xp.sum(g * g)) for g in grads.values()))
    if not config:
        return grads, False, norm
    kind, limit = config.get("kind", "global_norm"), float(config.get("max", 5.0))
    if kind not in CLIPS:
        raise DataError(f"train.clip.kind {kind!r} is unknown; use one of {', '.join(CLIPS)}")
    if kind == "global_norm":
        scale = limit / (norm + CLIP_NORM_EPS)
        if scale >= 1.0:
            return grads, False, norm
        return {k: g * scale for k, g in grads.items()}, True, norm
    fired, out = False, {}
    for name, g in grads.items():
        if kind == "value":
            clipped = xp.clip(g, -limit, limit)
            fired = fired or bool(xp.any(clipped != g))
            out[name] = clipped
        else:
            # clip_grad_norm_ on this parameter alone
            scale = limit / (math.sqrt(float(xp.sum(g * g))) + CLIP_NORM_EPS)
            fired = fired or scale < 1.0
            out[name] = g * scale if scale < 1.0 else g
    return out, fired, norm


def sampling_probability(config: dict | None, step: int) -> float:
    """Scheduled sampling (Bengio et al. 2015): the probability of feeding the model's own
    prediction instead of the target at `step`; 1 - epsilon_i of the paper."""
    if not config:
        return 0.0
    kind, k = config.get("schedule", "inverse_sigmoid"), float(config.get("k", 1000.0))
    floor = float(config.get("min_truth", 0.0))
    if kind == "linear":
        truth = max(floor, 1.0 - step / k)
    elif kind == "exponential":
        truth = max(floor, float(config.get("base", 0.999)) ** step)
    elif kind == "inverse_sigmoid":
        truth = max(floor, k / (k + math.exp(min(step / k, 700.0))))
    else:
        raise DataError(
            f"train.scheduled_sampling.schedule {kind!r} is unknown; use linear, "
            "exponential or inverse_sigmoid"
        )
    return 1.0 - truth
