"""Where the memory of one training step goes: a compiled plan's buffer inventory, the
temporaries its kernels allocate while they run, and peak resident memory against the
hand-written NumPy step (`tools/numpy_hand.py`).

    python tools/plan_memory.py [--config NAME] [--cell C]... [--buffers] [--rss]
                                [--repeats N] [--before TREE]

`--buffers` lists every array the plan of the benchmark model (`tools/bench.py`'s: one layer,
per-step softmax cross-entropy on a linear readout, float32) holds, largest first, with what
it is (`seqgraph.plan.listing.inventory`), and the bytes NumPy allocates on top of them during
one step (tracemalloc's peak: the temporaries of expressions without `out=`). `--rss` measures
peak resident memory above the imports in a fresh process per implementation and cell, the
way `tools/bench.py --memory` does: build, two steps, VmHWM minus the VmRSS before;
`--before TREE` adds the seqgraph of another source tree (an older revision), interleaved.
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
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per RSS")
    parser.add_argument("--before", help="also the RSS of the seqgraph in this source tree")
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return 0
    for cell in args.cell or CELLS:
        if args.buffers or not args.rss:
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
