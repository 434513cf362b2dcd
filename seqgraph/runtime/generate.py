"""Sampling from trained models: characters from a stream model, one step at a time with the
state carried, or vectors fed back autoregressively."""

from __future__ import annotations

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import DataError


def default_prime(vocab: list[str]) -> str:
    """The text sampling starts from when none is given: a newline if the vocabulary has one
    (the start of a line), else its first character, so a text without newlines samples too."""
    if not vocab:
        raise DataError("this run has no vocabulary to sample characters from")
    return "\n" if "\n" in vocab else vocab[0]


def encode_prime(prime: str, vocab: list[str], what: str = "--prime") -> list[int]:
    """The ids of `prime`; one line naming the characters the run's vocabulary lacks (`what`
    names where the prime came from)."""
    index = {c: i for i, c in enumerate(vocab)}
    missing = sorted({c for c in prime if c not in index})
    if missing:
        raise DataError(
            f"{what} {prime!r}: characters {missing[:5]} are not in this run's vocabulary "
            f"of {len(vocab)} characters; use characters of its training text"
        )
    if not prime:
        raise DataError(f"{what} is empty; give at least one character")
    return [index[c] for c in prime]


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
