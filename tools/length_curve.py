"""Exact match and token accuracy against source length, with and without attention, on
digit reversal (lengths 5-40): trains `specs/reverse_attention.yaml` and its fixed-state twin
`specs/parallel_reverse.yaml` side by side (or takes two run folders), decodes a held-out test
set greedily (`--beam K` adds beam search) and writes a PNG, a Markdown table and a JSON.

    OMP_NUM_THREADS=1 python tools/length_curve.py --out runs/length_curve \\
        --png docs/length_curve.png
    python tools/length_curve.py --out runs/length_curve --runs ATT_RUN PLAIN_RUN \\
        --test runs/length_curve/test.tsv

The test strings come from another seed than the training ones, and any that also occurs in
the training file is dropped, so every test source is unseen. Token accuracy is scored as
`seqgraph eval` scores free-running accuracy: over the target's steps, its `<eos>` included;
a step after the output's own `<eos>` (or past the decoding limit) counts as wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import reverse_digits  # noqa: E402

import seqgraph  # noqa: E402
from seqgraph.errors import SeqgraphError  # noqa: E402

MODELS = {  # label: spec; the two differ only in model.attention (and max_len, a check)
    "attention": ROOT / "specs" / "reverse_attention.yaml",
    "no attention": ROOT / "specs" / "parallel_reverse.yaml",
}
EOS = "<eos>"


def bucket_edges(low: int, high: int, width: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) source lengths of each bucket: low..high in steps of width."""
    return [(start, min(start + width - 1, high)) for start in range(low, high + 1, width)]


def score_pair(target: str, output: list[str], limit: int) -> tuple[int, int, bool]:
    """(target steps right, target steps, exact) for one decoded output: the output is
    cut at `<eos>`, so an output shorter than `limit` ended with one."""
    produced = list(output) + ([EOS] if len(output) < limit else [])
    wanted = list(target) + [EOS]
    right = sum(a == b for a, b in zip(produced, wanted))
    return right, len(wanted), produced == wanted


def score_by_length(
    pairs: list[tuple[str, str]], outputs: list[list[str]], edges, limit: int
) -> list[dict]:
    """Per bucket of source length: pairs, exact match and token accuracy."""
    rows = []
    for first, last in edges:
        right = steps = exact = count = 0
        for (source, target), output in zip(pairs, outputs):
            if first <= len(source) <= last:
                r, s, e = score_pair(target, output, limit)
                right, steps, exact, count = right + r, steps + s, exact + e, count + 1
        rows.append(
            {
                "lengths": [first, last],
                "pairs": count,
                "exact_match": exact / count if count else None,
                "token_accuracy": right / steps if steps else None,
            }
        )
    return rows


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """`source<TAB>target` lines of a file."""
    lines = path.read_text().splitlines()
    return [tuple(line.split("\t")[:2]) for line in lines if line.strip()]


def held_out_pairs(low: int, high: int, count: int, seed: int, seen: set[str]) -> list:
    """`count` reversal pairs (or fewer: those whose source is in `seen` are dropped)."""
    drawn = [tuple(line.split("\t")) for line in reverse_digits.pairs(low, high, count, seed)]
    return [pair for pair in drawn if pair[0] not in seen]


def decode(run_dir: Path, pairs: list, limit: int, beam: int) -> list[list[str]]:
    """Each source decoded by the run's best checkpoint: greedy, or beam search of `beam`."""
    predictor = seqgraph.load(run_dir)
    records = predictor.predict([source for source, _ in pairs], length=limit, beam=beam)
    return [record["output"] for record in records]


def train_both(out: Path, data: Path, steps: int) -> dict[str, Path]:
    """Both specs trained at once, one BLAS thread each (a 2-core machine): their run
    folders, after both finished; a failed run stops the tool."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    runs, jobs = {}, []
    for label, spec in MODELS.items():
        runs[label] = out / label.replace(" ", "_")
        command = [sys.executable, "-m", "seqgraph", "run", str(spec), "--data", str(data)]
        command += ["--out", str(runs[label]), "--steps", str(steps)]
        log = open(out / f"{label.replace(' ', '_')}.log", "w")  # noqa: SIM115 (kept open)
        jobs.append((label, subprocess.Popen(command, env=env, stdout=log, stderr=log), log))
    for label, job, log in jobs:
        code = job.wait()
        log.close()
        if code != 0:
            sys.exit(f"error: training '{label}' failed (exit {code}); see {log.name}")
    return runs


def plot(result: dict, path: Path) -> None:
    """Exact match and token accuracy against source length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, rows in result["models"].items():
        middle = [sum(row["lengths"]) / 2 for row in rows]
        for axis, key in zip(axes, ("exact_match", "token_accuracy")):
            axis.plot(middle, [row[key] for row in rows], marker="o", label=label)
    for axis, title in zip(axes, ("exact match", "token accuracy")):
        axis.set(xlabel="source length (digits)", ylabel=title, ylim=(-0.02, 1.02))
        axis.grid(alpha=0.3)
        axis.legend()
    decoding = "greedy" if result["beam"] == 1 else f"beam {result['beam']}"
    figure.suptitle(f"digit reversal, held-out test set, {decoding} decoding")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(result: dict) -> str:
    """The Markdown table: a row per length bucket, exact match and token accuracy."""
    labels = list(result["models"])
    head = ["source length", "pairs"]
    head += [f"exact match, {label}" for label in labels]
    head += [f"token accuracy, {label}" for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = result["models"][labels[0]]
    for index, row in enumerate(first):
        cells = [f"{row['lengths'][0]}–{row['lengths'][1]}", str(row["pairs"])]
        for key in ("exact_match", "token_accuracy"):
            cells += [f"{result['models'][label][index][key]:.3f}" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for data, runs, results")
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("ATTENTION", "NO_ATTENTION"))
    parser.add_argument("--test", type=Path, help="test pairs (default: generated, seed 1)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps each (3000)")
    parser.add_argument("--count", type=int, default=20000, help="training pairs (20000)")
    parser.add_argument("--test-count", type=int, default=1800, help="test pairs (1800)")
    parser.add_argument("--min", type=int, default=5)
    parser.add_argument("--max", type=int, default=40)
    parser.add_argument("--width", type=int, default=4, help="lengths per bucket (4)")
    parser.add_argument("--beam", type=int, default=1, help="1: greedy (default)")
    parser.add_argument("--png", type=Path, help="the plot (default OUT/length_curve.png)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "train.tsv"
    started = time.time()
    if args.runs:
        runs = dict(zip(MODELS, args.runs))
    else:
        data.write_text("\n".join(reverse_digits.pairs(args.min, args.max, args.count, 0)) + "\n")
        runs = train_both(args.out, data, args.steps)
    trained = time.time() - started
    if args.test:
        pairs = read_pairs(args.test)
    else:
        seen = {pair[0] for pair in read_pairs(data)} if data.is_file() else set()
        pairs = held_out_pairs(args.min, args.max, args.test_count, 1, seen)
        (args.out / "test.tsv").write_text("\n".join("\t".join(p) for p in pairs) + "\n")
    limit = args.max + 1  # every target's digits and <eos>
    edges = bucket_edges(args.min, args.max, args.width)
    result = {"beam": args.beam, "test_pairs": len(pairs), "runs": {}, "models": {}}
    for label, run in runs.items():
        outputs = decode(run, pairs, limit, args.beam)
        result["runs"][label] = str(run)
        result["models"][label] = score_by_length(pairs, outputs, edges, limit)
    result["train_seconds"], result["seconds"] = round(trained), round(time.time() - started)
    (args.out / "length_curve.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "length_curve.md").write_text(table(result) + "\n")
    plot(result, args.png or args.out / "length_curve.png")
    print(table(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SeqgraphError as error:  # a bad run folder or file: one line, as the CLI says it
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
