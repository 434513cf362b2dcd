"""Helpers shared by the test files: spec builders, batches and gradient checks.

The worst error each gradient check sees is recorded in `WORST` and printed at the end of the
run by conftest.py, so a report can quote how close analytic and numeric gradients came.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import Model
from seqgraph.engine.xp_extra import to_numpy
from seqgraph.runtime import batch as batching

PATTERNS = ("many_to_many", "many_to_one", "one_to_one", "one_to_many", "encoder_decoder")
BUILTIN_CELLS = ("rnn", "rnn_relu", "gru", "lstm")
# Patterns whose (encoder) layers may be bidirectional; feeding back needs causal layers.
BIDIRECTIONAL_OK = ("many_to_many", "many_to_one", "one_to_one", "encoder_decoder")

# What each pattern reads and predicts, chosen so ids/vectors, embedding/onehot/dense encoders
# and both losses (softmax_ce, mse) are all exercised.
IO = {
    "many_to_many": (
        {"type": "ids", "vocab": 5},
        {"type": "ids", "vocab": 4},
        [{"type": "embedding", "size": 3}],
    ),
    "many_to_one": (
        {"type": "vectors", "size": 3},
        {"type": "ids", "vocab": 4},
        [{"type": "dense", "size": 3, "activation": "tanh"}],
    ),
    "one_to_one": ({"type": "vectors", "size": 3}, {"type": "vectors", "size": 2}, []),
    "one_to_many": ({"type": "vectors", "size": 3}, {"type": "ids", "vocab": 4}, []),
    "encoder_decoder": (
        {"type": "ids", "vocab": 5},
        {"type": "vectors", "size": 2},
        [{"type": "onehot"}],
    ),
}

# Largest error seen by each named check, and where (printed by conftest.py).
WORST: dict[str, tuple[float, str]] = {}


def record(check: str, error: float, where: str = "") -> None:
    if float(error) >= WORST.get(check, (-1.0, ""))[0]:
        WORST[check] = (float(error), where)


def model_spec(
    pattern: str,
    cell: str,
    bidirectional: bool = False,
    hidden: int = 3,
    layers: int = 2,
    cells: dict | None = None,
    **extra,
) -> dict:
    """A spec dict for `pattern` with `layers` stacked layers of `cell`."""
    inp, target, encoders = IO[pattern]
    layer = {"cell": cell, "hidden": hidden, "bidirectional": bidirectional}
    model = {
        "pattern": pattern,
        "input": inp,
        "target": target,
        "encoders": encoders,
        "layers": [dict(layer) for _ in range(layers)],
    }
    if pattern == "encoder_decoder":
        # the decoder's state starts from the encoder's (merged) final state
        size = 2 * hidden if bidirectional else hidden
        model["decoder_layers"] = [{"cell": cell, "hidden": size} for _ in range(layers)]
    model.update(extra)
    spec = {"name": f"{cell}_{pattern}", "seed": 3, "model": model}
    if cells:
        spec["cells"] = cells
    return spec


def vector_spec(
    cell: str = "lstm",
    layers: int = 1,
    pattern: str = "many_to_many",
    dtype: str = "float64",
    cells: dict | None = None,
    **layer,
) -> dict:
    """A spec of `layers` layers of `cell` (hidden 6, each with `layer`'s keys: dropout,
    layer_norm...) over 3-wide vectors, 4 target classes, seed 3; `cells`: user cells."""
    model = {
        "pattern": pattern,
        "input": {"type": "vectors", "size": 3},
        "target": {"type": "ids", "vocab": 4},
        "layers": [{"cell": cell, "hidden": 6, **layer}] * layers,
    }
    spec = {"model": model, "dtype": dtype, "seed": 3}
    if cells:
        spec["cells"] = cells
    return spec


# the layer shapes the compiled-kernel tests walk (`test_ckernels`, `test_stamps`): each
# built-in cell, stacked, bidirectional (both patterns), layer norm and dropout
VECTOR_MODELS = {
    "lstm": vector_spec("lstm"),
    "gru": vector_spec("gru"),
    "rnn": vector_spec("rnn"),
    "stacked": vector_spec("lstm", 2),
    "bidirectional": vector_spec("gru", 2, bidirectional=True),
    "many_to_one_bidirectional": vector_spec("lstm", pattern="many_to_one", bidirectional=True),
    "layer_norm": vector_spec("lstm", layer_norm=True),
    "dropout": vector_spec("lstm", 2, dropout=0.3, recurrent_dropout=0.4),
}


def make_batch(
    spec, size: int = 3, steps: int = 4, out_steps: int = 3, seed: int = 0, ragged: bool = True
) -> dict:
    """A random batch; with `ragged`, sequences have different real lengths (1 .. steps)."""
    model = spec.model
    sample = batching.dummy(spec, size, steps, out_steps if model.feeds_back else None, seed)
    if ragged:
        if model.pattern in ("many_to_many", "many_to_one", "encoder_decoder"):
            sample["lengths"] = ragged_lengths(size, steps)
        if model.feeds_back:
            sample["y_lengths"] = ragged_lengths(size, out_steps)
    return sample


def ragged_lengths(size: int, steps: int) -> np.ndarray:
    """One full-length sequence, then lengths 1, 2, ... (so padding is always present)."""
    return np.array([steps] + [i % steps + 1 for i in range(size - 1)], dtype=np.int64)


def host(value) -> np.ndarray:
    return np.array(to_numpy(value), dtype=np.float64)


def check_param_grads(
    model: Model,
    batch: dict,
    check: str,
    seed: int = 0,
    eps: float = 1e-6,
    label: str = "",
    zero_ok: tuple[str, ...] = (),
) -> float:
    """Compare every parameter gradient with central differences of the loss along a random
    direction; asserts |fd - an| <= 1e-6 (|fd| + |an|) + 1e-9 and that no gradient is zero
    (except for parameters whose name ends with one of `zero_ok`). Returns the worst relative
    error."""
    rng = np.random.default_rng(seed)
    _, grads = model.loss_and_grads(batch)
    base = {name: host(value) for name, value in model.params.items()}
    worst, where, failures = 0.0, "", []
    for name in sorted(base):
        direction = rng.normal(size=base[name].shape)
        losses = []
        for sign in (1, -1):
            model.set_params({name: base[name] + sign * eps * direction})
            losses.append(model.forward(batch)["loss"])
        model.set_params({name: base[name]})
        fd = (losses[0] - losses[1]) / (2 * eps)
        an = float(np.sum(host(grads[name]) * direction))
        error = abs(fd - an)
        if error > 1e-6 * (abs(fd) + abs(an)) + 1e-9 or (an == 0.0 and not name.endswith(zero_ok)):
            failures.append(f"{name}: fd={fd:.12g} analytic={an:.12g}")
        relative = error / max(abs(fd) + abs(an), 1e-300)
        if relative >= worst:
            worst, where = relative, f"{label} {name} (|an|={abs(an):.1e})"
    record(check, worst, where)
    assert not failures, "gradient mismatch:\n" + "\n".join(failures)
    return worst


def assert_plan_gives(plan, batch, loss: float, grads: dict) -> None:
    """The plan model's loss and gradients equal the reference `loss`, `grads` (float64,
    1e-11), on two calls: buffers are reused, so the second must not see the first."""
    for _ in range(2):
        got_loss, got = plan.loss_and_grads(batch)
        assert got_loss == pytest.approx(loss, rel=1e-12, abs=1e-12)
        assert set(got) == set(grads)
        for name in grads:
            np.testing.assert_allclose(got[name], grads[name], rtol=1e-11, atol=1e-12, err_msg=name)


def require_gpu():
    """Skip (with the reason) unless CuPy is installed and sees a CUDA device."""
    import pytest

    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install seqgraph[gpu])")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises several kinds
        pytest.skip(f"no usable CUDA device: {exc}")
    if count < 1:
        pytest.skip("no CUDA device found")
    return cupy
