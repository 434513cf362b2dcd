"""The best validation score so far, and early stopping on it.

Every validation of a run (each `train.eval_every` steps, and the last) is one evaluation:
`Best.observe` says whether it improved on the best so far, which the loop answers by writing
RUN_DIR/best.npz. `train.early_stopping: {metric, mode, patience, min_delta}` names the
metric and stops the run after `patience` evaluations in a row without an improvement of
more than `min_delta` (the rule of Keras' EarlyStopping); without it the best is still kept,
by `valid_loss`, and the run never stops early. The counters travel in the checkpoint's meta
(`state`/`restore`), so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqgraph.errors import SpecError

DEFAULT_METRIC = "valid_loss"
DEFAULT_PATIENCE = 5
# A metric whose name holds one of these is a score (higher is better); the rest are losses
# and error rates (lower is better).
HIGHER_IS_BETTER = ("accuracy", "f1", "bleu", "match")
# Counts an evaluation reports beside its scores: never something to stop on.
NOT_METRICS = ("tokens", "batches", "sequences")


def default_mode(metric: str) -> str:
    """ "max" for accuracies, F1, BLEU and exact match; "min" for losses and error rates."""
    return "max" if any(word in metric for word in HIGHER_IS_BETTER) else "min"


def validation_metrics(result: dict) -> dict[str, float]:
    """The numbers of an `evaluate` result under the names `early_stopping.metric` takes:
    `valid_loss`, `valid_accuracy`, and `valid_<score>` for each score a source adds."""
    out = {DEFAULT_METRIC: float(result["loss"])}
    for key, value in result.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key != "loss" and key not in NOT_METRICS and number:
            out[f"valid_{key}"] = float(value)
    return out


@dataclass
class Best:
    """The best value of `metric` so far, its step, and the evaluations since then."""

    metric: str = DEFAULT_METRIC
    mode: str = "min"
    patience: int | None = None  # None: keep the best, never stop
    min_delta: float = 0.0
    value: float | None = None
    step: int | None = None
    stale: int = 0  # evaluations in a row without an improvement

    @classmethod
    def from_config(cls, early_stopping: dict | None) -> Best:
        """From `train.early_stopping` (None: track valid_loss, never stop)."""
        if not early_stopping:
            return cls()
        metric = early_stopping.get("metric", DEFAULT_METRIC)
        return cls(
            metric=metric,
            mode=early_stopping.get("mode") or default_mode(metric),
            patience=int(early_stopping.get("patience", DEFAULT_PATIENCE)),
            min_delta=float(early_stopping.get("min_delta", 0.0)),
        )

    def check_metric(self, available, lines: dict, source: str) -> None:
        """SpecError (with its line) unless the run computes `metric`."""
        if self.metric in available:
            return
        from seqgraph.spec.yaml_lines import with_line

        names = ", ".join(sorted(available))
        error = SpecError(
            "train.early_stopping.metric",
            f"{self.metric!r} is not a validation metric of this run; use one of {names}",
        )
        raise with_line(error, lines, source)

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        if self.mode == "max":
            return value - self.min_delta > self.value
        return value + self.min_delta < self.value

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        """Count one evaluation; True when it set a new best (write best.npz)."""
        value = metrics[self.metric]
        if self.improves(value):
            self.value, self.step, self.stale = value, step, 0
            return True
        self.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Early stopping's patience is used up: stop training."""
        return self.patience is not None and self.stale >= self.patience

    def describe(self) -> str:
        """`best valid_loss 0.4123 at step 300`."""
        if self.value is None:
            return f"no best {self.metric} yet"
        return f"best {self.metric} {self.value:.4f} at step {self.step}"

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed run counts on."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "value": self.value,
            "step": self.step,
            "stale": self.stale,
        }

    def restore(self, state: dict | None) -> None:
        """Continue from a checkpoint's counters; a best by another metric or mode (the spec's
        train section changed) is not comparable, so counting starts again."""
        if not state or (state.get("metric"), state.get("mode")) != (self.metric, self.mode):
            return
        self.value, self.step = state.get("value"), state.get("step")
        self.stale = int(state.get("stale", 0))
