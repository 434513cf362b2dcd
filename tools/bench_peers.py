"""The implementations tools/bench.py times, and the process each one runs in.

One training step, the same for all: forward over the sequence, per-step softmax cross-entropy
on a linear readout (summed over steps, averaged over the batch), backward through time, every
parameter's gradient, float32. Implementations: seqgraph (`Model(spec).loss_and_grads`, the
public API, unchanged across versions, so tools/bench_versions.py runs it from any tree),
PyTorch's `nn.RNN/GRU/LSTM`, JAX (tools/jax_peer.py) and hand-written NumPy
(tools/numpy_hand.py); JAX and hand NumPy start from seqgraph's initial weights, so their
losses must equal seqgraph's (tests/test_readme_numbers.py).

A process imports only its own library: the worker of one implementation never loads another's
thread pools. The command line is the workers' (the drivers start them; see tools/harness.py):

    python tools/bench_peers.py serve|alone|memory IMPL CELL CONFIG [--backend numpy|cupy]
        [--params FILE.npz] [--tree DIR] [--min-sample S]
    python tools/bench_peers.py params CELL CONFIG FILE.npz    # seqgraph's initial weights
    python tools/bench_peers.py peak numpy|cupy                # float32 GEMM GFLOP/s, BLAS
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import harness

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
CONFIGS = {  # (B, T, input, hidden, classes)
    "tiny": (1, 25, 65, 100, 65),
    "small": (32, 50, 64, 128, 64),
    "medium": (64, 100, 128, 256, 128),
    "large": (128, 100, 512, 1024, 512),
    "long": (16, 1000, 32, 64, 32),
}
CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # numpy_hand.GATES; imported, it would load SciPy here
IMPLS = ("seqgraph", "torch", "jax", "numpy_hand")
NEEDS_PARAMS = ("jax", "numpy_hand")  # start from seqgraph's initial weights


def step_flops(cell: str, config: str) -> float:
    """Matrix-product FLOPs of one training step (backward = 2x forward)."""
    B, T, n_in, H, C = CONFIGS[config]
    G = GATES[cell]
    return 3 * 2.0 * T * B * (n_in * G * H + H * G * H + H * C)


def make_data(B: int, T: int, n_in: int, C: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, n_in)).astype(np.float32), rng.integers(0, C, size=(B, T))


def bench_model(cell: str, cfg: tuple, backend: str = "numpy"):
    """seqgraph's model of the benchmark (its initial weights are the JAX and NumPy peers' too)."""
    from seqgraph import Model

    _, _, n_in, H, C = cfg
    spec = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": n_in},
            "target": {"type": "ids", "vocab": C},
            "layers": [{"cell": cell, "hidden": H}],
        }
    }
    return Model(spec, backend=backend, dtype="float32")


def initial_params(cell: str, config: str) -> dict:
    import numpy as np

    return {k: np.asarray(v) for k, v in bench_model(cell, CONFIGS[config]).params.items()}


def _synchronizer(backend: str):
    if backend != "cupy":
        return lambda: None
    import cupy

    return cupy.cuda.Device().synchronize


def seqgraph_step(cell: str, config: str, backend: str = "numpy", params=None) -> harness.Step:
    B, T, n_in, H, C = CONFIGS[config]
    model = bench_model(cell, CONFIGS[config], backend)
    x, y = make_data(B, T, n_in, C)
    batch, sync = {"x": x, "y": y}, _synchronizer(backend)

    def step() -> float:
        loss, _ = model.loss_and_grads(batch)
        sync()
        return float(loss)

    return step


def torch_step(cell: str, config: str, backend: str = "numpy", params=None) -> harness.Step:
    try:
        import torch
    except ImportError as missing:
        raise harness.Unavailable("PyTorch is not installed") from missing
    B, T, n_in, H, C = CONFIGS[config]
    device = "cuda" if backend == "cupy" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise harness.Unavailable("torch has no CUDA device")
    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](n_in, H)
    rnn, readout = rnn.to(device), torch.nn.Linear(H, C).to(device)
    weights = list(rnn.parameters()) + list(readout.parameters())
    x, y = make_data(B, T, n_in, C)
    xt = torch.from_numpy(x.transpose(1, 0, 2).copy()).to(device)
    yt = torch.from_numpy(y.T.reshape(-1).copy()).to(device)

    def step() -> float:
        for w in weights:
            w.grad = None
        out, _ = rnn(xt)
        logits = readout(out).reshape(T * B, C)
        loss = torch.nn.functional.cross_entropy(logits, yt, reduction="sum") / B
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return step


def jax_step(cell: str, config: str, backend: str = "numpy", params=None) -> harness.Step:
    if backend != "numpy":
        raise harness.Unavailable("the JAX peer runs on the CPU only")
    try:
        import jax_peer
    except ImportError as missing:
        raise harness.Unavailable("JAX is not installed") from missing
    B, T, n_in, H, C = CONFIGS[config]
    x, y = make_data(B, T, n_in, C)
    return jax_peer.make_step(
        cell, initial_params(cell, config) if params is None else params, x, y
    )


def hand_step(cell: str, config: str, backend: str = "numpy", params=None) -> harness.Step:
    if backend != "numpy":
        raise harness.Unavailable("hand-written NumPy runs on the CPU only")
    import numpy_hand

    B, T, n_in, H, C = CONFIGS[config]
    params = initial_params(cell, config) if params is None else params
    x, y = make_data(B, T, n_in, C)
    return lambda: numpy_hand.loss_and_grads(cell, params, x, y)[0]


BUILDERS = {
    "seqgraph": seqgraph_step,
    "torch": torch_step,
    "jax": jax_step,
    "numpy_hand": hand_step,
}
LIBRARY = {"seqgraph": "seqgraph", "torch": "torch", "jax": "jax_peer", "numpy_hand": "numpy_hand"}


def _revision(directory: Path) -> str | None:
    result = subprocess.run(
        ["git", "-C", str(directory), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def torch_facts() -> dict:
    import torch

    lines = torch.__config__.show().splitlines() + torch.__config__.parallel_info().splitlines()

    def line_with(*words: str) -> str | None:
        return next((s.strip(" -") for s in lines if any(w in s for w in words)), None)

    return {
        "torch": torch.__version__,
        "onednn": line_with("MKL-DNN", "oneDNN"),
        "mkl": line_with("Math Kernel Library"),
        "parallel_backend": line_with("ATen parallel backend"),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def jax_facts() -> dict:
    import os

    import jax
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def library_facts(impl: str) -> dict:
    """Versions and thread counts of what this worker's implementation runs on."""
    facts = {"numpy": harness.numpy_facts()} if impl in ("seqgraph", "numpy_hand") else {}
    if impl == "seqgraph":
        import seqgraph

        facts["revision"] = _revision(Path(seqgraph.__file__).parent)
    elif impl == "numpy_hand":
        import numpy_hand

        facts["scipy_expit"] = numpy_hand.expit is not None
    elif impl == "torch":
        facts.update(torch_facts())
    elif impl == "jax":
        facts.update(jax_facts())
    if "cupy" in sys.modules:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)
        facts["cupy"] = {"cupy": cupy.__version__, "gpu": device["name"].decode()}
    facts["pools"] = harness.pool_facts()
    # the promise that a worker runs one library, checked: which of the others it has loaded
    # (an implementation's name is its library's module name; jax_peer imports jax)
    facts["others_loaded"] = sorted(m for m in set(IMPLS) - {impl} if m in sys.modules)
    return facts


def gemm_peak(backend: str = "numpy", n: int = 2048, tries: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n matrix product on this machine."""
    import numpy as np

    m = np
    if backend == "cupy":
        import cupy as m
    sync = _synchronizer(backend)
    a = m.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=np.float32)
    out, best = m.empty_like(a), 0.0
    m.matmul(a, a, out=out)  # warm up: library load, GPU clocks
    sync()
    for _ in range(tries):
        start = time.perf_counter()
        m.matmul(a, a, out=out)
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def job_argv(
    mode: str,
    impl: str,
    cell: str,
    config: str,
    backend: str = "numpy",
    params: str | None = None,
    tree: str | None = None,
    min_sample: float = harness.MIN_SAMPLE_S,
) -> list[str]:
    """The command line (after the interpreter) of one worker or one-shot job."""
    argv = [__file__, mode, impl, cell, config, "--backend", backend]
    argv += ["--min-sample", str(min_sample)]
    argv += ["--params", params] if params else []
    return argv + (["--tree", tree] if tree else [])


def _worker(args) -> None:
    try:  # before anything is measured (memory: "above the imports")
        __import__(LIBRARY[args.impl])
        missing = None
    except ImportError as error:
        missing = f"{args.impl}: {error}"
    params = None
    if args.params:
        import numpy as np

        with np.load(args.params) as saved:
            params = dict(saved)

    def build() -> harness.Step:
        if missing:
            raise harness.Unavailable(missing)
        return BUILDERS[args.impl](args.cell, args.config, args.backend, params)

    if args.mode == "serve":
        harness.serve(build, args.min_sample, lambda: library_facts(args.impl))
        return
    try:
        if args.mode == "alone":
            print(json.dumps(harness.time_alone(build(), args.min_sample)))
        else:
            print(json.dumps({"mib": harness.peak_memory_mib(build)}))
    except harness.Unavailable as reason:
        print(json.dumps({"unavailable": str(reason)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in ("serve", "alone", "memory"):
        worker = modes.add_parser(mode)
        worker.add_argument("impl", choices=IMPLS)
        worker.add_argument("cell", choices=CELLS)
        worker.add_argument("config", choices=list(CONFIGS))
        worker.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
        worker.add_argument("--params")
        worker.add_argument("--tree", help="import seqgraph from this source tree")
        worker.add_argument("--min-sample", type=float, default=harness.MIN_SAMPLE_S)
    saver = modes.add_parser("params")
    saver.add_argument("cell", choices=CELLS)
    saver.add_argument("config", choices=list(CONFIGS))
    saver.add_argument("file")
    modes.add_parser("peak").add_argument("backend", choices=["numpy", "cupy"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(getattr(args, "tree", None) or ROOT))  # the seqgraph under test
    if args.mode == "params":
        import numpy as np

        np.savez(args.file, **initial_params(args.cell, args.config))
        print(json.dumps({"saved": args.file}))
    elif args.mode == "peak":
        facts = {"gflops": gemm_peak(args.backend), **harness.numpy_facts()}
        print(json.dumps({**facts, "pools": harness.pool_facts()}))
    else:
        _worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
