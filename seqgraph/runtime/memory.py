"""Will a model fit in memory? A figure before the parameters are allocated, and one after
the dry run has shown what one time step holds, against the memory available: the least of
MemAvailable (/proc/meminfo), the room left under a cgroup limit (a container's
`--memory`) and under `ulimit -v`.

A model too large for the machine used to end in a MemoryError (or the kernel's OOM killer)
half a minute into allocating; this refuses it first, with the figures. Where the kernel does
not say how much memory is available (not Linux), or the arrays live on a GPU, nothing is
checked.
"""

from __future__ import annotations

import math
import os
import resource

import numpy as np

from seqgraph.errors import SpecError
from seqgraph.spec import schema

GB = 1e9
PARAM_COPIES = 4  # training holds weights, gradients and Adam's two slots for each parameter
ACTIVATION_COPIES = 2  # each value of the forward pass, and its gradient in the backward pass
MEMINFO = "/proc/meminfo"
CGROUP = "/sys/fs/cgroup"
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _field(text: str | None, name: str) -> int | None:
    """The number after `name` in a /proc or cgroup key-value file."""
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[0] == name and parts[1].isdigit():
            return int(parts[1])
    return None


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where the kernel does not say."""
    kib = _field(_read(MEMINFO), "MemAvailable")
    return None if kib is None else kib * 1024


def _cgroup_room() -> int | None:
    """Bytes left under this container's memory limit (cgroup v2, else v1), page cache that
    can be dropped not counted as used; None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read(f"{CGROUP}/{limit_file}"), _read(f"{CGROUP}/{usage_file}")
        if not (limit and usage and limit.strip().isdigit() and usage.strip().isdigit()):
            continue
        if int(limit) >= NO_LIMIT:
            return None
        stat = _read(os.path.join(os.path.dirname(f"{CGROUP}/{limit_file}"), "memory.stat"))
        cache = _field(stat, "inactive_file") or _field(stat, "total_inactive_file") or 0
        return max(int(limit) - int(usage) + cache, 0)
    return None


def _ulimit_room() -> int | None:
    """Bytes of address space left under `ulimit -v` (RLIMIT_AS); None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _field(_read("/proc/self/status"), "VmSize")
    return max(soft - (used or 0) * 1024, 0)


def available() -> tuple[int, str] | None:
    """(bytes available, where the figure comes from), the least of the known limits."""
    figures = [
        (room, name)
        for room, name in (
            (available_bytes(), "MemAvailable"),
            (_cgroup_room(), "cgroup memory limit"),
            (_ulimit_room(), "ulimit -v"),
        )
        if room is not None
    ]
    return min(figures) if figures else None


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


def check_fits(model, values: dict | None = None, sequences: int = 1) -> None:
    """Refuse (SpecError) a model whose parameters and activations of one training step, in
    the spec's dtype, need more memory than is available. `values`: the dry run's values (a
    batch of `sequences`), whose first two time steps size the activations; without them only
    the parameters are counted. Host backends only (a GPU's memory is not MemAvailable)."""
    if model.backend.name == "cupy":
        return
    spec, param_info = model.spec, model.param_info
    # parameters already allocated are counted as used by the figure available, and again
    # by the estimate: give them back
    held = sum(int(getattr(p, "nbytes", 0)) for p in model.params.values())
    room = available()
    if room is None:
        return
    free, where = room[0] + held, room[1]
    dtype_name = spec.dtype
    itemsize = np.dtype(dtype_name).itemsize
    count = sum(math.prod(info.shape) for info in param_info.values())
    params = count * itemsize * PARAM_COPIES
    batch, steps = training_shape(spec)
    at_step = [0, 0]  # bytes at t = 0 and t = 1 of the dry run
    for key, value in (values or {}).items():
        if key[2] in (0, 1) and hasattr(value, "itemsize"):
            at_step[key[2]] += int(value.nbytes) // value.itemsize * itemsize
    activations = max(at_step) // sequences * batch * steps * ACTIVATION_COPIES
    if params + activations <= free:
        return
    raise SpecError(
        "model.layers",
        f"needs ~{_figure(params)} for parameters (weights, gradients and optimizer state, "
        f"{dtype_name}) and ~{_figure(activations)} for the activations of one training "
        f"step (batch {batch} x {steps} steps); available ~{_figure(free)} "
        f"({where}); use a smaller hidden, train.batch_size or train.seq_len, or "
        "train.segment_steps",
        spec.lines.get("model.layers"),
        spec.source,
    )
