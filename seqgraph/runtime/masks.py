"""Dropout masks: a pure function of (seed, step, mask node), so a run is deterministic for its
seed and a resumed run draws exactly the masks it would have drawn, with no RNG state to save.

A batch asks for dropout with `batch["dropout"] = {"seed": s, "step": n}` (the training loop
sets it; `first_step` shifts the time index of per-step masks, for a segment of a longer
sequence); a batch without it runs the evaluation graph, which has no dropout at all. Masks
are drawn with NumPy on the host and copied to the backend like the data (CuPy included), so
NumPy and CuPy runs of one seed drop the same units.
"""

from __future__ import annotations

import hashlib

import numpy as np

from seqgraph.errors import DataError


def node_hash(key: tuple) -> int:
    """A stable 63-bit number for a node key (Python's `hash` of a str changes per process)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def dropout_mask(
    seed: int, step: int, key: tuple, shape: tuple, p: float, whole_vectors: bool = False
) -> np.ndarray:
    """Inverted-dropout mask for node `key` at training step `step`: each entry 0 with
    probability p, else 1/(1-p); rows are sequences, so each sequence gets its own mask.
    `whole_vectors`: one draw per vector along the last axis, repeated across it (word
    dropout keeps or drops a token's whole embedding)."""
    rng = np.random.default_rng([int(seed), int(step), node_hash(key)])
    if whole_vectors:
        keep = np.repeat(rng.random((*shape[:-1], 1)) >= p, shape[-1], axis=-1)
    else:
        keep = rng.random(shape) >= p
    return keep / (1.0 - p)


def dropout_request(batch: dict) -> tuple[int, int, int, int, int | None] | None:
    """(seed, step, first_step, row_offset, global_rows) from `batch["dropout"]`, checked;
    None when absent. A shard of a larger batch (one rank's rows under MPI) names where its
    rows start and how many the whole batch has, so it draws the whole batch's masks and
    keeps its rows: N ranks drop the units one process would."""
    request = batch.get("dropout")
    if request is None:
        return None
    try:
        out = (
            int(request["seed"]),
            int(request["step"]),
            int(request.get("first_step", 0)),
            int(request.get("row_offset", 0)),
            None if request.get("global_rows") is None else int(request["global_rows"]),
        )
    except (TypeError, KeyError, ValueError):
        raise DataError(
            "batch['dropout'] must be {'seed': int, 'step': int} (the training step whose "
            f"masks to draw); got {request!r}"
        ) from None
    if min(out[:4]) < 0:
        raise DataError(f"batch['dropout'] needs seed, step and first_step >= 0; got {request!r}")
    return out
