"""Time one training step of seqgraph against its peers, side by side in one process.

A step is: forward over the sequence, per-step softmax cross-entropy on a linear readout
(summed over steps, averaged over the batch), backward through time, every parameter's
gradient. Implementations run interleaved (one sample each per round, in a random order;
see `bench`), so machine noise hits them alike; the report gives the median and min over
rounds, the ratio seqgraph/peer, and GFLOP/s against this machine's measured float32 GEMM
peak. `tools/bench_table.py` turns the --json records into the README's table.

    python tools/bench.py [--config NAME]... [--cell rnn|gru|lstm]... [--backend numpy|cupy]
                          [--repeats N] [--json FILE] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy_hand  # noqa: E402

from seqgraph import Model  # noqa: E402

CONFIGS = {  # (B, T, input, hidden, classes)
    "tiny": (1, 25, 65, 100, 65),
    "small": (32, 50, 64, 128, 64),
    "medium": (64, 100, 128, 256, 128),
    "large": (128, 100, 512, 1024, 512),
    "long": (16, 1000, 32, 64, 32),
}
CELLS = ("rnn", "gru", "lstm")
PAUSE = 0.02  # seconds before each sample (see `bench`)


def step_flops(cell: str, B: int, T: int, n_in: int, H: int, C: int) -> float:
    """Matrix-product FLOPs of one training step (backward = 2x forward)."""
    G = numpy_hand.GATES[cell]
    return 3 * 2.0 * T * B * (n_in * G * H + H * G * H + H * C)


def gemm_peak(backend: str = "numpy", n: int = 2048, tries: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n matrix product on this machine."""
    if backend == "cupy":
        import cupy as m
    else:
        m = np
    a = m.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=np.float32)
    out, best = m.empty_like(a), 0.0
    m.matmul(a, a, out=out)  # warm up: library load, GPU clocks
    _sync(backend)
    for _ in range(tries):
        start = time.perf_counter()
        m.matmul(a, a, out=out)
        _sync(backend)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def _sync(backend: str) -> None:
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def make_data(B, T, n_in, C, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, n_in)).astype(np.float32), rng.integers(0, C, size=(B, T))


def bench_model(cell, cfg, backend="numpy") -> Model:
    """seqgraph's model of the benchmark (its initial weights are every peer's too)."""
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


def host_params(cell, cfg) -> dict:
    return {k: np.asarray(v) for k, v in bench_model(cell, cfg).params.items()}


def seqgraph_step(cell, cfg, backend):
    B, T, n_in, H, C = cfg
    model = bench_model(cell, cfg, backend)
    x, y = make_data(B, T, n_in, C)
    batch = {"x": x, "y": y}
    return lambda: model.loss_and_grads(batch)


def hand_step(cell, cfg, backend):
    if backend != "numpy":
        return None
    B, T, n_in, H, C = cfg
    params = host_params(cell, cfg)
    x, y = make_data(B, T, n_in, C)
    return lambda: numpy_hand.loss_and_grads(cell, params, x, y)


def torch_step(cell, cfg, backend):
    try:
        import torch
    except ImportError:
        return None
    B, T, n_in, H, C = cfg
    device = "cuda" if backend == "cupy" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return None
    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](n_in, H)
    rnn, readout = rnn.to(device), torch.nn.Linear(H, C).to(device)
    params = list(rnn.parameters()) + list(readout.parameters())
    x, y = make_data(B, T, n_in, C)
    xt = torch.from_numpy(x.transpose(1, 0, 2).copy()).to(device)
    yt = torch.from_numpy(y.T.reshape(-1).copy()).to(device)

    def step():
        for p in params:
            p.grad = None
        out, _ = rnn(xt)
        logits = readout(out).reshape(T * B, C)
        loss = torch.nn.functional.cross_entropy(logits, yt, reduction="sum") / B
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return step


def jax_step(cell, cfg, backend):
    if backend != "numpy":
        return None
    try:
        import jax_peer
    except ImportError:  # JAX is not installed
        return None
    B, T, n_in, H, C = cfg
    x, y = make_data(B, T, n_in, C)
    return jax_peer.make_step(cell, host_params(cell, cfg), x, y)


IMPLS = {"seqgraph": seqgraph_step, "torch": torch_step, "jax": jax_step, "numpy_hand": hand_step}


def bench(cell, name, backend, repeats, min_sample=0.02):
    """Interleaved timings {impl: [seconds per step]} for one cell and config.

    Each round runs every implementation once, in a fresh random order (seeded), so none
    always follows the same neighbour; a pause before each sample lets the previous one's
    thread pools (torch's OpenMP, XLA's) stop spinning, which otherwise takes a core from
    whoever runs next. A sample is the mean of enough consecutive steps to last
    `min_sample` seconds: a single sub-millisecond step is mostly timer and scheduler noise."""
    cfg = CONFIGS[name]
    steps, inner = {}, {}
    for impl, make in IMPLS.items():
        step = make(cell, cfg, backend)
        if step is not None:
            step()  # warm up: compiles the plan, allocates buffers
            _sync(backend)
            start = time.perf_counter()
            step()
            _sync(backend)
            once = time.perf_counter() - start
            steps[impl], inner[impl] = step, max(1, int(min_sample / max(once, 1e-6)))
    times = {impl: [] for impl in steps}
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        for impl in rng.permutation(list(steps)):
            step, n = steps[impl], inner[impl]
            time.sleep(PAUSE)
            start = time.perf_counter()
            for _ in range(n):
                step()
            _sync(backend)
            times[impl].append((time.perf_counter() - start) / n)
    return times


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_worker(impl, cell, name, backend) -> None:
    """In a fresh process: peak resident memory above the imports while building the
    implementation and running two steps (Linux: resets the high-water mark first)."""
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    step = IMPLS[impl](cell, CONFIGS[name], backend)
    step()
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def peak_memory(impl, cell, name, backend) -> float | None:
    cmd = [sys.executable, __file__, "--memory-worker", impl, cell, name, backend]
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=list(CONFIGS))
    parser.add_argument("--cell", action="append", choices=list(CELLS))
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json")
    parser.add_argument("--memory", action="store_true", help="peak memory of medium")
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return 0
    peak = gemm_peak(args.backend)
    print(f"float32 GEMM peak ({args.backend}): {peak:.1f} GFLOP/s")
    print(
        f"{'config':8} {'cell':5} {'impl':11} {'ms_med':>9} {'ms_min':>9} {'sg/peer':>8} "
        f"{'GFLOP/s':>8} {'%peak':>6}"
    )
    records = []
    for name in args.config or list(CONFIGS):
        for cell in args.cell or list(CELLS):
            times = bench(cell, name, args.backend, args.repeats)
            flops = step_flops(cell, *CONFIGS[name])
            ours = np.median(times["seqgraph"])
            for impl, ts in times.items():
                med, low = float(np.median(ts)), float(np.min(ts))
                gflops = flops / med / 1e9
                ratio = "" if impl == "seqgraph" else f"{ours / med:8.2f}"
                print(
                    f"{name:8} {cell:5} {impl:11} {med * 1e3:9.2f} {low * 1e3:9.2f} "
                    f"{ratio:>8} {gflops:8.1f} {100 * gflops / peak:6.1f}"
                )
                records.append(
                    {
                        "config": name,
                        "cell": cell,
                        "impl": impl,
                        "ms_median": med * 1e3,
                        "ms_min": low * 1e3,
                        "gflops": gflops,
                    }
                )
    if args.memory:
        for cell in args.cell or list(CELLS):
            for impl in IMPLS:
                mib = peak_memory(impl, cell, "medium", args.backend)
                if mib is not None:
                    print(f"peak memory medium {cell} {impl}: {mib:.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
