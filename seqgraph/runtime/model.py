"""`Model`: a checked spec with its parameters on a backend, run forward and backward by the
interpreter (`engine="interp"`) or a compiled plan (`engine="plan"`)."""

from __future__ import annotations

import os
from typing import Any

import networkx as nx
import numpy as np

from seqgraph.engine.autodiff import Program
from seqgraph.engine.backend import Backend, get_backend
from seqgraph.engine.graph import Graph
from seqgraph.engine.initializers import initialize
from seqgraph.engine.ops.buffers import owner
from seqgraph.errors import DataError, GraphError, SpecError
from seqgraph.plan.lower import Plan
from seqgraph.runtime import batch as batching
from seqgraph.runtime import heap, memory, segments
from seqgraph.runtime.runner import Runner, state_keys
from seqgraph.spec.load import Spec, load_spec
from seqgraph.spec.unroll import compile_graph
from seqgraph.spec.yaml_lines import with_line


def _as_spec(spec: Spec | str | os.PathLike | dict) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


# sequences in the loader's dry run: a batch of one would hide a (1, n) value that does not
# broadcast to the batch (a learned initial state read by concat)
DRY_RUN_SEQUENCES = 2


RUNNER_CACHE_BYTES = 2 << 30  # buffers the cached plan runners of one model may hold


def held_bytes(plan) -> int:
    """Bytes of the arrays a plan holds (values, gradients, their stacks, the kernels'
    scratch and saved buffers), each allocation once: what dropping the plan gives back,
    but for buffers a kernel made for itself (`plan.listing.inventory` walks those too)."""
    lay, seen, total = plan.layout, set(), 0
    arrays = [stack.arr for stack in lay.value_stack.values()]
    arrays += [stack.arr for stack in lay.grad_stack.values()]
    arrays += [*lay.value.values(), *lay.grad.values(), *plan.ctx.scratch.values()]
    arrays += [a for kept in plan.ctx.saved.values() for a in kept]
    for array in arrays:
        root = owner(array)
        if id(root) not in seen:
            seen.add(id(root))
            total += int(getattr(root, "nbytes", 0))
    return total


class Model:
    """A spec with parameters on a backend.

    `params` maps names such as `l0.W_ih` or `out.W` to backend arrays. Every method that
    takes a batch compiles (once per sequence length and feedback mode) the unrolled graph.
    `engine="plan"` runs gradients through a compiled execution plan (`seqgraph.plan`, cached
    per batch shape); `engine="interp"` walks the graph node by node (`autodiff.Program`),
    the reference the plan is tested against. `graph`, `unrolled` and `plan` return the
    compiled forms to look at; `interpret` runs the interpreter and returns every value.
    A batch with `dropout: {"seed": s, "step": n}` runs the training graph, with the spec's
    dropout (masks from `runtime.masks`); any other runs the evaluation graph, without.
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
        self._runners: dict[tuple, Runner] = {}  # least recently used first
        self._runner_bytes: dict[tuple, int] = {}  # the arrays each cached runner holds
        self.backend: Backend = get_backend(backend or self.spec.backend, dtype or self.spec.dtype)
        self.seed = self.spec.seed if seed is None else seed
        self.engine = engine if self.backend.name in ("numpy", "cupy") else "interp"
        self._programs: dict[tuple, Program] = {}
        # recompute activations in segments of this many steps (`segments.py`), or None
        self.segment_steps = self.spec.train.get("segment_steps")
        if self.segment_steps:
            segments.check(self.spec, self.engine)
        try:
            self.param_info = self.unrolled(1).param_info
        except SpecError as exc:  # a size expression of a cell: name the spec file and line
            raise with_line(exc, self.spec.lines, self.spec.source) from None
        self.params: dict[str, Any] = {}
        memory.check_fits(self)  # a model too large is refused before it is allocated
        self.set_params(initialize(self.param_info, self.seed))
        memory.check_fits(self, self._dry_run(), sequences=DRY_RUN_SEQUENCES)

    def __repr__(self) -> str:
        m, segments_text = self.spec.model, ""
        if self.segment_steps:
            segments_text = f", segments of {self.segment_steps} steps"
        return (
            f"Model({self.spec.name!r}: {m.pattern}, {m.stack}; "
            f"{self.num_params():,} params; {self.backend.name} {self.backend.dtype_name}, "
            f"engine {self.engine}{segments_text})"
        )

    def _repr_html_(self) -> str:
        """What Jupyter shows for a Model: the one-line summary and a table of parameters."""
        import html

        rows = "".join(
            f"<tr><td><code>{html.escape(name)}</code></td><td>{' × '.join(map(str, shape))}"
            f"</td><td style='text-align:right'>{int(np.prod(shape)):,}</td></tr>"
            for name, shape in ((n, info.shape) for n, info in sorted(self.param_info.items()))
        )
        return (
            f"<p><code>{html.escape(repr(self))}</code></p><table><tr><th>parameter</th>"
            f"<th>shape</th><th>size</th></tr>{rows}</table>"
        )

    def _dry_run(self) -> dict:
        """Run one tiny batch so that equations whose shapes do not fit fail now, as a
        SpecError naming the equation, rather than in the middle of training. Two sequences,
        not one: a batch of one hides a (1, n) value that does not broadcast to the batch.
        Returns the value of every node (they size the activations of a time step)."""
        out_steps = 1 if self.spec.model.feeds_back else None
        try:
            batch = batching.dummy(self.spec, DRY_RUN_SEQUENCES, 2, out_steps)
            return self.interpret(batch, "teacher")[1]
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
        named and laid out as PyTorch, Keras or ONNX expect (see `seqgraph.runtime.interop`)."""
        from seqgraph.runtime.interop import export_params

        return export_params(self, convention, arrays, **options)

    def import_params(self, source, convention: str = "pytorch", **options) -> None:
        """Load parameters from a dict of arrays or an .npz written in `convention`'s layout."""
        from seqgraph.runtime.interop import import_params

        import_params(self, source, convention, **options)

    def num_params(self) -> int:
        """How many numbers the parameters hold, all together."""
        return int(sum(np.prod(info.shape) for info in self.param_info.values()))

    # ---- compiled forms ----------------------------------------------------------------------
    # What a user looks at: `graph` (networkx), `unrolled` (the engine's Graph) and `plan`
    # (the compiled plan). The interpreter's Program and the plan's Runner stay internal.

    def graph(
        self,
        steps: int,
        out_steps: int | None = None,
        feedback: str = "teacher",
        train: bool = False,
    ) -> nx.MultiDiGraph:
        """The unrolled networkx.MultiDiGraph for `steps` input steps (and `out_steps` decoder
        steps, default `steps`): a copy, yours to change. Nodes are `(scope, name, t)`, with
        the op, its attrs and the ordered input keys as node data; `unrolled` has the rest."""
        return self.unrolled(steps, out_steps, feedback, train).nx.copy()

    def unrolled(
        self,
        steps: int,
        out_steps: int | None = None,
        feedback: str = "teacher",
        train: bool = False,
    ) -> Graph:
        """The unrolled Graph both engines run (cached; read it, do not change it): nodes,
        their order, parameters and the roles they play (loss, outputs, inputs). Its repr
        counts them; `describe(key)` shows one node. `train`: the training graph, with the
        dropout masks (leaves of role "dropout") and ops."""
        if self.spec.model.feeds_back and out_steps is None:
            out_steps = steps
        return self._program(steps, out_steps, feedback, train=train).graph

    def plan(self, batch: dict, feedback: str = "teacher", grads: bool = True) -> Plan:
        """The execution plan for this batch's shape (cached; built by `engine="plan"` runs):
        its kernels, buffers, shapes and dtypes in order. `grads=False`: the forward-only plan
        that `forward` runs."""
        return self._runner(batch, feedback, grads).plan

    def _program(
        self,
        steps: int,
        out_steps: int | None = None,
        feedback: str = "teacher",
        state_grads: bool = False,
        train: bool = False,
    ) -> Program:
        """The interpreter's flattened program for one sequence length (cached); `train`:
        the training graph, with dropout (the same program when the spec has none)."""
        key = (steps, out_steps, feedback, state_grads, train)
        if key not in self._programs:
            graph = compile_graph(self.spec, steps, out_steps, feedback, state_grads, train)
            has_dropout = any(role["role"] == "dropout" for role in graph.inputs.values())
            if train and not has_dropout:
                self._programs[key] = self._program(steps, out_steps, feedback, state_grads)
            else:
                self._programs[key] = Program(graph)
        return self._programs[key]

    def _runner(
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
        program = self._program(p.steps, p.out_steps, feedback, state_grads, p.dropout is not None)
        key = (id(program), p.size, p.full, grads, state_at)
        runner = self._runners.pop(key, None)
        if runner is None:
            runner = Runner(self, program, batch, p.full, grads, state_at)
            self._runner_bytes[key] = held_bytes(runner.plan)
            heap.give_back_free_pages()  # what the lowering freed (`runtime/heap.py`)
        self._runners[key] = runner  # now the most recently used
        self._evict_runners()
        return runner

    def _evict_runners(self) -> None:
        """Drop the least recently used runners while the cached ones hold more than
        RUNNER_CACHE_BYTES of buffers (the newest always stays). Each batch shape has its
        own: beam search over 1,800 sources made one per prefix width and row count, and
        kept them all until the process ran out of memory (23.9 GB)."""
        total = sum(self._runner_bytes.values())
        while total > RUNNER_CACHE_BYTES and len(self._runners) > 1:
            oldest = next(iter(self._runners))
            del self._runners[oldest]
            total -= self._runner_bytes.pop(oldest)

    # ---- running -----------------------------------------------------------------------------

    def interpret(self, batch: dict, feedback: str = "teacher") -> tuple[Program, dict]:
        """The interpreter's forward pass over `batch`: its Program and the value of every
        node, for tools that look inside (`inspect.gradflow`, `inspect.render` with
        gradients; `program.backward(xp, values, program.graph.loss, observe=...)`)."""
        _, steps, out_steps = batching.shape_of(self.spec, batch)
        train = batch.get("dropout") is not None
        program = self._program(steps, out_steps, feedback, train=train)
        graph = program.graph
        bk = self.backend
        leaves = {key: bk.asarray(v) for key, v in batching.feeds(self.spec, graph, batch).items()}
        leaves.update({key: self.params[name] for name, key in graph.params.items()})
        leaves.update({key: bk.asarray(v) for key, v in program.consts.items()})
        return program, program.forward(bk.xp, leaves)

    def forward(self, batch: dict, feedback: str = "teacher") -> dict[str, Any]:
        """Outputs for a batch: `predictions` ((B, T, C) per step, or (B, C) for one output),
        `loss` (float, or None without `y`), `state` (final states by name) and, with
        `model.attention`, `attention`: the weights (B, decoder steps, source steps), the
        graph's nodes `("att", "weights", t)`, zero at padded source steps."""
        if self.engine == "plan":
            prepared = batching.prepare(self.spec, batch)
            return self._runner(batch, feedback, False, prepared=prepared).forward(
                prepared, self.params
            )
        program, values = self.interpret(batch, feedback)
        graph, xp = program.graph, self.backend.xp
        preds = [values[k] for k in graph.outputs["predictions"]]
        single = self.spec.model.pattern in ("many_to_one", "one_to_one")
        out = {
            "predictions": preds[0] if single else xp.stack(preds, axis=1),
            "loss": float(values[graph.loss]) if batch.get("y") is not None else None,
            "state": {name: values[k] for name, k in state_keys(program).items()},
        }
        if graph.outputs.get("attention"):
            out["attention"] = xp.stack([values[k] for k in graph.outputs["attention"]], axis=1)
        return out

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
                return segments.train_step(
                    self, self._runner, batch, self.segment_steps, feedback, state_at
                )
            runner = self._runner(batch, feedback, state_at=state_at, prepared=prepared)
            return runner.train_step(prepared, self.params)
        program, values = self.interpret(batch, feedback)
        grads = program.backward(self.backend.xp, values, program.graph.loss)
        named = {name: grads[key] for name, key in program.graph.params.items()}
        states = {name: values[k] for name, k in state_keys(program, state_at).items()}
        return float(values[program.graph.loss]), named, states

    def loss_and_grads(self, batch: dict, feedback: str = "teacher") -> tuple[float, dict]:
        """(loss, grads) with grads keyed like `params`: dL/dW summed over every time step."""
        if batch.get("y") is None:
            raise DataError("loss_and_grads needs targets: give batch['y']")
        if self.engine == "plan":
            prepared = batching.prepare(self.spec, batch)
            if self.segment_steps and prepared.steps > self.segment_steps:
                return self.train_step(batch, feedback)[:2]
            runner = self._runner(batch, feedback, prepared=prepared)
            return runner.train_step(prepared, self.params, states=False)[:2]
        program, values = self.interpret(batch, feedback)
        grads = program.backward(self.backend.xp, values, program.graph.loss)
        return float(values[program.graph.loss]), {
            name: grads[key] for name, key in program.graph.params.items()
        }

    # ---- saving ------------------------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike) -> str:
        """Write a run folder that `seqgraph.load` (and `load_run`, `predict`, `eval`) reads:
        spec.yaml (vocabulary sizes filled in), data.json and checkpoint.npz (parameters
        only: no optimizer state, so `seqgraph run --resume` cannot continue from it).

        data.json holds the model's data facts (`run_facts`: vocabulary, labels) when it has
        them, as a model from `load_run` does; a bare `Model` built from a spec has none and
        saves `{"kind": "bare"}`, so `load` then predicts from arrays only (ids or vectors),
        not from raw text. Each file is replaced atomically. Returns the folder."""
        import json
        from pathlib import Path

        import yaml

        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        raw = dict(self.spec.raw)
        raw["model"] = dict(raw["model"])
        for role in ("input", "target"):
            io = getattr(self.spec.model, role)
            if io.type == "images":
                raw["model"][role] = {"type": "images", "shape": list(io.shape)}
            else:
                raw["model"][role] = {
                    "type": io.type,
                    ("vocab" if io.type == "ids" else "size"): io.size,
                }
        facts = {
            k: v
            for k, v in (getattr(self, "run_facts", None) or {"kind": "bare"}).items()
            if k not in ("step", "run_dir")
        }
        step = int((getattr(self, "run_facts", None) or {}).get("step", 0))
        arrays = {f"param/{k}": self.backend.to_numpy(v) for k, v in self.params.items()}
        meta = {"step": step, "optimizer_steps": 0, "rng": None, "saved_by": "Model.save"}
        arrays["meta"] = np.array(json.dumps(meta))
        _replace(
            folder / "spec.yaml", lambda h: h.write(yaml.safe_dump(raw, sort_keys=False).encode())
        )
        _replace(folder / "data.json", lambda h: h.write(json.dumps(facts, indent=1).encode()))
        _replace(folder / "checkpoint.npz", lambda h: np.savez(h, **arrays))
        return str(folder)


def _replace(path, write) -> None:
    """Write `path` through a temporary file renamed over it, so a crash leaves no torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
