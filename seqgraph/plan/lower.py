"""Lower an unrolled graph into an execution plan: a flat list of kernels over fixed buffers.

The interpreter (`autodiff.Program`) walks nodes with a dict of values; a plan is built once
per (spec, steps, batch shape) and then runs `for k in kernels: k()` with no graph, dict or
shape work in the loop. Building it:

1. `analysis.Analysis`: live nodes, shapes, classes (one equation over all steps), and which
   classes sit on a recurrence.
2. `layout.Layout`: one buffer per class stacked over time, views for slices and aliases.
3. Units: a class off every recurrence whose op has a batch rule runs as ONE kernel over all
   steps (input projections, readouts, losses); the rest run per node, in an order that
   respects every dependency (Kahn's algorithm, ties broken by the graph's own order).
4. Backward walks the units in reverse. A parameter's gradient from a per-step class
   (W_hh, b_hh) is not summed step by step: after the loop it is one batched product over
   the stacked step values and gradients (one GEMM for a matmul).
"""

from __future__ import annotations

import heapq
from typing import Any

from seqgraph.engine.graph import Graph, Key
from seqgraph.plan import analysis, fusion, kernels, liveness, rewrites
from seqgraph.plan.analysis import Analysis, class_of
from seqgraph.plan.layout import Layout


class Plan:
    """Kernels for one graph and batch shape. `run` then `gradients`, or `loss_and_grads`."""

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
        batch_derivatives: bool = True,
        merge_siblings: bool | None = None,
    ):
        self.graph, self.batch_derivatives = graph, batch_derivatives
        outputs = list(outputs or []) + [graph.loss]
        self.outputs = set(outputs)
        self.ctx = kernels.Context(xp, module)
        self.ctx.keep_for_vjp = grads
        if merge_siblings is None:  # CuPy fuses a step's elementwise chain into one kernel
            merge_siblings = module != "cupy"  # already; joined blocks would split it
        an = Analysis(graph, leaf_meta, outputs, dtype, full)
        self.an = an = rewrites.rewrite(an, merge_siblings)
        self.layout = Layout(an, self.ctx, graph.loss if grads else None)
        self.batched = self._batched_classes()
        self.units = self._schedule()
        self.compacted = liveness.compact_values(self.layout, self.units, self.batched)
        self.groups = fusion.groups(self) if fuse else [[unit] for unit in self.units]
        self.forward_kernels: list = []
        for run in self.groups:
            self.forward_kernels.extend(self._forward_group(run, grads))
        self._fill_consts()
        self.backward_kernels: list = []
        self.zero: set = set()
        if grads:
            self._emit_backward()
        self._param_slots = [
            (name, self.layout.value[k]) for name, k in graph.params.items() if k in an.live
        ]
        self._loss = self.layout.value[graph.loss]

    # ---- which classes run batched, and in what order -------------------------------------

    def class_rule(self, c, same) -> tuple:
        """(op, first member, input ranks, batch rule, input patterns) of class `c`, whose
        nodes all run `same` = (op, attrs): how one kernel over all steps could compute it."""
        an, lay = self.an, self.layout
        op, attrs = same
        k0 = an.members[c][lay.range[c][0]]
        in_nd = [len(an.meta[i][0]) for i in an.inputs(k0)]
        patterns = [an.input_pattern(c, i) for i in range(len(in_nd))]
        stacked = [p is not None and p[0] == "class" for p in patterns]
        return op, k0, in_nd, analysis.batch_rule(op, attrs, in_nd, stacked), patterns

    def _batched_classes(self) -> dict:
        an, lay, out = self.an, self.layout, {}
        for c in lay.classes:
            same = an.same_op(c)
            if c in an.recurrent or c in lay.source or same is None:
                continue
            op, k0, in_nd, rule, _ = self.class_rule(c, same)
            ins = self._stacked_inputs(c, op, in_nd, k0)
            if rule is not None and ins is not None:
                out[c] = (rule[0], rule[1], ins)
        return out

    def _stacked_inputs(self, cls, op: str, in_nd: list, k0, grad: bool = False):
        out_nd = len(self.an.meta[k0][0])
        pad = op in analysis.ELEMENTWISE
        views = []
        for i, nd in enumerate(in_nd):
            view = self.layout.stacked(cls, i, grad, pad=(out_nd - nd) if pad else 0)
            if view is None and not grad:
                return None
            views.append(view)
        return views

    def _schedule(self) -> list:
        """Units in dependency order: ("class", cls) or ("node", key)."""
        an, lay = self.an, self.layout
        unit_of, index, units, first = {}, {}, [], []
        for k in an.order:
            if k not in an.live or an.kind(k) != "op" or k in lay.alias_of:
                continue
            c = class_of(k)
            unit = ("class", c) if c in self.batched else ("node", k)
            if unit not in index:
                index[unit] = len(units)
                units.append(unit)
                first.append(an.pos[k])
            unit_of[k] = index[unit]
        deps = [set() for _ in units]
        for k, u in unit_of.items():
            for source in an.inputs(k):
                while source in lay.alias_of:
                    source = lay.alias_of[source]
                if source in unit_of and unit_of[source] != u:
                    deps[u].add(unit_of[source])
        users = [[] for _ in units]
        for u, ds in enumerate(deps):
            for d in ds:
                users[d].append(u)
        waiting = [len(ds) for ds in deps]
        ready = [(first[u], u) for u in range(len(units)) if not waiting[u]]
        heapq.heapify(ready)
        order = []
        while ready:
            _, u = heapq.heappop(ready)
            order.append(units[u])
            for v in users[u]:
                waiting[v] -= 1
                if not waiting[v]:
                    heapq.heappush(ready, (first[v], v))
        return order

    # ---- forward -------------------------------------------------------------------------

    def _forward_group(self, run, keep_all: bool) -> list:
        """A fused group's kernels (`fusion.py`): one on CuPy, its ufunc calls on NumPy."""
        if len(run) == 1:
            return self._forward(run[0])
        if self.ctx.name == "cupy":
            return [fusion.cupy_kernel(self, run, keep_all)]
        return [k for unit in run for k in self._forward(unit)]  # NumPy: the ufunc chain

    def _forward(self, unit) -> list:
        an, lay, ctx = self.an, self.layout, self.ctx
        if unit[0] == "class":
            cls = unit[1]
            kind, attrs, ins = self.batched[cls]
            out = lay.value_stack[cls].span(*lay.range[cls])
            op = an.same_op(cls)[0]
            if kind == "reduce_rest":
                return [kernels.reduce_rest(ctx, op, out, ins[0])]
            return [kernels.forward(ctx, op, out, ins, attrs)]
        k = unit[1]
        node = an.node[k]
        total = an.addn_of_class(k)
        if total is not None:
            stacked = lay.value_stack[total].span(*lay.range[total])
            out, m = lay.value[k], ctx.m
            return [lambda: m.sum(stacked, axis=0, out=out)]
        ins = [lay.value[i] for i in node["inputs"]]
        return [kernels.forward(ctx, node["op"], lay.value[k], ins, node["attrs"])]

    def _fill_consts(self) -> None:
        for k in self.an.live:
            if self.an.kind(k) == "const":
                self.load(self.layout.value[k], self.an.node[k]["attrs"]["value"])

    def load(self, dest, host) -> None:
        """Copy host data into a plan buffer (casting to the buffer's dtype)."""
        if self.ctx.name == "cupy":
            dest[...] = self.ctx.m.asarray(host)
        else:
            self.ctx.m.copyto(dest, host, casting="unsafe")

    # ---- backward ------------------------------------------------------------------------

    def _emit_backward(self) -> None:
        from seqgraph.plan.backward import _deferred, emit

        lay = self.layout
        self.grad_compacted = liveness.compact_grads(lay, self.units, self.batched, _deferred(self))
        emit(self)
        liveness.check_grads(lay, self.grad_compacted, self.zero)

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
        for kernel in self.forward_kernels:
            kernel()
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
        for i in self.zero:
            bufs[i].fill(0)
        for kernel in self.backward_kernels:
            kernel()
        return {name: self.layout.grad[k].copy() for name, k in self.graph.params.items()}

    def state_inputs(self) -> list[Key]:
        """The initial-state inputs this plan differentiates (`Graph.state_grads`)."""
        if not self.graph.state_grads:
            return []
        return [k for k, r in self.graph.inputs.items() if r["role"] == "state"]

    def state_gradients(self) -> dict[str, Any]:
        """After `gradients`: dL/d(initial state) by state name (`l0.h0`), fresh copies."""
        grads = self.layout.grad
        return {f"{k[0]}.{k[1]}": grads[k].copy() for k in self.state_inputs() if k in grads}

    def loss_and_grads(self, leaves: dict, params: dict) -> tuple[float, dict]:
        loss = self.run(leaves, params)
        return loss, self.gradients()

    def value(self, key: Key):
        """The value of a node after `run` (a view into the plan's buffers)."""
        return self.layout.value[key]
