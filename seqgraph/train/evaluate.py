"""Held-out metrics: loss per target token (nats for classes, MSE for vectors) and accuracy."""

from __future__ import annotations

import numpy as np

from seqgraph.apps import ctc_eval
from seqgraph.engine.xp_extra import to_numpy


def real_steps(model, batch: dict) -> np.ndarray:
    """(B, T) booleans: which target steps are real (or (B,) ones for one target each)."""
    m = model.spec.model
    y = np.asarray(batch["y"])
    if m.loss == "ctc":  # label positions, not frames
        lengths = batch.get("y_lengths", np.full(len(y), y.shape[1]))
        return np.arange(y.shape[1])[None, :] < np.asarray(lengths)[:, None]
    if m.pattern in ("many_to_one", "one_to_one"):
        return np.ones(len(y), dtype=bool)
    lengths = batch.get("y_lengths") if m.feeds_back else batch.get("lengths")
    steps = y.shape[1]
    if lengths is None:
        return np.ones((len(y), steps), dtype=bool)
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def evaluate(model, batches, max_batches: int | None = None) -> dict:
    """Mean loss per real target step over `batches`, and accuracy for class targets.

    Stream batches marked `carry` continue from the previous batch's final state. A CTC
    model's loss is per label; it reports per, digit_accuracy, nearest_accuracy (`ctc_eval`).
    """
    total, count, correct, carry, used = 0.0, 0, 0, {}, 0
    ctc = model.spec.model.loss == "ctc"
    refs, hyps = [], []
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
        if ctc:
            refs += ctc_eval.references(batch)
            hyps += ctc_eval.greedy_decode(to_numpy(out["predictions"]), batch.get("lengths"))
        elif model.spec.model.target.type == "ids":
            guess = np.argmax(to_numpy(out["predictions"]), axis=-1)
            correct += int(((guess == np.asarray(batch["y"])) & real).sum())
        carry = {k: to_numpy(v) for k, v in out["state"].items()}
        used += 1
    result = {"loss": total / max(count, 1), "tokens": count, "batches": used}
    if ctc:
        result.update(ctc_eval.score(refs, hyps))
    elif model.spec.model.target.type == "ids":
        result["accuracy"] = correct / max(count, 1)
    return result
