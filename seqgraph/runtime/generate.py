"""Sampling from trained models: characters from a stream model, one step at a time with the
state carried, or vectors fed back autoregressively."""

from __future__ import annotations

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError


def next_id(logits: np.ndarray, temperature: float, greedy: bool, rng) -> int:
    if greedy:
        return int(np.argmax(logits))
    if temperature <= 0:
        raise DataError("temperature must be positive (use --greedy for argmax decoding)")
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def sample_ids(
    model,
    prime: list[int],
    length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
) -> list[int]:
    """Feed `prime`, then `length` sampled ids, each fed back as the next input."""
    if model.spec.model.pattern != "many_to_many" or model.spec.model.input.type != "ids":
        raise DataError("sampling characters needs a many_to_many model over ids")
    if not prime:
        raise DataError("the prime text must not be empty")
    rng = np.random.default_rng(seed)
    out = model.forward({"x": np.asarray([prime], dtype=np.int64)})
    state = {k: to_numpy(v) for k, v in out["state"].items()}
    logits = to_numpy(out["predictions"])[0, -1]
    ids = []
    for _ in range(length):
        ids.append(next_id(logits, temperature, greedy, rng))
        out = model.forward({"x": np.asarray([[ids[-1]]], dtype=np.int64), "state": state})
        state = {k: to_numpy(v) for k, v in out["state"].items()}
        logits = to_numpy(out["predictions"])[0, -1]
    return ids


def sample_vectors(model, prime: np.ndarray, length: int) -> np.ndarray:
    """A many_to_many regression model run on `prime` (T, F), then fed its own predictions."""
    m = model.spec.model
    if m.pattern != "many_to_many" or m.input.type != "vectors" or m.input.size != m.target.size:
        raise DataError(
            "sampling vectors needs a many_to_many model whose input and target "
            "sizes match (it feeds its prediction back as the next input)"
        )
    out = model.forward({"x": prime[None].astype(np.float64)})
    state = {k: to_numpy(v) for k, v in out["state"].items()}
    current = to_numpy(out["predictions"])[0, -1]
    frames = []
    for _ in range(length):
        frames.append(current)
        out = model.forward({"x": current[None, None].astype(np.float64), "state": state})
        state = {k: to_numpy(v) for k, v in out["state"].items()}
        current = to_numpy(out["predictions"])[0, -1]
    return np.stack(frames)
