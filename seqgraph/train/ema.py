"""Weight averaging (`train.ema`): an exponential moving average of the parameters.

After each optimizer step `averaged = decay * averaged + (1 - decay) * params` (Polyak
averaging; Keras' `use_ema=True, ema_momentum`, PyTorch's `AveragedModel` with
`get_ema_multi_avg_fn(decay)`). The first update after step `start` copies the parameters,
as both do (Keras on its first step, `AveragedModel` on its first `update_parameters`), so the
average never mixes in the random initialisation. Training steps the raw parameters; the
averaged ones are what validation, best.npz and the checkpoint's parameters hold, so `eval`,
`predict`, `sample`, `export` and `serve` read them with no option of their own. The average
has the parameters' dtype (Keras and `AveragedModel` keep their copy in it too): float32 has
room for a step of (1 - decay) times a change, 1e-3 of it at decay 0.999, well above its
rounding (6e-8 relative).

On every rank of a distributed run the parameters are the same bits, so the averages are too.
"""

from __future__ import annotations

from typing import Any


class WeightAverage:
    """The average of a run's parameters; `averaged` is {} until the first update."""

    def __init__(self, decay: float, start: int = 0):
        self.decay = float(decay)
        self.start = int(start)
        self.averaged: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: dict | None) -> WeightAverage | None:
        """From `train.ema: {decay, start}` (validated by the spec schema); None without it."""
        if not config:
            return None
        return cls(config["decay"], config.get("start", 0))

    def update(self, params: dict[str, Any], step: int) -> None:
        """Fold in the parameters after optimizer step `step` (1-based). Up to step start + 1
        the average is a copy: averaging begins with the step after that."""
        if step <= self.start + 1 or not self.averaged:
            # the same arrays, no copy: parameters are replaced each step, never written
            # in place (STYLE.md), and each later average is a new array
            self.averaged = dict(params)
            return
        d = self.decay
        # a Python float times an array keeps the array's dtype (NumPy and CuPy alike)
        self.averaged = {name: d * self.averaged[name] + (1 - d) * p for name, p in params.items()}
