"""Time one training step of two versions of seqgraph against each other (before / after).

Each version runs in its own long-lived worker process, importing seqgraph from its own
source tree (a git work tree of any revision), so neither shares a thread pool, an import
or an allocator with the other. A worker builds the benchmark model of `tools/bench.py`
(one layer, per-step softmax cross-entropy on a linear readout, float32) through the public
API only (`Model(spec).loss_and_grads(batch)`, unchanged across versions), warms up, and
fixes how many back-to-back steps make one sample of at least `--min-sample` seconds.
Rounds are interleaved: each round asks every worker for one sample, in a fresh random
order; a worker waits idle, blocked on a pipe, while the other runs. Before each sample the
driver pauses (`--pause`, 0.2 s): OpenBLAS's threads spin for a while after their last call
before they sleep, and in the worker that just finished they would take the cores from the
next one's first steps (without the pause, medium LSTM samples ran 20 % slower than the same
worker timed alone). After
the rounds, each worker is timed alone (the other one stopped), which checks that the
harness did not distort what it measured.

    python tools/bench_versions.py BEFORE_TREE AFTER_TREE [--config NAME]... [--cell C]...
        [--rounds N] [--min-sample S] [--pause S] [--json FILE]

Make a tree for a revision with `git worktree add /tmp/before <commit>`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (B, T, input, hidden, classes), as in tools/bench.py; copied, not imported: bench.py imports
# seqgraph at its top, which in a worker would load this tree's seqgraph, not the one under test
CONFIGS = {
    "tiny": (1, 25, 65, 100, 65),
    "small": (32, 50, 64, 128, 64),
    "medium": (64, 100, 128, 256, 128),
    "large": (128, 100, 512, 1024, 512),
    "long": (16, 1000, 32, 64, 32),
}
CELLS = ("rnn", "gru", "lstm")


def worker(tree: str, cell: str, config: str, min_sample: float) -> None:
    """Serve samples on stdin/stdout: a line `sample` -> seconds per step of one sample."""
    sys.path.insert(0, tree)
    import numpy as np

    from seqgraph import Model

    B, T, n_in, H, C = CONFIGS[config]
    spec = {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": n_in},
            "target": {"type": "ids", "vocab": C},
            "layers": [{"cell": cell, "hidden": H}],
        }
    }
    model = Model(spec, backend="numpy", dtype="float32")
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.standard_normal((B, T, n_in)).astype(np.float32),
        "y": rng.integers(0, C, size=(B, T)),
    }
    loss = None
    for _ in range(3):  # warm up: the plan compiles and its buffers are allocated
        loss, _ = model.loss_and_grads(batch)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < min_sample:
        model.loss_and_grads(batch)
        n += 1
    print(json.dumps({"steps": n, "loss": float(loss)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "sample":
            break
        start = time.perf_counter()
        for _ in range(n):
            model.loss_and_grads(batch)
        print((time.perf_counter() - start) / n, flush=True)


class Worker:
    def __init__(self, tree: str, cell: str, config: str, min_sample: float):
        cmd = [sys.executable, __file__, "--worker", tree, cell, config, str(min_sample)]
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree
        )
        self.ready = json.loads(self.process.stdout.readline())

    def sample(self) -> float:
        self.process.stdin.write("sample\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def machine() -> dict:
    import numpy as np

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [
            f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
            for i in threadpool_info()
        ]
    except ImportError:
        pass
    return {"cpu": cpu, "python": platform.python_version(), "numpy": np.__version__, "blas": blas}


def compare(trees, cell, config, rounds, min_sample, rng, pause) -> dict:
    workers = {name: Worker(tree, cell, config, min_sample) for name, tree in trees.items()}
    losses = {name: w.ready["loss"] for name, w in workers.items()}
    times = {name: [] for name in workers}
    for _ in range(rounds):
        for name in rng.permutation(list(workers)):
            time.sleep(pause)
            times[name].append(workers[name].sample())
    for w in workers.values():
        w.close()
    alone = {}
    for name, tree in trees.items():  # each one again in a fresh process, with no other alive
        solo = Worker(tree, cell, config, min_sample)
        alone[name] = statistics.median(solo.sample() for _ in range(3))
        solo.close()
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "cell": cell,
        "config": config,
        "median_s": median,
        "min_s": {name: min(ts) for name, ts in times.items()},
        "alone_s": alone,
        "loss": losses,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--config", action="append", choices=list(CONFIGS))
    parser.add_argument("--cell", action="append", choices=list(CELLS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-sample", type=float, default=0.25)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import numpy as np

    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    rng = np.random.default_rng(0)
    info = machine()
    print(f"# {info['cpu']}; Python {info['python']}, NumPy {info['numpy']}; {info['blas']}")
    print("config cell   before ms  after ms  after/before  (alone: before / after ms)  same loss")
    records = []
    for config in args.config or ["tiny", "small", "medium", "long"]:
        for cell in args.cell or list(CELLS):
            r = compare(trees, cell, config, args.rounds, args.min_sample, rng, args.pause)
            m, a = r["median_s"], r["alone_s"]
            same = r["loss"]["before"] == r["loss"]["after"]
            print(
                f"{config:6} {cell:5} {1e3 * m['before']:9.3f} {1e3 * m['after']:9.3f} "
                f"{m['after'] / m['before']:13.3f}  ({1e3 * a['before']:.3f} / "
                f"{1e3 * a['after']:.3f})  {same}",
                flush=True,
            )
            records.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        sys.exit(main())
