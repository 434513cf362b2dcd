"""Time one training step of seqgraph against its peers, each in its own process.

The step and the peers (PyTorch, JAX, hand-written NumPy) are tools/bench_peers.py's; the
timing is tools/harness.py's: for each (config, cell), one long-lived worker process per
implementation, warmed up to a steady state, samples of back-to-back steps lasting at least
`--min-sample` seconds, rounds interleaved across the workers in a random order with a pause
before each sample; then each implementation timed again alone, in a fresh process with a
plain loop, as the check that the harness measured what a user would (`harness/alone`). The
report gives the median, min and interquartile spread over rounds, seqgraph / peer, and
GFLOP/s against this machine's float32 GEMM peak (measured by NumPy in its own process).
The JSON records the machine (CPU model, cores, BLAS and thread counts, library versions),
every sample, and the check; `tools/bench_table.py` turns it into README's table.

    python tools/bench.py [--config NAME]... [--cell rnn|gru|lstm]... [--impl NAME]...
        [--backend numpy|cupy] [--rounds N] [--min-sample S] [--pause S]
        [--alone NAME|none]... [--json FILE] [--memory]

Without --config: tiny, small, medium and long (about 15 minutes on two cores with the
defaults; it prints its estimate first); time large on its own (`--config large --rounds 5`).
`--memory` measures peak memory instead of time (medium unless --config says otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

import bench_peers
import harness
from bench_peers import CELLS, CONFIGS, IMPLS

DEFAULT_CONFIGS = ("tiny", "small", "medium", "long")
ROUNDS = 15
# a rough guess for the estimate: a process's imports and building its step, and a step at
# this share of the GEMM peak (medium LSTM: 0.14 s guessed, 0.14 to 0.22 s measured;
# large: 4.6 s guessed, 3.0 to 4.1 s measured)
IMPORT_S, PEAK_SHARE = 2.5, 0.6


def estimate(group: tuple[str, str], impls, args, peak_gflops: float) -> float:
    """Seconds one (config, cell) group should take: start-ups, rounds, checks alone."""
    config, cell = group
    step = bench_peers.step_flops(cell, config) / (PEAK_SHARE * peak_gflops * 1e9)
    sample = math.ceil(args.min_sample / step) * step
    chunk = max(args.min_sample / 2, step)
    start = IMPORT_S + 2 * step + 2 * chunk  # two first steps, two warm-up chunks that agree
    alone = IMPORT_S + step + max(1.0, 2 * chunk) + harness.ALONE_SAMPLES * sample
    checked = sum(impl in args.alone for impl in impls)
    return len(impls) * (start + args.rounds * (args.pause + sample)) + checked * alone


def initial_weights(cell: str, config: str, impls, args, folder: str) -> str | None:
    """seqgraph's initial weights in a file, for the peers that start from them."""
    if args.backend != "numpy" or not set(impls) & set(bench_peers.NEEDS_PARAMS):
        return None
    path = str(Path(folder) / f"{config}-{cell}.npz")
    harness.one_shot([bench_peers.__file__, "params", cell, config, path])
    return path


BEFORE = "seqgraph_before"  # --before TREE: seqgraph of another revision, as one more worker


def worker_argv(mode: str, impl: str, cell, config, args, params) -> tuple[list[str], str | None]:
    """(argv, working folder) of `impl`'s worker; seqgraph_before imports --before's tree."""
    tree = args.before if impl == BEFORE else None
    argv = bench_peers.job_argv(
        mode,
        "seqgraph" if impl == BEFORE else impl,
        cell,
        config,
        args.backend,
        params,
        min_sample=args.min_sample,
        tree=tree,
    )
    return argv, tree


def start_workers(cell, config, impls, args, params) -> tuple[list, dict]:
    """One worker per implementation, started one after another (each warms up alone)."""
    workers, unavailable = [], {}
    for impl in impls:
        argv, tree = worker_argv("serve", impl, cell, config, args, params)
        worker = harness.Worker(impl, argv, cwd=tree)
        if worker.available:
            workers.append(worker)
        else:
            worker.close()
            unavailable[impl] = worker.ready["unavailable"]
    return workers, unavailable


def time_group(cell: str, config: str, impls, args, folder: str, rng) -> dict:
    """Interleaved rounds of every implementation on one (config, cell), then each alone."""
    params = initial_weights(cell, config, impls, args, folder)
    workers, unavailable = start_workers(cell, config, impls, args, params)
    times = harness.interleave(workers, args.rounds, rng, args.pause)
    for worker in workers:
        worker.close()  # the check alone runs with no other worker alive
    records = []
    for worker in workers:
        record = {"config": config, "cell": cell, "impl": worker.name}
        record.update(_record(times[worker.name], worker.ready, cell, config))
        if worker.name in args.alone:
            argv, tree = worker_argv("alone", worker.name, cell, config, args, params)
            alone = harness.one_shot(argv, cwd=tree)
            record["alone_ms"] = 1e3 * alone["median_s"]
            record["alone_samples_ms"] = [1e3 * s for s in alone["samples_s"]]
            record["harness_over_alone"] = record["ms_median"] / record["alone_ms"]
        records.append(record)
    facts = {w.name: w.ready["facts"] for w in workers}
    return {"records": records, "facts": facts, "unavailable": unavailable}


def _record(samples: list[float], ready: dict, cell: str, config: str) -> dict:
    summary = harness.summarize(samples)
    return {
        "ms_median": 1e3 * summary["median_s"],
        "ms_min": 1e3 * summary["min_s"],
        "ms_q1": 1e3 * summary["q1_s"],
        "ms_q3": 1e3 * summary["q3_s"],
        "spread": summary["spread"],
        "gflops": bench_peers.step_flops(cell, config) / summary["median_s"] / 1e9,
        "samples_ms": [1e3 * s for s in samples],
        "steps_per_sample": ready["steps_per_sample"],
        "start_s": ready["start_s"],
        "warm_up_s": ready["warm_up_s"],
        "steady": ready["steady"],
        "loss": ready["loss"],
    }


HEADER = (
    f"{'config':7} {'cell':5} {'impl':15} {'ms_med':>9} {'ms_min':>9} {'spread':>7} "
    f"{'sg/impl':>7} {'GFLOP/s':>8} {'%peak':>6} {'alone ms':>9} {'harn/alone':>10}"
)


def row(record: dict, seqgraph_ms: float | None, peak: float) -> str:
    ratio = f"{seqgraph_ms / record['ms_median']:7.2f}" if seqgraph_ms else f"{'':7}"
    alone = (
        f"{record['alone_ms']:9.3f} {record['harness_over_alone']:10.3f}"
        if "alone_ms" in record
        else ""
    )
    return (
        f"{record['config']:7} {record['cell']:5} {record['impl']:15} "
        f"{record['ms_median']:9.3f} {record['ms_min']:9.3f} {100 * record['spread']:6.1f}% "
        f"{ratio} {record['gflops']:8.1f} {100 * record['gflops'] / peak:6.1f} {alone}"
        + ("" if record["steady"] else "  (warm-up not steady)")
    )


def alone_check(records: list[dict]) -> list[str]:
    """One line per implementation: harness/alone ratios, and where one leaves the noise
    (further from 1 than the harness samples' interquartile spread or the alone samples')."""
    lines = []
    for impl in (*IMPLS, BEFORE):
        checked = [r for r in records if r["impl"] == impl and "alone_ms" in r]
        if not checked:
            continue
        ratios = [r["harness_over_alone"] for r in checked]
        outside = [
            f"{r['config']} {r['cell']} {r['harness_over_alone']:.3f}"
            for r in checked
            if abs(r["harness_over_alone"] - 1) > max(r["spread"], _spread(r["alone_samples_ms"]))
        ]
        lines.append(
            f"harness/alone {impl}: median {statistics.median(ratios):.3f}, "
            f"{min(ratios):.3f}..{max(ratios):.3f} over {len(ratios)}; "
            + (f"beyond the spread: {', '.join(outside)}" if outside else "all within the spread")
        )
    return lines


def _spread(samples: list[float]) -> float:
    return harness.summarize(samples)["spread"]


def memory(configs, cells, impls, args, folder: str) -> list[dict]:
    """Peak memory above the imports of building and running two steps, each in its process."""
    records = []
    for config in configs:
        for cell in cells:
            params = initial_weights(cell, config, impls, args, folder)
            for impl in impls:
                argv, tree = worker_argv("memory", impl, cell, config, args, params)
                result = harness.one_shot(argv, cwd=tree)
                if "mib" in result:
                    print(
                        f"peak memory {config} {cell} {impl}: {result['mib']:.1f} MiB", flush=True
                    )
                    records.append({"config": config, "cell": cell, "impl": impl, **result})
    return records


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=list(CONFIGS))
    parser.add_argument("--cell", action="append", choices=list(CELLS))
    parser.add_argument("--impl", action="append", choices=list(IMPLS))
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--rounds", type=_positive(int), default=ROUNDS)
    parser.add_argument("--min-sample", type=_positive(float), default=harness.MIN_SAMPLE_S)
    parser.add_argument("--pause", type=float, default=harness.PAUSE_S)
    parser.add_argument(
        "--alone",
        action="append",
        choices=[*IMPLS, "none"],
        help="implementations to time alone afterwards (default: all)",
    )
    parser.add_argument("--json")
    parser.add_argument("--memory", action="store_true", help="peak memory instead of time")
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also time seqgraph from this source tree (`git worktree add TREE REV`) as "
        f"'{BEFORE}', interleaved with the rest: the table before and after in one run",
    )
    args = parser.parse_args(argv)
    args.alone = set(IMPLS) if args.alone is None else set(args.alone) - {"none"}
    if args.before:
        if not (Path(args.before) / "seqgraph" / "__init__.py").is_file():
            parser.error(f"--before {args.before}: no seqgraph package there; pass a source tree")
        args.before = str(Path(args.before).resolve())
        if "seqgraph" in args.alone:
            args.alone.add(BEFORE)
    return args


def _positive(kind):
    def read(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return read


def main(argv=None) -> int:
    args = parse(argv)
    impls = (args.impl or list(IMPLS)) + ([BEFORE] if args.before else [])
    cells = args.cell or list(CELLS)
    report = {"machine": harness.host_facts(), "libraries": {}, "unavailable": {}}
    status = 0
    try:
        with tempfile.TemporaryDirectory() as folder:
            if args.memory:
                report["memory"] = memory(args.config or ["medium"], cells, impls, args, folder)
            else:
                _time(args, impls, cells, folder, report)
    except RuntimeError as error:  # a worker died: say which, keep the groups timed so far
        print(f"bench: {error}", file=sys.stderr)
        status = 1
    report["machine"]["load_average_end"] = harness.load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return status


def _time(args, impls, cells, folder, report) -> None:
    peak = harness.one_shot([bench_peers.__file__, "peak", args.backend])
    report["machine"]["gemm_peak_gflops"] = peak.pop("gflops")
    report["machine"].update(peak)
    report["harness"] = {
        "rounds": args.rounds,
        "min_sample_s": args.min_sample,
        "pause_s": args.pause,
        "backend": args.backend,
    }
    gflops = report["machine"]["gemm_peak_gflops"]
    print(machine_line(report["machine"]))
    groups = [(c, cell) for c in args.config or DEFAULT_CONFIGS for cell in cells]
    estimates = [estimate(group, impls, args, gflops) for group in groups]
    print(
        f"float32 GEMM peak ({args.backend}): {gflops:.1f} GFLOP/s; "
        f"{len(groups)} groups x {len(impls)} workers, {args.rounds} rounds: "
        f"estimated {harness.duration(sum(estimates))}"
    )
    print(HEADER, flush=True)
    progress, rng, records = harness.Progress(estimates), random.Random(0), []
    report["records"] = records  # filled group by group: a worker that dies loses no other
    for config, cell in groups:
        group = time_group(cell, config, impls, args, folder, rng)
        ours = next((r["ms_median"] for r in group["records"] if r["impl"] == "seqgraph"), None)
        for record in group["records"]:
            print(row(record, None if record["impl"] == "seqgraph" else ours, gflops))
        for impl, reason in group["unavailable"].items():
            print(f"{config:7} {cell:5} {impl:15} skipped: {reason}")
        print(progress.finished_one(), flush=True)
        records += group["records"]
        for impl, facts in group["facts"].items():
            report["libraries"].setdefault(impl, facts)
        report["unavailable"].update(group["unavailable"])
    for line in alone_check(records):
        print(line)


def machine_line(machine: dict) -> str:
    cpu, blas = machine["cpu"], machine.get("blas", {})
    threads = [
        f"{p['internal_api']} {p['num_threads']} ({p.get('architecture')} kernels)"
        for p in machine.get("pools", [])
    ]
    return (
        f"# {cpu['model']} ({cpu['usable_cpus']} cores usable), Python {machine['python']}, "
        f"NumPy {machine.get('numpy')} with {blas.get('name')} {blas.get('version')} "
        f"(threads: {', '.join(threads) or 'unknown'}), load {machine['load_average']}"
    ) + forced_kernels_line(machine.get("environment", {}))


def forced_kernels_line(environment: dict) -> str:
    """A warning when the environment pins OpenBLAS's kernels: then NumPy (seqgraph and the
    hand-written peer) may run older kernels than this CPU's, while torch and JAX do not."""
    forced = {
        k: v for k, v in environment.items() if k.startswith("OPENBLAS_") and "THREADS" not in k
    }
    if not any(v is not None for v in forced.values()):
        return ""
    pinned = ", ".join(f"{k}={v}" for k, v in forced.items() if v is not None)
    return (
        f"\n# {pinned} pins OpenBLAS's kernels for NumPy; to time what a current NumPy runs "
        "here, unset them for this command alone: "
        "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench.py ..."
    )


if __name__ == "__main__":
    sys.exit(main())
