"""Time one training step of two versions of seqgraph against each other (before / after).

Each version runs in its own long-lived worker process, importing seqgraph from its own
source tree (a git work tree of any revision), so neither shares a thread pool, an import
or an allocator with the other. A worker builds tools/bench_peers.py's benchmark model through
the public API only (`Model(spec).loss_and_grads(batch)`, unchanged across versions); the
timing is tools/harness.py's, as for tools/bench.py: warm-up to a steady state, samples of at
least `--min-sample` seconds of back-to-back steps, rounds interleaved in a fresh random order
with a `--pause` before each sample, and afterwards each version timed alone in a fresh
process with a plain loop, as the check on the harness.

    python tools/bench_versions.py BEFORE_TREE AFTER_TREE [--config NAME]... [--cell C]...
        [--rounds N] [--min-sample S] [--pause S] [--json FILE]

Make a tree for a revision with `git worktree add /tmp/before <commit>`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import bench_peers
import harness
from bench_peers import CELLS, CONFIGS


def compare(trees: dict, cell: str, config: str, args, rng: random.Random) -> dict:
    def argv(mode: str, tree: str) -> list[str]:
        return bench_peers.job_argv(
            mode, "seqgraph", cell, config, tree=tree, min_sample=args.min_sample
        )

    workers = [harness.Worker(name, argv("serve", tree), cwd=tree) for name, tree in trees.items()]
    times = harness.interleave(workers, args.rounds, rng, args.pause)
    for worker in workers:
        worker.close()
    alone = {name: harness.one_shot(argv("alone", tree), cwd=tree) for name, tree in trees.items()}
    summaries = {name: harness.summarize(samples) for name, samples in times.items()}
    return {
        "cell": cell,
        "config": config,
        "median_s": {name: s["median_s"] for name, s in summaries.items()},
        "min_s": {name: s["min_s"] for name, s in summaries.items()},
        "spread": {name: s["spread"] for name, s in summaries.items()},
        "samples_s": times,
        "alone_s": {name: a["median_s"] for name, a in alone.items()},
        "loss": {w.name: w.ready["loss"] for w in workers},
        "facts": {w.name: w.ready["facts"] for w in workers},
    }


def facts_line(facts: dict) -> str:
    """Each tree's revision, NumPy and BLAS thread pools, as its worker saw them."""
    parts = []
    for name, f in facts.items():
        pools = ", ".join(
            f"{p['internal_api']} {p['version']} x{p['num_threads']}" for p in f["pools"]
        )
        parts.append(f"{name} {f['revision']}: NumPy {f['numpy']['numpy']}, {pools}")
    return "# " + "; ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--config", action="append", choices=list(CONFIGS))
    parser.add_argument("--cell", action="append", choices=list(CELLS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-sample", type=float, default=0.25)
    parser.add_argument("--pause", type=float, default=harness.PAUSE_S)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    rng = random.Random(0)
    machine = harness.host_facts()
    cpu = machine["cpu"]
    print(f"# {cpu['model']} ({cpu['usable_cpus']} cores usable); Python {machine['python']}")
    print("config cell   before ms  after ms  after/before  (alone: before / after ms)  same loss")
    records = []
    for config in args.config or ["tiny", "small", "medium", "long"]:
        for cell in args.cell or list(CELLS):
            r = compare(trees, cell, config, args, rng)
            m, a = r["median_s"], r["alone_s"]
            same = r["loss"]["before"] == r["loss"]["after"]
            print(
                f"{config:6} {cell:5} {1e3 * m['before']:9.3f} {1e3 * m['after']:9.3f} "
                f"{m['after'] / m['before']:13.3f}  ({1e3 * a['before']:.3f} / "
                f"{1e3 * a['after']:.3f})  {same}",
                flush=True,
            )
            if not records:
                print(facts_line(r["facts"]))
            records.append(r)
    machine["load_average_end"] = harness.load_average()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
