"""Attention maps: one decoded example's weights (output tokens x source tokens) as a heatmap
PNG and a CSV. Only numbers and labels come in; `predict` finds them (the graph's
`("att", "weights", t)` nodes, run on the example's own output)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError

CORNER = "output \\ source"  # the CSV's first header cell


def write_attention_map(
    folder: str | Path, name: str, source: list[str], output: list[str], weights: np.ndarray
) -> tuple[Path, Path]:
    """Write `folder/name.csv` (a row per output token, a column per source token) and
    `folder/name.png` (the same as a heatmap, axes labelled). Returns both paths."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(output), len(source)):
        raise ValueError(f"weights {weights.shape} for {len(output)} x {len(source)} tokens")
    folder = Path(folder)
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow([CORNER, *source])
    table.writerows([token, *(f"{w:.6g}" for w in row)] for token, row in zip(output, weights))
    csv_path, png_path = folder / f"{name}.csv", folder / f"{name}.png"
    csv_path.write_text(text.getvalue(), encoding="utf-8")
    _heatmap(png_path, source, output, weights)
    return png_path, csv_path


def _heatmap(path: Path, source: list[str], output: list[str], weights) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = 1.5 + 0.3 * max(len(source), 4), 1.2 + 0.3 * max(len(output), 4)
    fig, ax = plt.subplots(figsize=(min(width, 30), min(height, 30)), dpi=100)
    try:
        image = ax.imshow(
            weights.reshape(len(output), len(source)), cmap="Greys", vmin=0.0, vmax=1.0
        )
        fig.colorbar(image, ax=ax, fraction=0.04, label="attention weight")
        turn = 90 if any(len(t) > 2 for t in source) else 0  # words stand up, characters not
        ax.set_xticks(range(len(source)), [_shown(t) for t in source], rotation=turn)
        ax.set_yticks(range(len(output)), [_shown(t) for t in output])
        ax.set_xlabel("source tokens")
        ax.set_ylabel("output tokens")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _shown(token: str) -> str:
    """A tick label: blanks made visible, matplotlib's mathtext `$` escaped."""
    return {" ": "␣", "\t": "⇥", "\n": "↵"}.get(token, token.replace("$", r"\$"))


def check_folder(folder: str | Path) -> Path:
    """The folder maps go to, created; one line naming the path when it cannot be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"--attention {folder}: is a file; give a folder for the maps")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"--attention {folder}: cannot create the folder ({exc.strerror})"
        ) from None
    return folder
