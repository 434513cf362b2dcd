"""The public Python API: load a spec, build a model, run it forward and backward."""

from __future__ import annotations

import os
from typing import Any

import seqgraph.apps  # noqa: F401  (registers the built-in applications' data sources)
from seqgraph.api_runs import (
    evaluate_run,
    export_run,
    gradflow,
    load_run,
    sample,
)
from seqgraph.errors import DataError, SpecError
from seqgraph.predict import Predictor, load
from seqgraph.runtime import batch as batching
from seqgraph.runtime.model import Model
from seqgraph.spec.load import Spec, load_spec
from seqgraph.train.evaluate import score_line

AUTO_PLACEHOLDER = 100  # stands in for `vocab: auto` when `check` has no data to size it

__all__ = [
    "Model",
    "check",
    "evaluate_run",
    "export_run",
    "gradflow",
    "load",
    "load_run",
    "load_spec",
    "Predictor",
    "render",
    "sample",
    "score_line",
    "train",
]


def _uses_auto(spec: Spec | str | os.PathLike | dict) -> bool:
    if isinstance(spec, Spec):
        return False
    try:
        load_spec(spec)
    except SpecError as exc:
        return "vocab: auto" in exc.message
    return False


def _sized_spec(spec, data: str | None) -> tuple[Spec, str]:
    """The spec with `vocab: auto` sized from its data, or from a placeholder (and a note
    saying so) when the data cannot be read here."""
    if not (_uses_auto(spec) or data is not None):
        return (spec if isinstance(spec, Spec) else load_spec(spec)), ""
    from seqgraph.train.loop import prepare

    try:
        return prepare(spec, data)[0], ""
    except DataError as exc:
        if data is not None:
            raise
        note = f"vocab: auto could not be sized ({exc}); using a placeholder of {AUTO_PLACEHOLDER}"
        return load_spec(spec, auto={"input": AUTO_PLACEHOLDER, "target": AUTO_PLACEHOLDER}), note


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines must reach a log file or pipe as they happen


def _render_model(source, log) -> Model:
    """The model `render` draws: a run folder's (its spec.yaml, with the sizes its data gave,
    at its checkpoint if it has one) or a spec's (`vocab: auto` sized as `check` does)."""
    from pathlib import Path

    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        folder = Path(source)
        if not (folder / "spec.yaml").is_file():
            raise SpecError(
                "",
                "a folder without spec.yaml; give a YAML spec or a run folder "
                "(the --out of `seqgraph run`)",
                source=str(folder),
            )
        if (folder / "checkpoint.npz").is_file():
            return _float64(load_run(folder))
        return Model(folder / "spec.yaml", dtype="float64")
    spec, note = _sized_spec(source, None)
    if note:
        log(f"note: {note}")
    return Model(spec, dtype="float64")


def _float64(model: Model) -> Model:
    """A float64 copy of a trained model (render's gradient norms are taken in float64)."""
    copy = Model(model.spec, dtype="float64")
    copy.set_params(model.params)
    return copy


def render(
    spec: Spec | str | os.PathLike | dict,
    output: str | os.PathLike | None = None,
    steps: int = 4,
    out_steps: int | None = None,
    fold: bool = False,
    grad: bool = False,
    lengths: list[int] | None = None,
    detail: bool = False,
    log=_print_now,
):
    """Draw the unrolled graph of `spec` (a spec, or a run folder: its spec and checkpoint)
    to `output` (.svg, .png, .pdf or .dot) and return its path; without `output`, return a
    `Drawing` that a notebook shows inline (`.save(path)` writes it). `grad` colours it by
    the gradient norms of one backward pass on a random batch. `log` gets a note when
    `vocab: auto` had to be given a placeholder size."""
    from seqgraph.inspect.render import Drawing, render_model, render_to_file

    model = _render_model(spec, log)
    digraph = render_model(
        model,
        steps,
        out_steps=out_steps,
        lengths=lengths,
        fold=fold,
        with_grads=grad,
        detail=detail,
    )
    if output is None:
        return Drawing(digraph)
    return str(render_to_file(digraph, output))


def check(
    spec: Spec | str | os.PathLike | dict,
    steps: int = 5,
    out_steps: int | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Validate a spec and describe its unrolled graph: parameters, node and edge counts, and
    the shape of every node of the first step (from a dry run on a random batch of 2).
    A spec with `vocab: auto` has its data loaded (from `data`, if given) to size it."""
    spec, note = _sized_spec(spec, data)
    model = Model(spec, backend="numpy", dtype="float64")
    out_steps = out_steps or (steps if model.spec.model.feeds_back else None)
    sample = batching.dummy(model.spec, 2, steps, out_steps)
    program, values = model.interpret(sample, "teacher")
    graph = program.graph
    first = [k for k in program.order if k[2] in (0, None) and graph.node(k)["kind"] != "const"]
    return {
        "name": model.spec.name,
        "pattern": model.spec.model.pattern,
        "params": {name: info.shape for name, info in sorted(model.param_info.items())},
        "num_params": model.num_params(),
        "steps": len(sample["x"][0]) if sample["x"].ndim > 1 else 1,
        "nodes": len(graph.nodes),
        "edges": graph.edge_count(),
        "step_shapes": [
            (k, graph.node(k)["kind"], graph.node(k).get("op"), tuple(values[k].shape))
            for k in first
        ],
        "loss": float(values[graph.loss]),
        "note": note,
    }


# ---- runs: train, load, sample, evaluate -----------------------------------------------------


def train(spec: str, log=_print_now, **options) -> dict:
    """Train as `seqgraph run` does (options: data, backend, dtype, steps, out, resume,
    progress, stop_after, sample); returns a summary with the run folder and losses."""
    from seqgraph.train.loop import RunOptions, run

    return run(RunOptions(spec, **options), log=log)


# ---- many runs: sweep, compare, report -------------------------------------------------------


def sweep(spec: str, space: str, log=_print_now, **options) -> dict:
    """Search `spec`'s hyperparameters over the `space` file with Optuna, as `seqgraph sweep`
    does (options: trials, workers, storage, out, metric, study, data, seed); returns the
    trials, the best and the hand-set trial, and the files written."""
    from seqgraph.experiments.sweep import SweepOptions
    from seqgraph.experiments.sweep import sweep as run_sweep

    return run_sweep(SweepOptions(spec, space, **options), log=log)


def compare(run_dirs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> dict:
    """Final and best metrics and spec differences of runs, and their curves drawn to
    `output` (default compare.png)."""
    from seqgraph.experiments.compare import compare as compare_runs

    return compare_runs(run_dirs, output)


def report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> str:
    """Write the self-contained HTML report of a run (default RUN_DIR/report.html)."""
    from seqgraph.experiments.report import write_report

    return str(write_report(run_dir, output))
