"""Held-out metrics: loss per target token (nats for classes, MSE for vectors) and accuracy;
a CTC model's greedy-decoded error rates (`ctc`), whatever its data; and a data source's
`scorer` (`spec.registry`) adds its own per-batch scores."""

from __future__ import annotations

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.spec import registry
from seqgraph.train import ctc


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


def evaluate(model, batches, max_batches: int | None = None, scorer=None) -> dict:
    """Mean loss per real target step over `batches`, and accuracy for class targets.

    Stream batches marked `carry` continue from the previous batch's final state. A CTC
    model's loss is per label, and its frames are not aligned with its labels, so it has no
    accuracy; it reports per, digit_accuracy, nearest_accuracy and sequences (`ctc`).
    `scorer` (a `registry.Scorer`) sees every batch and its forward pass; its `result()`
    joins the returned dict.
    """
    total, count, correct, carry, used = 0.0, 0, 0, {}, 0
    m = model.spec.model
    accuracy = m.loss != "ctc" and m.target.type == "ids"
    scorers = [ctc.Scorer()] if m.loss == "ctc" else []
    scorers += [scorer] if scorer is not None else []
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
        for each in scorers:
            each.add(batch, out)
        if accuracy:
            guess = np.argmax(to_numpy(out["predictions"]), axis=-1)
            correct += int(((guess == np.asarray(batch["y"])) & real).sum())
        carry = {k: to_numpy(v) for k, v in out["state"].items()}
        used += 1
    result = {"loss": total / max(count, 1), "tokens": count, "batches": used}
    if accuracy:
        result["accuracy"] = correct / max(count, 1)
    for each in scorers:
        result.update(each.result())
    return result


def scorer_for(source: str):
    """A fresh per-batch scorer of data source `source`, or None if it has none."""
    make = registry.source(source).scorer
    return make() if make is not None else None


def score_line(source: str, result: dict) -> str:
    """What `run` and `eval` print after the loss: a CTC model's error rates, data source
    `source`'s own `score_line(result)`, then its application's scores (`result["app"]`) as
    `name value`; `result` is a validation or `evaluate_run` result."""
    record = registry.source(source)
    parts = [ctc.score_line(result)]
    parts += [record.score_line(result)] if record.score_line is not None else []
    for name, value in (result.get("app") or {}).items():
        parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
    return "; ".join(part for part in parts if part)
