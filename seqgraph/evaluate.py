"""Held-out metrics: loss per target token (nats for classes, MSE for vectors) and accuracy."""

from __future__ import annotations

import numpy as np

from .xp_extra import to_numpy


def real_steps(model, batch: dict) -> np.ndarray:
    """(B, T) booleans: which target steps are real (or (B,) ones for one target each)."""
    m = model.spec.model
    y = np.asarray(batch["y"])
    if m.pattern in ("many_to_one", "one_to_one"):
        return np.ones(len(y), dtype=bool)
    lengths = batch.get("y_lengths") if m.feeds_back else batch.get("lengths")
    steps = y.shape[1]
    if lengths is None:
        return np.ones((len(y), steps), dtype=bool)
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def evaluate(model, batches, max_batches: int | None = None) -> dict:
    """Mean loss per real target step over `batches`, and accuracy for class targets.

    Stream batches marked `carry` continue from the previous batch's final state."""
    total, count, correct, carry, used = 0.0, 0, 0, {}, 0
    for batch in batches:
        if max_batches is not None and used >= max_batches:
            break
        batch = dict(batch)
        if batch.pop("carry", False) and carry:
            batch["state"] = carry
        out = model.forward(batch)
        real = real_steps(model, batch)
        total += out["loss"] * len(batch["y"])  # the batch loss averages over sequences
        count += int(real.sum())
        if model.spec.model.target.type == "ids":
            guess = np.argmax(to_numpy(out["predictions"]), axis=-1)
            correct += int(((guess == np.asarray(batch["y"])) & real).sum())
        carry = {k: to_numpy(v) for k, v in out["state"].items()}
        used += 1
    result = {"loss": total / max(count, 1), "tokens": count, "batches": used}
    if model.spec.model.target.type == "ids":
        result["accuracy"] = correct / max(count, 1)
    return result
