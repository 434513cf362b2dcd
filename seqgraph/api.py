"""The public Python API: load a spec, build a model, run it forward and backward."""

from __future__ import annotations

import os
from typing import Any

import networkx as nx
import numpy as np

from . import batch as batching
from . import segments
from .autodiff import Program
from .backend import Backend, get_backend
from .compile import compile_graph
from .errors import DataError, GraphError, SpecError
from .graph import Graph
from .init import initialize
from .plan import Plan
from .plan_run import Runner, state_keys
from .spec import Spec, load_spec

AUTO_PLACEHOLDER = 100  # stands in for `vocab: auto` when `check` has no data to size it

__all__ = [
    "Model",
    "check",
    "evaluate_run",
    "export_run",
    "gradflow",
    "load_run",
    "load_spec",
    "render",
    "sample",
    "train",
]


def _as_spec(spec: Spec | str | os.PathLike | dict) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


class Model:
    """A spec with parameters on a backend.

    `params` maps names such as `l0.W_ih` or `out.W` to backend arrays. Every method that
    takes a batch compiles (once per sequence length and feedback mode) the unrolled graph.
    `engine="plan"` runs gradients through a compiled execution plan (`plan.py`, cached per
    batch shape); `engine="interp"` walks the graph node by node (`autodiff.Program`), the
    reference the plan is tested against.
    """

    def __init__(
        self,
        spec: Spec | str | os.PathLike | dict,
        backend: str | None = None,
        dtype: str | None = None,
        seed: int | None = None,
        engine: str = "plan",
    ):
        if engine not in ("plan", "interp"):
            raise ValueError(f"engine must be 'plan' or 'interp', got {engine!r}")
        self.spec = _as_spec(spec)
        self._plans: dict[tuple, Runner] = {}
        self.backend: Backend = get_backend(backend or self.spec.backend, dtype or self.spec.dtype)
        self.seed = self.spec.seed if seed is None else seed
        self.engine = engine if self.backend.name in ("numpy", "cupy") else "interp"
        self._programs: dict[tuple, Program] = {}
        # recompute activations in segments of this many steps (`segments.py`), or None
        self.segment_steps = self.spec.train.get("segment_steps")
        if self.segment_steps:
            segments.check(self.spec, self.engine)
        probe = self.compiled(1, 1 if self.spec.model.feeds_back else None)
        self.param_info = probe.param_info
        self.params: dict[str, Any] = {}
        self.set_params(initialize(self.param_info, self.seed))
        self._dry_run()

    def _dry_run(self) -> None:
        """Run one tiny batch so that equations whose shapes do not fit fail now, as a
        SpecError naming the equation, rather than in the middle of training."""
        out_steps = 1 if self.spec.model.feeds_back else None
        try:
            self._run(batching.dummy(self.spec, 1, 2, out_steps), "teacher")
        except GraphError as exc:
            source = getattr(exc, "source", "")
            if not source:
                raise
            raise SpecError(
                source,
                f"shapes do not fit: {exc.op} got inputs of shape "
                f"{exc.shapes}; check the param shapes against "
                "`input` and `hidden`",
                self.spec.lines.get(source),
                self.spec.source,
            ) from None

    # ---- parameters --------------------------------------------------------------------------

    def set_params(self, params: dict[str, Any]) -> None:
        """Replace some or all parameters (host or backend arrays); shapes must match."""
        for name, value in params.items():
            if name not in self.param_info:
                raise DataError(
                    f"unknown parameter {name!r}; this model has: "
                    f"{', '.join(sorted(self.param_info))}"
                )
            host = self.backend.to_numpy(value)
            if tuple(host.shape) != self.param_info[name].shape:
                raise DataError(
                    f"parameter {name!r} must have shape "
                    f"{self.param_info[name].shape}, got {tuple(host.shape)}"
                )
            self.params[name] = self.backend.asarray(host)

    def export_params(
        self, convention: str = "pytorch", arrays: dict | None = None, **options
    ) -> dict[str, np.ndarray]:
        """Host copies of the parameters (or of `arrays` keyed like them, e.g. gradients)
        named and laid out as PyTorch, Keras or ONNX expect (see `seqgraph.interop`)."""
        from .interop import export_params

        return export_params(self, convention, arrays, **options)

    def import_params(self, source, convention: str = "pytorch", **options) -> None:
        """Load parameters from a dict of arrays or an .npz written in `convention`'s layout."""
        from .interop import import_params

        import_params(self, source, convention, **options)

    def num_params(self) -> int:
        return int(sum(np.prod(info.shape) for info in self.param_info.values()))

    # ---- graphs ------------------------------------------------------------------------------

    def compiled(
        self, steps: int, out_steps: int | None = None, feedback: str = "teacher"
    ) -> Graph:
        return self.program(steps, out_steps, feedback).graph

    def program(
        self,
        steps: int,
        out_steps: int | None = None,
        feedback: str = "teacher",
        state_grads: bool = False,
    ) -> Program:
        """The flattened program for one sequence length (cached)."""
        key = (steps, out_steps, feedback, state_grads)
        if key not in self._programs:
            graph = compile_graph(self.spec, steps, out_steps, feedback, state_grads)
            self._programs[key] = Program(graph)
        return self._programs[key]

    def graph(
        self, steps: int, out_steps: int | None = None, feedback: str = "teacher"
    ) -> nx.MultiDiGraph:
        """The unrolled networkx.MultiDiGraph for `steps` input steps (and decoder steps)."""
        if self.spec.model.feeds_back and out_steps is None:
            out_steps = steps
        return compile_graph(self.spec, steps, out_steps, feedback).nx

    # ---- running -----------------------------------------------------------------------------

    def _run(self, batch: dict, feedback: str):
        _, steps, out_steps = batching.shape_of(self.spec, batch)
        program = self.program(steps, out_steps, feedback)
        graph = program.graph
        bk = self.backend
        leaves = {key: bk.asarray(v) for key, v in batching.feeds(self.spec, graph, batch).items()}
        leaves.update({key: self.params[name] for name, key in graph.params.items()})
        leaves.update({key: bk.asarray(v) for key, v in program.consts.items()})
        return program, program.forward(bk.xp, leaves)

    def forward(self, batch: dict, feedback: str = "teacher") -> dict[str, Any]:
        """Outputs for a batch: `predictions` ((B, T, C) per step, or (B, C) for one output),
        `loss` (float, or None without `y`) and `state` (final states by name)."""
        if self.engine == "plan":
            prepared = batching.prepare(self.spec, batch)
            return self.runner(batch, feedback, False, prepared=prepared).forward(
                prepared, self.params
            )
        program, values = self._run(batch, feedback)
        graph, xp = program.graph, self.backend.xp
        preds = [values[k] for k in graph.outputs["predictions"]]
        single = self.spec.model.pattern in ("many_to_one", "one_to_one")
        return {
            "predictions": preds[0] if single else xp.stack(preds, axis=1),
            "loss": float(values[graph.loss]) if batch.get("y") is not None else None,
            "state": {name: values[k] for name, k in state_keys(program).items()},
        }

    def train_step(
        self, batch: dict, feedback: str = "teacher", state_at: int | None = None
    ) -> tuple[float, dict, dict]:
        """(loss, grads, states) in one pass: what truncated BPTT needs to carry on. The
        states are those after the last step, or after `state_at` steps if given."""
        if batch.get("y") is None:
            raise DataError("training needs targets: give batch['y']")
        if self.engine == "plan":
            prepared = batching.prepare(self.spec, batch)
            if self.segment_steps and prepared.steps > self.segment_steps:
                return segments.train_step(self, batch, self.segment_steps, feedback, state_at)
            runner = self.runner(batch, feedback, state_at=state_at, prepared=prepared)
            return runner.train_step(prepared, self.params)
        program, values = self._run(batch, feedback)
        grads = program.backward(self.backend.xp, values, program.graph.loss)
        named = {name: grads[key] for name, key in program.graph.params.items()}
        states = {name: values[k] for name, k in state_keys(program, state_at).items()}
        return float(values[program.graph.loss]), named, states

    def runner(
        self,
        batch: dict,
        feedback: str = "teacher",
        grads: bool = True,
        state_at: int | None = None,
        prepared=None,
        state_grads: bool = False,
    ) -> Runner:
        """The plan runner for this batch's shape (cached): gradients, or forward only;
        `state_grads`: also the initial states' gradients, from seeded final ones."""
        p = prepared or batching.prepare(self.spec, batch)
        key = (p.steps, p.out_steps, feedback, p.size, p.full, grads, state_at, state_grads)
        runner = self._plans.get(key)
        if runner is None:
            program = self.program(p.steps, p.out_steps, feedback, state_grads)
            runner = self._plans[key] = Runner(self, program, batch, p.full, grads, state_at)
        return runner

    def plan(self, batch: dict, feedback: str = "teacher") -> tuple[Plan, dict]:
        """The execution plan for this batch's shape (cached) and the batch's leaf arrays."""
        runner = self.runner(batch, feedback)
        return runner.plan, batching.feeds(self.spec, runner.graph, batch)

    def loss_and_grads(self, batch: dict, feedback: str = "teacher") -> tuple[float, dict]:
        """(loss, grads) with grads keyed like `params`: dL/dW summed over every time step."""
        if batch.get("y") is None:
            raise DataError("loss_and_grads needs targets: give batch['y']")
        if self.engine == "plan":
            return self.train_step(batch, feedback)[:2]
        program, values = self._run(batch, feedback)
        grads = program.backward(self.backend.xp, values, program.graph.loss)
        return float(values[program.graph.loss]), {
            name: grads[key] for name, key in program.graph.params.items()
        }


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
        return _as_spec(spec), ""
    from .train import prepare

    try:
        return prepare(spec, data)[0], ""
    except DataError as exc:
        if data is not None:
            raise
        note = f"vocab: auto could not be sized ({exc}); using a placeholder of {AUTO_PLACEHOLDER}"
        return load_spec(spec, auto={"input": AUTO_PLACEHOLDER, "target": AUTO_PLACEHOLDER}), note


def render(
    spec: Spec | str | os.PathLike | dict,
    output: str | os.PathLike,
    steps: int = 4,
    out_steps: int | None = None,
    fold: bool = False,
    grad: bool = False,
    lengths: list[int] | None = None,
    detail: bool = False,
) -> str:
    """Draw the unrolled graph of `spec` to `output` (.svg, .png, .pdf or .dot); `grad`
    colours it by the gradient norms of one backward pass on a random batch."""
    from .render import render_model, render_to_file

    spec, _ = _sized_spec(spec, None)
    model = Model(spec, dtype="float64")
    digraph = render_model(
        model,
        steps,
        out_steps=out_steps,
        lengths=lengths,
        fold=fold,
        with_grads=grad,
        detail=detail,
    )
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
    program, values = model._run(sample, "teacher")
    graph = program.graph
    first = [k for k in program.order if k[2] in (0, None) and graph.node(k)["kind"] != "const"]
    return {
        "name": model.spec.name,
        "pattern": model.spec.model.pattern,
        "params": {name: info.shape for name, info in sorted(model.param_info.items())},
        "num_params": model.num_params(),
        "steps": len(sample["x"][0]) if sample["x"].ndim > 1 else 1,
        "nodes": graph.nx.number_of_nodes(),
        "edges": graph.nx.number_of_edges(),
        "step_shapes": [
            (k, graph.node(k)["kind"], graph.node(k).get("op"), tuple(values[k].shape))
            for k in first
        ],
        "loss": float(values[graph.loss]),
        "note": note,
    }


# ---- runs: train, load, sample, evaluate -----------------------------------------------------


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines must reach a log file or pipe as they happen


def train(spec: str, log=_print_now, **options) -> dict:
    """Train as `seqgraph run` does (options: data, backend, dtype, steps, out, resume,
    progress, stop_after, sample); returns a summary with the run folder and losses."""
    from .train import RunOptions, run

    return run(RunOptions(spec, **options), log=log)


# the run-folder half of the API lives in api_runs.py (it needs Model, defined above)
from .api_runs import evaluate_run, export_run, gradflow, load_run, sample  # noqa: E402, F401
