"""Experiment tracking: `train.log_to: [tensorboard, mlflow]` copies what a run writes to
metrics.jsonl into TensorBoard event files or an MLflow run, with the spec and the sample.

metrics.jsonl stays the source of truth: a tracker only ever sees a record after it was
appended there (`run_folder.Metrics.write` calls the trackers), so a tracker that fails or
is missing loses nothing the run folder holds. Both back ends are optional extras
(`pip install 'seqgraph[track]'`); asking for one that is not installed is one line naming
that command, before the run folder is made.

RUN_DIR/tensorboard/   event files (`tensorboard --logdir runs`)
RUN_DIR/mlruns/        MLflow's local file store, unless MLFLOW_TRACKING_URI names another
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from seqgraph.errors import SeqgraphError

TRACK_EXTRA = "pip install 'seqgraph[track]'"
# the Python module each back end needs, and what to install for it
BACKENDS = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}


class MissingExtraError(SeqgraphError):
    """An optional extra (tracking, sweeps, the report's browser test) is not installed."""


def check_available(names: list[str] | None) -> None:
    """MissingExtraError, one line with the pip command, for a back end not installed."""
    import importlib.util

    for name in names or []:
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise MissingExtraError(
                f"train.log_to: {name} needs the {BACKENDS[name]} package: {TRACK_EXTRA}"
            )


def scalars(record: dict) -> dict[str, float]:
    """The numbers of one metrics.jsonl record under tracker names: `train/loss`,
    `train/lr`, `train/clip_rate`, `grad_norm/<layer>`, `valid/accuracy`, `app/bleu`..."""
    kind = record.get("kind", "train")
    out = {}
    for key, value in record.items():
        if key in ("kind", "step", "time"):
            continue
        if key == "grad_norms" and isinstance(value, dict):
            out.update({f"grad_norm/{layer}": float(v) for layer, v in value.items()})
        elif isinstance(value, (int, float)):  # bool is an int: `clipped` becomes 0 or 1
            out[f"{kind}/{key}"] = float(value)
    return out


def layer_norms(grads: dict, xp) -> dict[str, float]:
    """‖∂L/∂θ‖ per layer, before clipping: parameters grouped by their name less its last
    part (`l0.fwd.W_ih` -> `l0.fwd`, `enc0.E` -> `enc0`)."""
    squares: dict[str, float] = {}
    for name, g in grads.items():
        layer = name.rpartition(".")[0] or name
        squares[layer] = squares.get(layer, 0.0) + float(xp.sum(g * g))
    return {layer: total**0.5 for layer, total in sorted(squares.items())}


class TensorBoardTracker:
    """Event files under RUN_DIR/tensorboard, through tensorboardX (no torch, no TF)."""

    def __init__(self, run_dir: Path, spec_text: str):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(Path(run_dir) / "tensorboard"))
        self.text("spec", spec_text)

    def record(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record.get("step", 0))

    def text(self, name: str, text: str) -> None:
        # TensorBoard renders text as Markdown: four spaces keep YAML and samples verbatim
        self.writer.add_text(name, "\n".join("    " + line for line in text.split("\n")))

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per seqgraph run, in the experiment named after the spec. The client
    API, not mlflow's module-level active run, so several runs in one process stay apart."""

    def __init__(self, run_dir: Path, spec_text: str, name: str):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store needs no server; MLflow 3 asks to opt in to it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (Path(run_dir) / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=Path(run_dir).name).info.run_id
        self.client.log_text(self.run_id, spec_text, "spec.yaml")

    def record(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.client.log_metric(self.run_id, name, value, step=int(record.get("step", 0)))

    def text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}.txt")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """The trackers of one run: each metrics record and text goes to all of them."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def record(self, record: dict) -> None:
        for tracker in self.trackers:
            tracker.record(record)

    def text(self, name: str, text: str) -> None:
        for tracker in self.trackers:
            tracker.text(name, text)


@contextlib.contextmanager
def opened(names: list[str] | None, run_dir: Path, spec_text: str, name: str):
    """Trackers for `train.log_to` (none for an empty list), closed (flushed) on exit."""
    check_available(names)
    trackers = []
    try:
        for backend in dict.fromkeys(names or []):
            if backend == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, spec_text))
            else:
                trackers.append(MLflowTracker(run_dir, spec_text, name))
        yield Trackers(trackers)
    finally:
        for tracker in trackers:
            tracker.close()
