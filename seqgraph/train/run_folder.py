"""The run folder: resolved spec, data facts, checkpoints (written atomically), metrics.

RUN_DIR/spec.yaml        the spec as run (vocab sizes and data path filled in)
RUN_DIR/data.json        vocabulary, labels and split sizes
RUN_DIR/checkpoint.npz   parameters, optimizer state, carried state, step, RNG state
RUN_DIR/metrics.jsonl    one JSON object per logged step or validation
RUN_DIR/loss.png         the loss curves, drawn at the end
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml

from seqgraph.errors import DataError

CHECKPOINT = "checkpoint.npz"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over `path`, so a crash
    at any point leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(run_dir: Path, params: dict, opt_state: dict, carry: dict, meta: dict) -> None:
    """Everything a resumed run needs, as host arrays plus a JSON `meta` string."""
    arrays = {f"param/{k}": v for k, v in params.items()}
    for name, slots in opt_state.items():
        arrays.update({f"opt/{name}/{slot}": v for slot, v in slots.items()})
    arrays.update({f"carry/{k}": v for k, v in carry.items()})
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(Path(run_dir) / CHECKPOINT, lambda handle: np.savez(handle, **arrays))


def load_checkpoint(run_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(params, optimizer state, carried state, meta) from a run folder."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise DataError(
            f"{path}: no checkpoint; train first with `seqgraph run SPEC --out {run_dir}`"
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc})") from None
    params, opt_state, carry = {}, {}, {}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "param":
            params[rest] = value
        elif kind == "opt":
            name, _, slot = rest.rpartition("/")
            opt_state.setdefault(name, {})[slot] = value
        elif kind == "carry":
            carry[rest] = value
    return params, opt_state, carry, json.loads(str(arrays["meta"]))


def write_run_files(run_dir: Path, raw_spec: dict, data_facts: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw_spec, sort_keys=False).encode()
    atomic_write(run_dir / "spec.yaml", lambda handle: handle.write(text))
    facts = json.dumps(data_facts, indent=1).encode()
    atomic_write(run_dir / "data.json", lambda handle: handle.write(facts))


def read_data_facts(run_dir: Path) -> dict:
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        raise DataError(
            f"{run_dir}: not a run folder (no data.json); pass the --out folder of a `seqgraph run`"
        )
    return json.loads(path.read_text())


class Metrics:
    """metrics.jsonl, truncated on resume to the steps the checkpoint covers."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_losses(run_dir: Path, records: list[dict]) -> Path | None:
    """loss.png: training loss per step and validation loss, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    valid = [(r["step"], r["valid_loss"]) for r in records if r.get("kind") == "valid"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (per token)", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation (per token)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path
