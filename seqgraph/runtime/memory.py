"""Will a model fit in memory? A figure before the parameters are allocated, and one after
the dry run has shown what one time step holds, against MemAvailable of /proc/meminfo.

A model too large for the machine used to end in a MemoryError (or the kernel's OOM killer)
half a minute into allocating; this refuses it first, with the figures. Where the kernel does
not say how much memory is available (not Linux), or the arrays live on a GPU, nothing is
checked.
"""

from __future__ import annotations

import numpy as np

from seqgraph.errors import SpecError
from seqgraph.spec import schema

GB = 1e9
PARAM_COPIES = 4  # training holds weights, gradients and Adam's two slots for each parameter
ACTIVATION_COPIES = 2  # each value of the forward pass, and its gradient in the backward pass
MEMINFO = "/proc/meminfo"


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where the kernel does not say."""
    try:
        with open(MEMINFO, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def training_shape(spec) -> tuple[int, int]:
    """(sequences per batch, time steps held at once) that training uses for this spec."""
    train = spec.train
    batch = int(train.get("batch_size", schema.default("train", "batch_size")))
    steps = int(train.get("seq_len", schema.default("train", "seq_len")))
    if train.get("segment_steps"):
        steps = min(steps, int(train["segment_steps"]))
    return batch, steps


def _figure(size: float) -> str:
    return f"{size / GB:.1f} GB" if size >= 0.05 * GB else f"{size / 1e6:.1f} MB"


def check_fits(spec, param_info: dict, values: dict | None = None) -> None:
    """Refuse (SpecError) a model whose parameters and activations of one training step, in
    the spec's dtype, need more memory than is available. `values`: the dry run's values
    (batch 1), whose second time step sizes the activations; without them only the
    parameters are counted."""
    available = available_bytes()
    if available is None:
        return
    dtype_name = spec.dtype
    itemsize = np.dtype(dtype_name).itemsize
    count = sum(int(np.prod(info.shape)) for info in param_info.values())
    params = count * itemsize * PARAM_COPIES
    batch, steps = training_shape(spec)
    per_step = sum(
        int(getattr(v, "nbytes", 0)) // v.itemsize * itemsize
        for k, v in (values or {}).items()
        if k[2] == 1 and hasattr(v, "itemsize")
    )
    activations = per_step * batch * steps * ACTIVATION_COPIES
    if params + activations <= available:
        return
    raise SpecError(
        "model.layers",
        f"needs ~{_figure(params)} for parameters (weights, gradients and optimizer state, "
        f"{dtype_name}) and ~{_figure(activations)} for the activations of one training "
        f"step (batch {batch} x {steps} steps); available ~{_figure(available)} "
        "(MemAvailable); use a smaller hidden, train.batch_size or train.seq_len, or "
        "train.segment_steps",
        spec.lines.get("model.layers"),
        spec.source,
    )
