"""K-fold cross-validation of a spec whose data source takes `split: mod10` and `fold`.

    python tools/cross_validate.py SPEC --data PATH [--folds 10] [--jobs 2] [--out DIR]

Trains the spec once per fold (`data.fold = k`: fold k tests the lines with i % 10 ==
(9 + k) % 10 and validates on the tenth below them), each in its own `seqgraph run` process,
then scores each run's kept checkpoint (`best.npz` when early stopping or validation wrote
one) on its validation and test tenths with `seqgraph eval --json`. Prints a row per fold and
the mean and standard deviation over folds, and writes them to DIR/cv.json. This is how Kim
2014 reports rt-polarity (10-fold cross-validation), and it averages the ±0.013 that one
1,066-sentence test tenth carries alone.

With --jobs N > 1 the folds run N at a time, each with one BLAS thread (OPENBLAS_NUM_THREADS=1
and OMP_NUM_THREADS=1), so they do not fight over the cores; a fold's numbers then depend
only on its seed and its data, as with one job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def fold_spec(spec: dict, fold: int) -> dict:
    """The spec with data.fold set and the run named after its fold."""
    data = {**spec.get("data", {}), "split": "mod10", "fold": fold}
    return {**spec, "name": f"{spec.get('name', 'cv')}_fold{fold}", "data": data}


def seqgraph(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seqgraph", *args],
        env=env,
        capture_output=True,
        text=True,
    )


def failed(fold: int, command: str, done: subprocess.CompletedProcess):
    """Stop with seqgraph's own last line (its one-line error) and its exit code (2 for bad
    input), naming the fold."""
    lines = done.stderr.strip().splitlines() or ["(no message)"]
    print(f"error: fold {fold}: seqgraph {command}: {lines[-1]}", file=sys.stderr)
    raise SystemExit(done.returncode)


def run_fold(spec: dict, fold: int, data: str | None, out: Path, env: dict) -> dict:
    spec_file = out / "specs" / f"fold{fold}.yaml"
    spec_file.write_text(yaml.safe_dump(fold_spec(spec, fold), sort_keys=False))
    run_dir = out / f"fold{fold}"
    train = ["run", str(spec_file), "--out", str(run_dir)] + (["--data", data] if data else [])
    done = seqgraph(train, env)
    if done.returncode != 0:
        failed(fold, "run", done)
    row = {"fold": fold, "run_dir": str(run_dir)}
    for split in ("valid", "test"):
        scored = seqgraph(["eval", str(run_dir), "--split", split, "--json"], env)
        if scored.returncode != 0:
            failed(fold, "eval", scored)
        report = json.loads(scored.stdout)
        row[f"{split}_accuracy"] = report["accuracy"]
        row["step"], row["checkpoint"] = report["step"], report["checkpoint"]
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for split in ("valid", "test"):
        values = [row[f"{split}_accuracy"] for row in rows]
        out[split] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--data", help="data folder or file (as `seqgraph run --data`)")
    parser.add_argument("--folds", type=int, default=10, help="folds to run, 0..N-1 (<= 10)")
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at once")
    parser.add_argument("--out", default=None, help="folder (default runs/cv_NAME)")
    args = parser.parse_args(argv)
    if not 1 <= args.folds <= 10 or args.jobs < 1:
        parser.error("--folds must be 1..10 and --jobs at least 1")
    try:
        spec = yaml.safe_load(Path(args.spec).read_text())
    except (OSError, yaml.YAMLError) as problem:
        parser.error(
            f"{args.spec}: cannot read the spec ({type(problem).__name__}); give a YAML spec"
        )
    if not isinstance(spec, dict) or "data" not in spec:
        parser.error(f"{args.spec}: the spec has no data section to fold")
    out = Path(args.out or f"runs/cv_{spec.get('name', Path(args.spec).stem)}").resolve()
    (out / "specs").mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve()) if args.data else None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.jobs > 1:
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda k: run_fold(spec, k, data, out, env), range(args.folds)))
    result = {"spec": str(Path(args.spec).resolve()), "folds": rows, **summary(rows)}
    (out / "cv.json").write_text(json.dumps(result, indent=1))
    print("fold  step  valid   test")
    for row in rows:
        valid, test = row["valid_accuracy"], row["test_accuracy"]
        print(f"{row['fold']:4}  {row['step']:4}  {valid:.4f}  {test:.4f}")
    for split in ("valid", "test"):
        print(f"{split}: mean {result[split]['mean']:.4f}, std {result[split]['std']:.4f}")
    print(f"wrote {out / 'cv.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
