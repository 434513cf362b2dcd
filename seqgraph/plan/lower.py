"""Lower an unrolled graph into an execution plan: a flat list of kernels over fixed buffers.

The interpreter (`autodiff.Program`) walks nodes with a dict of values; a plan is built once
per (spec, steps, batch shape) and then runs `for k in kernels: k()` with no graph, dict or
shape work in the loop. `Plan` builds it as a straight pipeline, each stage taking what the
ones before it handed on:

1. `analysis.Analysis(graph, ...) -> Analysis`: live nodes, shapes, classes (one equation
   over all steps), and which classes sit on a recurrence.
2. `rewrites.rewrite(analysis) -> Analysis`: the rewritten graph's analysis (common
   subexpressions, fused gate products, bias moves, sibling merges).
3. `layout.Layout(analysis, ctx) -> Layout`: one buffer per class stacked over time, views
   for slices and aliases; where the backward chains compile (`inline_derivatives`), an
   activation over its pre-activation's column block (an LSTM's gates) and dL/dy of
   y = f(x) on a recurrence where dL/dx goes (an RNN's dL/dh).
4. `schedule.schedule(analysis, layout, outputs) -> Schedule`: the classes that run as ONE
   kernel over all steps, and every unit in dependency order.
5. `liveness.dead_values(schedule)`, `liveness.dead_grads(schedule, deferred)`: the classes
   whose buffer one step can hold; the layout shrinks them (`Layout.reuse_values`,
   `Layout.reuse_grads`). Between the two, `Layout.add_grads` lays out the gradient
   buffers, a gradient stack in the buffer of a value that backward never reads where one
   fits (`liveness.dead_in_backward`), or over the activations that backward reads at
   each step before it writes there (`liveness.gradients_over_activations`).
   `schedule.deferred` names the per-step classes whose parameter gradients are summed
   after the loop, as one batched product over the stacked steps.
   `liveness.rolling_grads`: the gradient buffers two steps in turn can hold (an LSTM's
   dc; `Layout.roll_grads`), given their full stacks back where backward would zero-fill
   them.
6. `forward.emit(schedule, ...) -> Kernels` and `backward.emit(schedule, ...) -> Backward`:
   the kernels, forward in unit order (fused where `fusion.groups` says), backward in
   reverse, each with a listing entry, so `print(plan)` shows what runs (`listing.py`).
"""

from __future__ import annotations

from typing import Any

from seqgraph.engine.graph import Graph, Key, collector_paused
from seqgraph.plan import (
    backward,
    ckernels,
    forward,
    fusion,
    kernels,
    listing,
    liveness,
    programs,
    rewrites,
)
from seqgraph.plan import schedule as scheduling
from seqgraph.plan.analysis import Analysis, class_of
from seqgraph.plan.layout import Layout


class Plan:
    """Kernels for one graph and batch shape: `run` (or `execute`), then `gradients`.

    `print(plan)` lists its buffers and kernels (`listing.py`); `repr(plan)` sums it up."""

    @collector_paused()  # see there: the lowering allocates millions of objects
    def __init__(
        self,
        graph: Graph,
        leaf_meta: dict,
        xp,
        module: str,
        dtype,
        outputs: list[Key] | None = None,
        full: bool = False,
        grads: bool = True,
        fuse: bool = True,
        batch_derivatives: bool | None = None,
        merge_siblings: bool | None = None,
    ):
        compiles = fuse and module == "numpy" and ckernels.enabled()
        if batch_derivatives is None:  # compiled chains compute them inline, at no cost
            batch_derivatives = not compiles
        self.graph, self.batch_derivatives = graph, batch_derivatives
        outputs = list(outputs or []) + [graph.loss]
        self.outputs = set(outputs)
        self.ctx = kernels.Context(xp, module, keep_for_vjp=grads)
        if merge_siblings is None:  # CuPy fuses a step's elementwise chain into one kernel
            merge_siblings = module != "cupy"  # already; joined blocks would split it
        an = Analysis(graph, leaf_meta, outputs, dtype, full)
        self.an = an = rewrites.rewrite(an, merge_siblings)
        # activations over their pre-activations, gradients over both, and dL/dy where dL/dx
        # goes: where the backward chains compile, so that each reads a step's values before
        # it writes over them, and no local factor is made for all steps before the loop
        over = grads and compiles and not batch_derivatives
        self.layout = Layout(an, self.ctx, inline_derivatives=over)
        self.schedule = sched = scheduling.schedule(an, self.layout, self.outputs, compiles)
        run_order = liveness.unit_positions(sched)  # for the three liveness passes
        self.compacted = liveness.dead_values(sched, run_order)
        self.layout.reuse_values(self.compacted)
        self.overwritten = liveness.overwritten_inputs(sched) if grads else {}
        for reader, position in self.overwritten.values():
            self.ctx.dead_inputs.add(self.ctx.address(sched.batched[reader][2][position]))
        if grads:  # gradient stacks may take value buffers that backward never reads
            hosts = liveness.dead_in_backward(an, self.layout)
            own = list(self.overwritten) + liveness.gradients_over_activations(an, self.layout)
            self.layout.add_grads(graph.loss, hosts, own=own)
        self.deferred = scheduling.deferred(sched) if grads else {}
        self.grad_compacted = liveness.dead_grads(sched, self.deferred, run_order) if grads else {}
        self.layout.reuse_grads(self.grad_compacted)
        self.rolled = liveness.rolling_grads(sched, self.deferred, run_order) if grads else {}
        del run_order  # half a million entries at T = 10,000: not kept with the plan
        self.layout.roll_grads(self.rolled)
        self.groups = fusion.groups(sched) if fuse else [[unit] for unit in sched.units]
        self.forward = forward.emit(sched, self.ctx, self.groups, grads)
        self._forward_run = self._linked(self.forward.kernels)
        self._forward_lends = programs.borrow(self._forward_run)
        self._fill_consts()
        self.backward: backward.Backward | None = None
        if grads:
            self.emit_backward()
        self._param_slots = [
            (name, self.layout.value[k]) for name, k in graph.params.items() if k in an.live
        ]
        self._loss = self.layout.value[graph.loss]

    def emit_backward(self) -> None:
        """(Re)build the backward kernels over this plan's context (its array module); where
        a two-step gradient buffer is not written before it is read, with its full stack."""
        self.backward = self._emit_backward()
        if not liveness.rings_written_first(self.layout, self.rolled, self.backward.zero):
            self.layout.restore_grads(self.rolled)
            self.rolled = {}
            self.backward = self._emit_backward()
        liveness.check_grads(self.layout, self.grad_compacted, self.backward.zero)
        liveness.check_own_hosts(self.layout, self.backward.zero)
        self._backward_run = self._linked(self.backward.kernels.kernels, self.backward.transposes)
        self._backward_lends = programs.borrow(self._backward_run)

    def _linked(self, kernels: list, transposes: list = ()) -> list:
        """What runs: the kernels, runs of them as step programs on NumPy (`programs.py`),
        which pack the weights they multiply by step after step: the parameters and
        backward's W^T copies, neither written again once a run reads them."""
        if self.ctx.name != "numpy":
            return kernels
        values = self.layout.value  # a parameter that does not reach the loss has none
        params = [values[k] for k in self.graph.params.values() if k in values]
        return programs.link(kernels, [*params, *transposes])

    def _emit_backward(self) -> backward.Backward:
        return backward.emit(
            self.schedule,
            self.ctx,
            self.deferred,
            self.graph.loss,
            list(self.graph.params.values()) + self.state_inputs(),
            self.batch_derivatives,
        )

    @property
    def batched(self) -> dict:
        return self.schedule.batched

    @property
    def units(self) -> list:
        return self.schedule.units

    @property
    def forward_kernels(self) -> list:
        return self.forward.kernels

    @property
    def backward_kernels(self) -> list:
        return self.backward.kernels.kernels if self.backward is not None else []

    def __str__(self) -> str:
        return listing.text(self)

    def __repr__(self) -> str:
        steps = {k[2] for k in self.an.live if isinstance(k[2], int)}
        return (
            f"<Plan {self.ctx.name} {self.an.dtype.name}: {len(steps)} steps, "
            f"{len(self.forward_kernels)} forward + {len(self.backward_kernels)} backward "
            f"kernels, {len(self.layout.classes)} classes, "
            f"{len(self.layout.grad_buffers)} gradient buffers>"
        )

    def _fill_consts(self) -> None:
        nodes = self.an.node
        for k in self.an.members:  # a constant is outside time (`Graph`): its own class
            if len(k) == 3 and nodes[k]["kind"] == "const":
                self.load(self.layout.value[k], nodes[k]["attrs"]["value"])

    def load(self, dest, host) -> None:
        """Copy host data into a plan buffer (casting to the buffer's dtype)."""
        if self.ctx.name == "cupy":
            dest[...] = self.ctx.m.asarray(host)
        else:
            self.ctx.m.copyto(dest, host, casting="unsafe")

    # ---- running -------------------------------------------------------------------------

    def run(self, leaves: dict[Key, Any], params: dict[str, Any]) -> float:
        """Copy in the batch (host arrays by node key) and parameters, run forward."""
        import numpy as np

        for dest, keys, stacked in self.leaf_slots():
            self.load(dest, np.stack([leaves[k] for k in keys]) if stacked else leaves[keys[0]])
        return self.execute(params)

    def execute(self, params: dict[str, Any]) -> float:
        """Copy in the parameters and run forward (the batch is already loaded); the loss."""
        copy = self.ctx.m.copyto
        for name, dest in self._param_slots:
            copy(dest, params[name])
        _run(self._forward_run, self._forward_lends)
        return float(self._loss)

    def leaf_slots(self) -> list:
        """(buffer, keys, stacked) for every data node: a class's steps in one buffer (keys in
        step order, stacked True), or a single node."""
        if not hasattr(self, "_slots"):
            an, lay = self.an, self.layout
            self._slots, seen = [], set()
            for k in an.order:
                if k not in an.live or an.kind(k) != "input":
                    continue
                c = class_of(k)
                if c in lay.value_stack and len(c) == 2:
                    if c not in seen:
                        seen.add(c)
                        keys = [an.members[c][t] for t in sorted(an.members[c])]
                        self._slots.append((lay.value_stack[c].span(*lay.range[c]), keys, True))
                else:
                    self._slots.append((lay.value[k], [k], False))
        return self._slots

    def gradients(self) -> dict[str, Any]:
        """Run backward (after `run`); a fresh copy of every parameter's gradient."""
        bufs = self.layout.grad_buffers
        for i in self.backward.zero if self.backward is not None else ():
            bufs[i].fill(0)
        if self.backward is not None:
            _run(self._backward_run, self._backward_lends)
        grads, zeros = self.layout.grad, self.ctx.m.zeros
        # A parameter that does not reach the loss has no gradient buffer: its gradient is 0.
        return {
            name: grads[k].copy()
            if k in grads
            else zeros(self.graph.param_info[name].shape, dtype=self.an.dtype)
            for name, k in self.graph.params.items()
        }

    def state_inputs(self) -> list[Key]:
        """The initial-state inputs this plan differentiates (`Graph.state_grads`)."""
        if not self.graph.state_grads:
            return []
        return [k for k, r in self.graph.inputs.items() if r["role"] == "state"]

    def state_gradients(self) -> dict[str, Any]:
        """After `gradients`: dL/d(initial state) by state name (`l0.h0`), fresh copies."""
        grads = self.layout.grad
        return {f"{k[0]}.{k[1]}": grads[k].copy() for k in self.state_inputs() if k in grads}


def _run(kernels: list, lend: bool) -> None:
    """Call each kernel; with NumPy's BLAS threads lent to the step programs where one of
    them has work to share (`programs.threads_shared`), else without its few microseconds."""
    if lend:
        with programs.threads_shared():
            for kernel in kernels:
                kernel()
    else:
        for kernel in kernels:
            kernel()
