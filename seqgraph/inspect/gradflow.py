"""The gradient ledger: what BPTT sums, before it sums it.

Every time step is a node, so the reverse pass can report, for each shared parameter, the
contribution of every step to dL/dW (the terms of Σ_t dL_t/dW) and, for every layer and
direction, ‖∂L/∂h_t‖ — where gradients vanish or explode along time.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.runtime import batch as batching


@dataclass
class Ledger:
    """Norms per step: `params[name][t]` of each step's contribution to dL/dW (t=None for
    uses outside the time loop), and `states[(scope, var)][t]` of ∂L/∂state_t."""

    steps: int
    params: dict[str, dict] = field(default_factory=dict)
    states: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)  # ‖dL/dW‖ after the sum
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # Σ_t of the contributions
    loss: float = 0.0
    global_norm: float = 0.0

    def state_matrix(self) -> tuple[list[str], np.ndarray]:
        """Rows `scope.var`, columns t = 0..steps-1: ‖∂L/∂h_t‖ (NaN where a row has no t)."""
        rows = sorted(self.states)
        matrix = np.full((len(rows), self.steps), np.nan)
        for i, row in enumerate(rows):
            for t, norm in self.states[row].items():
                if 0 <= t < self.steps:
                    matrix[i, t] = norm
        return [f"{scope}.{var}" for scope, var in rows], matrix


def ledger(model, batch: dict, feedback: str = "teacher") -> Ledger:
    """Run one forward/backward pass on `batch` and record the ledger."""
    program, values = model.interpret(batch, feedback)
    xp = model.backend.xp
    names = {key: name for name, key in program.graph.params.items()}
    state_vars = {var for layer in _all_layers(model) for var in model.spec.cells[layer.cell].state}
    _, steps, out_steps = batching.shape_of(model.spec, batch)
    book = Ledger(steps=out_steps or steps)
    parts: dict[str, dict] = {}

    def observe(key, grad, consumer):
        host = to_numpy(grad)
        if consumer is not None:
            t = consumer[2] if isinstance(consumer[2], int) else None
            bucket = parts.setdefault(names[key], {})
            bucket[t] = bucket[t] + host if t in bucket else host
        elif key[1] in state_vars and isinstance(key[2], int):
            book.states.setdefault((key[0], key[1]), {})[key[2]] = float(np.linalg.norm(host))

    grads = program.backward(xp, values, program.graph.loss, observe=observe)
    for name, key in program.graph.params.items():
        total = to_numpy(grads[key])
        book.totals[name] = float(np.linalg.norm(total))
        book.params[name] = {t: float(np.linalg.norm(v)) for t, v in parts.get(name, {}).items()}
        book.sums[name] = sum(parts.get(name, {}).values(), np.zeros_like(total))
    book.loss = float(values[program.graph.loss])
    book.global_norm = math.sqrt(sum(v * v for v in book.totals.values()))
    return book


def _all_layers(model):
    return list(model.spec.model.layers) + list(model.spec.model.decoder_layers)


def write_csv(book: Ledger, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    params_path, states_path = folder / "param_steps.csv", folder / "state_grads.csv"
    with params_path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["param", "t", "contribution_norm", "total_norm"])
        for name, per_t in sorted(book.params.items()):
            for t in sorted(per_t, key=lambda v: -1 if v is None else v):
                out.writerow(
                    [name, "" if t is None else t, f"{per_t[t]:.6e}", f"{book.totals[name]:.6e}"]
                )
    with states_path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["state", "t", "grad_norm"])
        for (scope, var), per_t in sorted(book.states.items()):
            for t in sorted(per_t):
                out.writerow([f"{scope}.{var}", t, f"{per_t[t]:.6e}"])
    return params_path, states_path


def heatmap(
    book: Ledger,
    path: Path,
    threshold: float = 1e-3,
    clip_max: float | None = None,
    title: str = "",
) -> Path:
    """steps × layers heatmap of log10 ‖∂L/∂h_t‖; dots mark steps below `threshold` × the
    row's peak (vanished), and the title says whether clipping at `clip_max` would fire."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, matrix = book.state_matrix()
    with np.errstate(divide="ignore"):
        logs = np.log10(matrix)
    fig, ax = plt.subplots(
        figsize=(min(14, 3 + book.steps * 0.09), 1.2 + 0.45 * len(rows)), dpi=110
    )
    image = ax.imshow(logs, aspect="auto", cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 ‖∂L/∂h_t‖", fraction=0.03)
    peaks = np.nanmax(matrix, axis=1, keepdims=True)
    faint = np.argwhere(matrix < threshold * peaks)
    if len(faint):
        ax.scatter(
            faint[:, 1], faint[:, 0], s=4, c="cyan", marker=".", label=f"< {threshold:g} × row peak"
        )
        ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("time step t")
    clip_text = ""
    if clip_max is not None:
        fired = book.global_norm > clip_max
        clip_text = f"; clipping at {clip_max:g} {'FIRES' if fired else 'idle'}"
    ax.set_title(
        f"{title}  loss {book.loss:.4f}, ‖g‖ {book.global_norm:.3g}{clip_text}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
