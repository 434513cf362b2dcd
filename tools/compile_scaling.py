"""Compile time against sequence length for a 2-layer LSTM: unroll, then lower to a plan.

python tools/compile_scaling.py [T ...]     (default: 100 1000 10000)

Wall and CPU seconds (this process's): on a machine shared with other jobs the wall time
also counts the time they held the cores, the CPU time far less of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import array_api_compat.numpy as xp  # noqa: E402

from seqgraph.plan.lower import Plan  # noqa: E402
from seqgraph.runtime import batch as batching  # noqa: E402
from seqgraph.spec.load import load_spec  # noqa: E402
from seqgraph.spec.unroll import compile_graph  # noqa: E402

SPEC = {
    "model": {
        "pattern": "many_to_many",
        "input": {"type": "vectors", "size": 32},
        "target": {"type": "ids", "vocab": 32},
        "layers": [{"cell": "lstm", "hidden": 64}] * 2,
    }
}


def steps_count(text: str) -> int:
    """A sequence length for argparse: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} steps: give 1 or more")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="*", type=steps_count, metavar="T", help="lengths")
    argv = parser.parse_args(argv).steps
    spec = load_spec(SPEC)
    print(
        f"{'T':>6} {'nodes':>8} {'unroll s':>9} {'plan s':>8} {'kernels':>8} {'steps/s':>9} "
        f"{'unroll cpu':>10} {'plan cpu':>9}"
    )
    for steps in argv or [100, 1000, 10000]:
        start, cpu_start = time.perf_counter(), time.process_time()
        graph = compile_graph(spec, steps)
        unrolled, cpu_unrolled = time.perf_counter(), time.process_time()
        feeds = batching.feeds(spec, graph, batching.dummy(spec, 16, steps))
        meta = {
            k: (v.shape, np.dtype("float32") if v.dtype.kind == "f" else v.dtype)
            for k, v in feeds.items()
        }
        plan = Plan(graph, meta, xp, "numpy", "float32", full=True)
        done, cpu_done = time.perf_counter(), time.process_time()
        kernels = len(plan.forward_kernels) + len(plan.backward_kernels)
        print(
            f"{steps:6d} {graph.nx.number_of_nodes():8d} {unrolled - start:9.3f} "
            f"{done - unrolled:8.3f} {kernels:8d} {steps / (done - start):9.0f} "
            f"{cpu_unrolled - cpu_start:10.3f} {cpu_done - cpu_unrolled:9.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
