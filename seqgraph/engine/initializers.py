"""Parameter initialisers, drawn on the host from one seeded generator so every backend and
dtype starts from the same numbers."""

from __future__ import annotations

import numpy as np

# NumPy loads numpy.random on first use; every Model draws its initial parameters from it, so
# it is loaded here with the package rather than inside the first Model(...) call, whose
# memory and time it would otherwise join (its modules hold ~2 MiB resident).
import numpy.random  # noqa: F401

from seqgraph.engine.graph import ParamInfo


def draw(info: ParamInfo, rng: np.random.Generator) -> np.ndarray:
    """One parameter's initial value (float64) from its shape, initialiser and fill."""
    shape, dist = info.shape, info.init.get("dist", "zeros")
    scale = float(info.init.get("scale", 1.0))
    if dist == "uniform":
        value = rng.uniform(-scale, scale, size=shape)
    elif dist == "normal":
        value = rng.normal(0.0, scale, size=shape)
    elif dist == "xavier":
        fan_in, fan_out = (shape[0], shape[-1]) if len(shape) > 1 else (shape[0], shape[0])
        limit = scale * np.sqrt(6.0 / (fan_in + fan_out))
        value = rng.uniform(-limit, limit, size=shape)
    elif dist == "orthogonal":
        flat = rng.normal(size=(shape[0], int(np.prod(shape[1:]))))
        q, r = np.linalg.qr(flat if flat.shape[0] >= flat.shape[1] else flat.T)
        q = q * np.sign(np.diag(r))
        value = scale * (q if flat.shape[0] >= flat.shape[1] else q.T).reshape(shape)
    elif dist == "ones":
        value = np.ones(shape)
    else:
        value = np.zeros(shape)
    if info.fill:
        size = shape[-1] // info.fill["parts"]
        start = info.fill["index"] * size
        value[..., start : start + size] = info.fill["value"]
    return value


def initialize(param_info: dict[str, ParamInfo], seed: int) -> dict[str, np.ndarray]:
    """Initial values for every parameter, drawn in name order from `seed`."""
    rng = np.random.default_rng(seed)
    return {name: draw(param_info[name], rng) for name in sorted(param_info)}
