"""What the comparison and the report read from a run folder: its records (metrics.jsonl),
its spec as run, and the final and best value of each metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqgraph.errors import DataError
from seqgraph.train import run_folder

LOWER_IS_BETTER = ("loss", "cer", "wer", "perplexity")


@dataclass
class RunRecords:
    """One run folder read back: records by kind, its spec, its label in plots and tables."""

    run_dir: Path
    records: list[dict]
    spec: dict
    label: str
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.train = [r for r in self.records if r.get("kind") == "train"]
        self.valid = [r for r in self.records if r.get("kind") == "valid"]

    def seconds(self, record: dict) -> float | None:
        """Wall time of `record` since the run's first record (None in folders written
        before records carried their time)."""
        start = next((r["time"] for r in self.records if "time" in r), None)
        return None if start is None or "time" not in record else record["time"] - start

    def summary(self) -> dict:
        """Steps, wall time, final train loss, and the final and best of each validation
        number (best by its direction, with the step it was reached)."""
        out = {"steps": max((r.get("step", 0) for r in self.records), default=0)}
        timed = [r for r in self.records if "time" in r]
        if timed:
            out["wall_s"] = self.seconds(timed[-1])
        if self.train:
            out["final loss"] = self.train[-1]["loss"]
        names = [k for r in self.valid for k, v in r.items() if _is_score(k, v)]
        for name in dict.fromkeys(names):
            points = [(r["step"], r[name]) for r in self.valid if name in r]
            lower = name.endswith(LOWER_IS_BETTER)
            step, best = (min if lower else max)(points, key=lambda p: p[1])
            out[f"final {name}"] = points[-1][1]
            out[f"best {name}"] = best
            out[f"best {name} step"] = step
        return out


def _is_score(key: str, value) -> bool:
    skip = ("step", "time", "tokens", "batches", "sequences")
    return key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(run_dir) -> RunRecords:
    """A run folder's records and spec; DataError naming the folder if it is not a run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such folder; pass the --out folder of a `seqgraph run`")
    records = run_folder.read_metrics(run_dir)
    spec = run_folder.read_run_spec(run_dir) or {}
    return RunRecords(run_dir, records, spec, run_dir.name)


def flatten(value, prefix: str = "") -> dict:
    """A spec as {yaml path: leaf value} (`model.layers[0].hidden: 48`), iteratively."""
    out, stack = {}, [(prefix, value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict) and node:
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        elif isinstance(node, list) and node and any(isinstance(v, (dict, list)) for v in node):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            out[path] = node
    return dict(sorted(out.items()))


def spec_differences(runs: list[RunRecords]) -> dict[str, list]:
    """{path: [value in each run]} for every spec path whose values are not all the same
    (the run's name aside)."""
    flat = [flatten(run.spec) for run in runs]
    paths = sorted({p for f in flat for p in f} - {"name"})
    missing = "-"
    differ = {}
    for path in paths:
        values = [f.get(path, missing) for f in flat]
        if any(v != values[0] for v in values):
            differ[path] = values
    return differ
