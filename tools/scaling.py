"""Data-parallel scaling of seqgraph: measured on this machine, projected to a cluster.

Measures, for the benchmark's medium and large LSTM (`tools/bench_peers.py` configs, float32):
  * one process on the whole batch with 1 and with 2 BLAS threads (tokens/s, ms per step);
  * `mpiexec -n 2`, 1 BLAS thread per rank, each rank half the batch plus the all-reduce of
    the gradient (`seqgraph.train.distributed`, the code `seqgraph run` uses): tokens/s and
    the all-reduce's ms per step;
  * the ring all-reduce's latency alpha and per-byte time beta between 2 ranks over loopback
    (MPI_Allreduce of 8 B .. 64 MiB; fit of t = 2(p-1) alpha + 2(p-1)/p n beta, p = 2).

Then projects N = 8 .. 512 nodes with the alpha-beta model of ring all-reduce (Patarasuk &
Yuan 2009; Thakur, Rabenseifner & Gropp 2005): per step, compute c(b) = b * (time per
sequence, measured in one process with 1 BLAS thread: a node computes like one core here;
a faster node makes communication dominate sooner) on b sequences per node, and
    T_ring(N) = 2 (N - 1) alpha + 2 (N - 1) / N * bytes * beta
for the gradient's bytes, with no overlap (seqgraph hands over all gradients after the
backward pass). Efficiency E = c / (c + T_ring); communication dominates once T_ring > c; the
batch per node that keeps E >= 90 % is b >= 9 T_ring / (time per sequence).

    python tools/scaling.py measure --json scaling.json     # ~2 min on 2 busy cores
    python tools/scaling.py table scaling.json              # README's tables
    python tools/scaling.py table scaling.json --step-ms medium=32.4 --step-ms large=61.8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ("medium", "large")
STEPS = {"medium": 6, "large": 2}  # timed steps after one warm-up step
NETWORK = {"name": "100 Gb/s", "alpha": 5e-6, "beta": 8 / 100e9}  # 5 us: a typical MPI latency
NODES = (8, 16, 32, 64, 128, 256, 512)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _step_worker(config: str) -> dict:
    """Timed training steps of one process, or of one rank of an mpiexec job (then half the
    batch, plus the gradient all-reduce). Prints nothing; returns rank 0's numbers."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import bench_peers

    from seqgraph.train import distributed

    comm = distributed.communicator()
    cfg = bench_peers.CONFIGS[config]
    B, T, n_in, _, C = cfg
    model = bench_peers.bench_model("lstm", cfg)
    x, y = bench_peers.make_data(B, T, n_in, C)
    batch = comm.shard({"x": x, "y": y})
    compute, reduce = [], []
    for step in range(STEPS[config] + 1):
        began = time.perf_counter()
        loss, grads, _ = model.train_step(batch)
        done = time.perf_counter()
        grads, sums = comm.sum_step(loss, grads, len(batch["y"]), len(batch["y"]) * T, False)
        if step:  # the first step builds the plan
            compute.append(done - began)
            reduce.append(time.perf_counter() - done)
    step_s = float(np.median(np.add(compute, reduce)))
    gradient_bytes = sum(int(g.nbytes) for g in grads.values())
    return {
        "config": config,
        "ranks": comm.size,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "batch": B,
        "tokens_per_s": B * T / step_s,
        "step_ms": 1e3 * step_s,
        "compute_ms": 1e3 * float(np.median(compute)),
        "allreduce_ms": 1e3 * float(np.median(reduce)),
        "gradient_bytes": gradient_bytes,
    }


def _alpha_beta_worker() -> dict:
    """Median MPI_Allreduce time per message size between the ranks, and the fit."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    sizes = [8 * 4**k for k in range(13)]  # 8 B .. 128 MiB
    times = []
    for n in sizes:
        buffer = np.zeros(n // 8)
        samples = []
        for _ in range(max(3, min(200, 2**24 // n))):
            comm.Barrier()
            began = MPI.Wtime()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            samples.append(MPI.Wtime() - began)
        times.append(float(np.median(samples)))
    # least squares of t = a * 2(p-1) + n * b * 2(p-1)/p over all sizes, weighted by 1/t so
    # that the small messages (alpha) count as much as the large ones (beta)
    rows = np.array([[2 * (p - 1), 2 * (p - 1) / p * n] for n in sizes]) / np.c_[times]
    (alpha, beta), *_ = np.linalg.lstsq(rows, np.ones(len(sizes)), rcond=None)
    return {"ranks": p, "sizes": sizes, "seconds": times, "alpha": alpha, "beta": beta}


def _run_json(command: list[str], threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _mpiexec(n: int) -> list[str]:
    command = [shutil.which("mpiexec") or "mpiexec", "-n", str(n), "--oversubscribe"]
    return command + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def measure() -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    records = []
    for config in CONFIGS:
        for threads in (1, 2):
            records.append(_run_json(me + ["step", config], threads))
        records.append(_run_json(_mpiexec(2) + me + ["step", config], 1))
        print(json.dumps(records[-3:]), file=sys.stderr)
    fit = _run_json(_mpiexec(2) + me + ["alphabeta"], 1)
    return {"steps": records, "loopback": fit, "network": NETWORK, "date": time.strftime("%F")}


def ring_seconds(nodes: int, nbytes: float, alpha: float, beta: float) -> float:
    """The alpha-beta time of a ring all-reduce of `nbytes` over `nodes`."""
    return 2 * (nodes - 1) * alpha + 2 * (nodes - 1) / nodes * nbytes * beta


def crossover(compute: float, nbytes: float, alpha: float, beta: float) -> int:
    """The fewest nodes at which the ring all-reduce takes longer than `compute`."""
    low, high = 1, 2**40  # ring_seconds grows with the node count: bisect
    while high - low > 1:
        middle = (low + high) // 2
        if ring_seconds(middle, nbytes, alpha, beta) > compute:
            high = middle
        else:
            low = middle
    return high


def measured_table(data: dict) -> str:
    """Markdown: 1 process with 1 and 2 threads against 2 ranks, per config."""
    lines = [
        "| config | 1 process, 1 thread | 1 process, 2 threads | 2 ranks x 1 thread "
        "| all-reduce per step (2 ranks) | gradient |",
        "|---|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        rows = {(r["ranks"], r["threads"]): r for r in data["steps"] if r["config"] == config}
        one, two, ranks = rows[(1, 1)], rows[(1, 2)], rows[(2, 1)]
        cells = [
            f"{r['tokens_per_s']:,.0f} tok/s ({r['step_ms']:,.0f} ms)" for r in (one, two, ranks)
        ]
        lines.append(
            f"| {config} | {' | '.join(cells)} | {ranks['allreduce_ms']:.1f} ms "
            f"| {ranks['gradient_bytes'] / 2**20:.1f} MiB |"
        )
    fit = data["loopback"]
    lines += [
        "",
        f"Loopback, 2 ranks: alpha = {fit['alpha'] * 1e6:.1f} us, 1/beta = "
        f"{1e-9 / fit['beta']:.2f} GB/s.",
    ]
    return "\n".join(lines)


def projection(data: dict, step_ms: dict[str, float] | None = None) -> str:
    """Markdown: efficiency and ring time per node count on `data['network']`, for the
    measured compute of one process with 1 thread, or for `step_ms` (config -> ms of one
    node's step on the config's batch, e.g. a GPU's)."""
    net = data["network"]
    lines = [
        "| config | b per node | compute | " + " | ".join(f"N={n}" for n in NODES) + " |",
        "|---|---|---|" + "---|" * len(NODES),
    ]
    notes = []
    for config in CONFIGS:
        record = next(
            r for r in data["steps"] if r["config"] == config and r["ranks"] == r["threads"] == 1
        )
        b, nbytes = record["batch"], record["gradient_bytes"]
        compute = (step_ms or {}).get(config, record["compute_ms"]) / 1e3
        per_sequence = compute / b
        comm = [ring_seconds(n, nbytes, net["alpha"], net["beta"]) for n in NODES]
        cells = [f"{compute / (compute + t):.1%} ({t * 1e3:.1f} ms)" for t in comm]
        lines.append(f"| {config} | {b} | {compute * 1e3:,.1f} ms | " + " | ".join(cells) + " |")
        need = [max(1, -(-9 * t // per_sequence)) for t in comm]
        lines.append("| b for E >= 90 % | | | " + " | ".join(f"{int(n)}" for n in need) + " |")
        at_batch, at_one = (
            crossover(per_sequence * size, nbytes, net["alpha"], net["beta"]) for size in (b, 1)
        )
        notes.append(
            f"{config}: communication takes longer than compute from N = {at_batch:,} nodes "
            f"with {b} sequences per node, from N = {at_one:,} with 1."
        )
    return "\n".join(lines + [""] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure here (starts mpiexec -n 2)")
    m.add_argument("--json", default="scaling.json")
    t = sub.add_parser("table", help="README's tables from a measure --json file")
    t.add_argument("file")
    t.add_argument(
        "--step-ms",
        action="append",
        default=[],
        metavar="CONFIG=MS",
        help="project with this per-node step time instead of the measured one",
    )
    s = sub.add_parser("step", help="(internal) time training steps of one process or rank")
    s.add_argument("config", choices=CONFIGS)
    sub.add_parser("alphabeta", help="(internal, under mpiexec) fit alpha and beta")
    args = parser.parse_args()
    if args.command == "measure":
        data = measure()
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(measured_table(data) + "\n\n" + projection(data))
    elif args.command == "table":
        data = json.loads(Path(args.file).read_text())
        step_ms = {k: float(v) for k, v in (item.split("=", 1) for item in args.step_ms)}
        print(measured_table(data) + "\n\n" + projection(data, step_ms or None))
    else:
        out = _step_worker(args.config) if args.command == "step" else _alpha_beta_worker()
        if os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":
            print(json.dumps(out))


if __name__ == "__main__":
    main()
