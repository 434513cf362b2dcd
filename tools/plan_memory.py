"""Where the memory of one training step goes: a compiled plan's buffer inventory, the
temporaries its kernels allocate while they run, and peak resident memory against the
hand-written NumPy step (`tools/numpy_hand.py`).

    python tools/plan_memory.py [--config NAME] [--cell C]... [--buffers] [--rss]
                                [--account] [--repeats N] [--before TREE]

`--buffers` lists every array the plan of the benchmark model (`tools/bench.py`'s: one layer,
per-step softmax cross-entropy on a linear readout, float32) holds, largest first, with what
it is (`seqgraph.plan.listing.inventory`), and the bytes NumPy allocates on top of them during
one step (tracemalloc's peak: the temporaries of expressions without `out=`). `--rss` measures
peak resident memory above the imports in a fresh process per implementation and cell, the
way `tools/bench.py --memory` does: build, two steps, VmHWM minus the VmRSS before;
`--before TREE` adds the seqgraph of another source tree (an older revision), interleaved.
`--account` sorts what a seqgraph process holds after building the model and two steps
into the parts the hand-written step has no counterpart for: the plan's arrays, the model's
weights and the gradient copies a step returns (NumPy data, tracemalloc), the Python objects
still alive by the line that made them (tracemalloc, NumPy's data left out) and the free
chunks glibc keeps in its heap (`mallinfo2`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the seqgraph under test: this tree, or another one's (--before) in a worker process
sys.path.insert(0, os.environ.get("SEQGRAPH_TREE") or str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
import numpy_hand  # noqa: E402
from bench_peers import CELLS, CONFIGS, bench_model  # noqa: E402

MIB = 2**20
NUMPY_DATA_DOMAIN = 389047  # the tracemalloc domain NumPy reports its array data under


def make_data(cfg: tuple, seed: int = 0) -> dict:
    B, T, n_in, _, C = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, n_in)).astype(np.float32)
    return {"x": x, "y": rng.integers(0, C, size=(B, T))}


def seqgraph_step(cell: str, cfg: tuple):
    model, batch = bench_model(cell, cfg), make_data(cfg)
    return lambda: model.loss_and_grads(batch)


def hand_step(cell: str, cfg: tuple):
    params = {k: np.asarray(v) for k, v in bench_model(cell, cfg).params.items()}
    batch = make_data(cfg)
    return lambda: numpy_hand.loss_and_grads(cell, params, batch["x"], batch["y"])


IMPLS = {"seqgraph": seqgraph_step, "hand": hand_step}


def step_temporaries(step) -> int:
    """Bytes allocated on top of what exists before a step, at the step's peak (tracemalloc
    sees NumPy's array data); the step's result is dropped first."""
    step()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def print_buffers(cell: str, name: str) -> None:
    from seqgraph.plan import listing

    cfg = CONFIGS[name]
    model, batch = bench_model(cell, cfg), make_data(cfg)
    plan = model.plan(batch)
    rows = listing.inventory(plan)
    print(f"{cell} {name}: {len(rows)} arrays, {sum(r[1] for r in rows) / MIB:.1f} MiB")
    for label, nbytes, text in rows:
        print(f"  {nbytes / MIB:8.2f} MiB  {text:<16} {label}")
    grads = lambda: model.loss_and_grads(batch)  # noqa: E731
    print(f"  temporaries of one step: {step_temporaries(grads) / MIB:.2f} MiB (tracemalloc)")
    hand = hand_step(cell, cfg)
    print(f"  hand NumPy, all its arrays at its peak: {step_temporaries(hand) / MIB:.2f} MiB")


def heap_free_bytes() -> int | None:
    """Bytes in glibc's free heap chunks (`mallinfo2().fordblks`), None elsewhere."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd "
            "usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    info = getattr(ctypes.CDLL(None), "mallinfo2", None) if sys.platform == "linux" else None
    if info is None:
        return None
    info.restype = MallInfo2
    return int(info().fordblks)


def account(cell: str, name: str, lines: int = 6) -> dict:
    """What the process holds after building the benchmark model and running two steps:
    {plan_arrays, params, grad_copies, python_objects: bytes, top: [(line, bytes)],
    heap_free: bytes or None}. Python objects made before the model (imports) not counted."""
    from seqgraph.runtime.model import held_bytes

    tracemalloc.start()
    model, batch = bench_model(cell, CONFIGS[name]), make_data(CONFIGS[name])
    model.loss_and_grads(batch)
    _, grads = model.loss_and_grads(batch)
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    python = snapshot.filter_traces([tracemalloc.DomainFilter(False, NUMPY_DATA_DOMAIN)])
    top = python.statistics("lineno")
    return {
        "plan_arrays": held_bytes(model.plan(batch)),
        "params": sum(int(p.nbytes) for p in model.params.values()),
        "grad_copies": sum(int(g.nbytes) for g in grads.values()),
        "python_objects": sum(stat.size for stat in top),
        "top": [
            (f"{s.traceback[0].filename.split('/')[-1]}:{s.traceback[0].lineno}", s.size)
            for s in top[:lines]
        ],
        "heap_free": heap_free_bytes(),
    }


def print_account(cell: str, name: str) -> None:
    parts = account(cell, name)
    free = parts["heap_free"]
    print(
        f"{cell} {name}: plan arrays {parts['plan_arrays'] / MIB:.1f} MiB, weights "
        f"{parts['params'] / MIB:.2f}, gradient copies {parts['grad_copies'] / MIB:.2f}, "
        f"Python objects {parts['python_objects'] / MIB:.2f}, free heap chunks "
        + ("n/a" if free is None else f"{free / MIB:.1f} (resident where touched)")
    )
    for line, nbytes in parts["top"]:
        print(f"  {nbytes / MIB:6.2f} MiB  {line}")


def memory_worker(impl: str, cell: str, name: str) -> None:
    """In a fresh process: peak resident memory above the imports while building the
    implementation and running two steps (Linux: resets the high-water mark first)."""
    before = harness.status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    step = IMPLS[impl](cell, CONFIGS[name])
    step()
    step()
    print((harness.status_kib("VmHWM") - before) / 1024)


def peak_rss(impl: str, cell: str, name: str, tree: str | None = None) -> float:
    """Peak RSS (MiB) of `impl` in a fresh process, seqgraph from `tree` if given."""
    cmd = [sys.executable, __file__, "--memory-worker", impl, cell, name]
    env = dict(os.environ, SEQGRAPH_TREE=tree or "")
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="medium", choices=list(CONFIGS))
    parser.add_argument("--cell", action="append", choices=CELLS)
    parser.add_argument("--buffers", action="store_true", help="the plan's buffer inventory")
    parser.add_argument("--rss", action="store_true", help="peak RSS, seqgraph and hand NumPy")
    parser.add_argument("--account", action="store_true", help="what holds the rest, by part")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per RSS")
    parser.add_argument("--before", help="also the RSS of the seqgraph in this source tree")
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return 0
    for cell in args.cell or CELLS:
        if args.account:
            print_account(cell, args.config)
        if args.buffers or not (args.rss or args.account):
            print_buffers(cell, args.config)
        if args.rss:
            # interleaved, the median of fresh processes: the machine is shared
            runs = [("seqgraph", "seqgraph", None), ("hand", "hand", None)]
            if args.before:
                runs.insert(0, ("seqgraph before", "seqgraph", args.before))
            samples: dict = {label: [] for label, _, _ in runs}
            for _ in range(args.repeats):
                for label, impl, tree in runs:
                    samples[label].append(peak_rss(impl, cell, args.config, tree))
            text = ", ".join(f"{label} {np.median(v):.1f} MiB" for label, v in samples.items())
            print(f"peak RSS above imports, {args.config} {cell}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
