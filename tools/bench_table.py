"""The README's speed table from `tools/bench.py --json` files (one or more), with the machine
each number comes from named above it.

    python tools/bench_table.py FILE.json [FILE.json ...]

Prints, per distinct machine, one line naming it (CPU model, cores, BLAS and its threads,
library versions and thread counts, date, GEMM peak, the harness's settings), then one
Markdown row per config: for each cell, the median ms per step of seqgraph / torch / jax /
hand NumPy, and the ratio seqgraph / fastest peer (bold when <= 1); with `bench.py --before`,
seqgraph's before and after with their ratios; last, the harness's check, harness / alone per
implementation. A file of the old harness (a bare list of records) has no
machine facts and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

IMPLS = ("seqgraph", "torch", "jax", "numpy_hand")
BEFORE = "seqgraph_before"  # bench.py --before TREE
CELLS = ("rnn", "gru", "lstm")
CONFIGS = ("tiny", "small", "medium", "large", "long")


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def table(records: list[dict]) -> str:
    ms = {(r["config"], r["cell"], r["impl"]): r["ms_median"] for r in records}
    names = [c.upper() for c in CELLS]
    head = "| config | " + " | ".join(f"{n}: seqgraph / torch / jax / hand | ratio" for n in names)
    lines = [head + " |", "|---" * (1 + 2 * len(CELLS)) + "|"]
    for config in CONFIGS:
        if not any(key[0] == config for key in ms):
            continue
        cells = []
        for cell in CELLS:
            times = [ms.get((config, cell, impl)) for impl in IMPLS]
            peers = [t for t in times[1:] if t is not None]
            ratio = times[0] / min(peers) if times[0] and peers else None
            text = " / ".join("–" if t is None else _ms(t) for t in times)
            mark = "" if ratio is None else f"{ratio:.2f}"
            cells += [text, f"**{mark}**" if ratio is not None and ratio <= 1 else mark]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(report: dict) -> str:
    """One sentence naming where and how a report was measured."""
    if "machine" not in report:
        return "an old-harness file: no machine recorded"
    m, libraries = report["machine"], report.get("libraries", {})
    cpu, blas = m["cpu"], m.get("blas", {})
    pools = [
        f"{p['internal_api']} "
        + (f"{p['architecture']} kernels, " if p.get("architecture") else "")
        + f"{p['num_threads']} threads"
        for p in m.get("pools", [])
    ]
    parts = [
        f"{cpu['model']} (family {cpu['family']} model {cpu['model_number']}, "
        f"{cpu['usable_cpus']} cores{', virtualised' if cpu['virtualised'] else ''})",
        f"{m['date']}",
        f"Python {m['python']}, NumPy {m.get('numpy')} with {blas.get('name')} "
        f"{blas.get('version')} ({', '.join(pools)})",
    ]
    if "torch" in libraries:
        t = libraries["torch"]
        onednn = (t.get("onednn") or "oneDNN ?").split(" (")[0].replace("Intel(R) ", "")
        parts.append(f"PyTorch {t['torch']} ({onednn}, {t['num_threads']} threads)")
    if "jax" in libraries:
        j = libraries["jax"]
        parts.append(
            f"JAX {j['jax']} / jaxlib {j['jaxlib']} (XLA_FLAGS {j['xla_flags'] or 'unset'})"
        )
    h = report.get("harness", {})
    parts.append(
        f"float32 GEMM peak {m.get('gemm_peak_gflops', 0):.0f} GFLOP/s; {h.get('rounds')} rounds, "
        f"samples >= {h.get('min_sample_s')} s, pause {h.get('pause_s')} s; "
        f"load average {m['load_average']} -> {m.get('load_average_end')}"
    )
    return "; ".join(parts)


def before_after(records: list[dict]) -> str | None:
    """With `bench.py --before TREE`: per config and cell, seqgraph's ms and its ratio to the
    fastest peer before and after, all from the same interleaved rounds."""
    ms = {(r["config"], r["cell"], r["impl"]): r["ms_median"] for r in records}
    if not any(key[2] == BEFORE for key in ms):
        return None
    head = "| config | " + " | ".join(f"{c.upper()}: before / after ms | ratio" for c in CELLS)
    lines = [head + " |", "|---" * (1 + 2 * len(CELLS)) + "|"]
    for config in CONFIGS:
        cells = []
        for cell in CELLS:
            before, after = ms.get((config, cell, BEFORE)), ms.get((config, cell, "seqgraph"))
            peers = [ms[(config, cell, i)] for i in IMPLS[1:] if (config, cell, i) in ms]
            if before is None or after is None or not peers:
                cells += ["–", "–"]
                continue
            fastest = min(peers)
            cells += [
                f"{_ms(before)} / {_ms(after)}",
                f"{before / fastest:.2f} → {after / fastest:.2f}",
            ]
        if any(c != "–" for c in cells):
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def alone_line(records: list[dict]) -> str | None:
    ratios: dict[str, list[float]] = {}
    for r in records:
        if "harness_over_alone" in r:
            ratios.setdefault(r["impl"], []).append(r["harness_over_alone"])
    if not ratios:
        return None
    parts = [
        f"{impl} {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})"
        for impl, v in ratios.items()
    ]
    return "Harness / timed alone in a plain loop, median (range): " + ", ".join(parts) + "."


class ReportError(Exception):
    """A file that is not a `tools/bench.py --json` report: one line naming it."""


def load(name: str) -> dict:
    """A report; an old harness's file (a bare list of records) becomes one without facts."""
    try:
        data = json.loads(Path(name).read_text())
    except OSError as error:
        raise ReportError(f"{name}: cannot read it ({error.strerror or error})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{name}: not JSON ({error}); give a file of bench.py --json") from error
    report = {"records": data} if isinstance(data, list) else data
    records = report.get("records") if isinstance(report, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"config", "cell"} <= r.keys() for r in records
    ):
        raise ReportError(f"{name}: no timing records in it; give a file of bench.py --json")
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", metavar="FILE.json", help="bench.py --json files")
    args = parser.parse_args(argv)
    try:
        reports = [load(name) for name in args.reports]
    except ReportError as error:
        print(f"bench_table: {error}", file=sys.stderr)
        return 2
    described: dict[str, list[str]] = {}
    for report in reports:
        configs = sorted({r["config"] for r in report["records"]}, key=CONFIGS.index)
        described.setdefault(machine(report), []).extend(configs)
    for text, configs in described.items():
        print(f"{', '.join(configs)}: {text}.\n")
    records = [r for report in reports for r in report["records"]]
    print(table(records))
    compared = before_after(records)
    if compared:
        print(f"\nseqgraph before and after (ratio = seqgraph / fastest peer):\n\n{compared}")
    check = alone_line(records)
    if check:
        print(f"\n{check}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
