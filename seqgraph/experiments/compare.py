"""`seqgraph compare RUN_DIR...`: the runs' curves against step and against wall time in one
figure, a table of their final and best metrics, and where their specs differ."""

from __future__ import annotations

import os
from pathlib import Path

from seqgraph.errors import DataError
from seqgraph.experiments.runs import RunRecords, read_run, spec_differences
from seqgraph.train import run_folder


def compare(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> dict:
    """Read the runs, draw `out` (default compare.png) and return the table rows (one dict
    per run), the spec differences and the figure's path."""
    if not run_dirs:
        raise DataError("compare needs at least one run folder; pass RUN_DIR...")
    runs = [read_run(run_dir) for run_dir in run_dirs]
    _unique_labels(runs)
    path = draw(runs, Path(out) if out else Path("compare.png"))
    rows = [{"run": run.label, **run.summary()} for run in runs]
    return {"rows": rows, "differences": spec_differences(runs), "figure": str(path)}


def _unique_labels(runs: list[RunRecords]) -> None:
    """Label runs by folder name, or by a longer tail of the path where two names clash."""
    for depth in range(1, 6):
        labels = [str(Path(*run.run_dir.parts[-depth:])) for run in runs]
        if len(set(labels)) == len(labels):
            break
    for run, label in zip(runs, labels):
        run.label = label


def draw(runs: list[RunRecords], path: Path) -> Path:
    """Loss (and accuracy, where a run has it) against step (left) and wall time (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = ["loss"] + (
        ["accuracy"] if any("accuracy" in r for x in runs for r in x.valid) else []
    )
    fig, axes = plt.subplots(len(scores), 2, figsize=(11, 3.6 * len(scores)), squeeze=False)
    for row, score in enumerate(scores):
        for run, colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
            _curves(axes[row], run, score, colour)
        for column, axis_name in enumerate(("step", "wall time (s)")):
            axes[row][column].set_xlabel(axis_name)
            axes[row][column].set_ylabel(score)
            axes[row][column].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("against step")
    axes[0][1].set_title("against wall time")
    fig.tight_layout()
    try:
        run_folder.atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=90))
    finally:
        plt.close(fig)
    return path


def _curves(axes, run: RunRecords, score: str, colour: str) -> None:
    """One run's train curve (thin) and validation points (dots) on both panels."""
    series = []
    if score == "loss":
        series.append((run.train, "loss", "-", f"{run.label} train"))
        series.append((run.valid, "valid_loss", "o--", f"{run.label} valid"))
    else:
        series.append((run.valid, score, "o-", f"{run.label} valid"))
    for records, key, style, label in series:
        points = [r for r in records if key in r]
        if not points:
            continue
        width = 1 if style == "-" else 1.5
        steps = [r["step"] for r in points]
        axes[0].plot(steps, [r[key] for r in points], style, color=colour, lw=width, label=label)
        timed = [(run.seconds(r), r[key]) for r in points if run.seconds(r) is not None]
        if timed:
            axes[1].plot(*zip(*timed), style, color=colour, lw=width)


def table_lines(result: dict) -> list[str]:
    """The comparison as aligned text: one row per run, then the spec differences."""
    rows = result["rows"]
    columns = ["run"] + list(dict.fromkeys(k for r in rows for k in r if k != "run"))
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    if result["differences"]:
        lines.append("spec differences:")
        for spec_path, values in result["differences"].items():
            lines.append(f"  {spec_path}: " + " | ".join(_cell(v) for v in values))
    else:
        lines.append("the specs are the same")
    return lines


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
