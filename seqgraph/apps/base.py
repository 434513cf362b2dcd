"""What the built-in applications share: `App`, the state an application keeps with its data
set for its metrics and artifacts, and the registry hooks that call it."""

from __future__ import annotations

from pathlib import Path


class App:
    """What a generated application adds to the plain loss: `metrics(model, split, batch_size)`
    returns task scores (BLEU, per-frame MSE, baselines) for a split, and
    `artifacts(model, run_dir, seed)` writes files a person looks at or listens to (PNG, WAV)
    and returns {name: path}. A loader stores it as `dataset.app`; the source's registry record
    (`app_hooks`) calls it: `seqgraph run` both at the end, `seqgraph eval` the first."""

    def metrics(self, model, split: str, batch_size: int) -> dict:
        return {}

    def artifacts(self, model, run_dir: Path, seed: int) -> dict:
        return {}


def _metrics(model, dataset, split: str, batch_size: int) -> dict:
    return dataset.app.metrics(model, split, batch_size)


def _artifacts(model, dataset, run_dir: Path, seed: int) -> dict:
    return dataset.app.artifacts(model, run_dir, seed)


def app_hooks() -> dict:
    """`metrics` and `artifacts` of a `registry.DataSource` whose loader sets `dataset.app`."""
    return {"metrics": _metrics, "artifacts": _artifacts}
