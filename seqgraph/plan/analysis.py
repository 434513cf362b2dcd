"""Graph analysis for the execution plan: step classes, recurrences, shapes, and rewrite rules.

A *class* is every node `(scope, name, t)` of one `(scope, name)` over the time steps: the same
equation applied at each step. Folding the unrolled graph onto its classes turns recurrences
into cycles; a class that lies on no cycle does not depend on its own earlier steps, so all of
its steps can run as one kernel over arrays stacked along a leading time axis (time batching).
The planner asks questions ("is this a view?", "may this class run batched?"); the answers
come from each op's record in the op table (`seqgraph.engine.ops.Op`), never from op lists.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import networkx as nx
import numpy as np

from seqgraph.engine import ops
from seqgraph.engine.graph import Graph, Key


def class_of(key: Key) -> tuple:
    """(scope, name) for a per-step node; the key itself for a node outside time."""
    return key if key[2] is None else key[:2]


def batch_rule(op: str, attrs: dict, in_ndims: list, stacked: list) -> tuple | None:
    """How `op` runs over inputs stacked on a new leading time axis, or None if it cannot.

    Returns (kind, attrs): kind "same" runs the op unchanged (attrs with axes made negative),
    "reduce_rest" sums or averages each step's value to one number (a whole-array reduction).
    The op's record says which (`Op.batch`).
    """
    rule = ops.OPS[op].batch
    return None if rule is None else rule(attrs, in_ndims, stacked)


def view_index(op: str, attrs: dict, shape: tuple) -> tuple | None:
    """The index that makes a view op's output from its input (member shape), or None."""
    view = ops.OPS[op].view
    return None if view is None else view(shape, **attrs)


class Analysis:
    """Everything the planner needs to know about one graph and one batch shape."""

    def __init__(self, graph: Graph, leaf_meta: dict, outputs: list, dtype, full: bool):
        self.graph, self.dtype = graph, np.dtype(dtype)
        self.order = list(graph.order())  # a copy: `rewrites` edit it
        self.node = {k: graph.node(k) for k in self.order}
        self.outputs = set(outputs)
        self.const_true = {k for k, r in graph.inputs.items() if full and r["role"] == "mask"}
        self.meta = dict(leaf_meta)
        self.refresh()

    def fork(self) -> Analysis:
        """A copy with its own graph copy (`node`, `order`) to rewrite; the facts derived so
        far are shared until `refresh` derives new ones."""
        other = copy.copy(self)
        other.node, other.order = dict(self.node), list(self.order)
        return other

    def refresh(self) -> None:
        """Liveness, consumers, classes, shapes, recurrences (again after a rewrite)."""
        self.pos = {k: i for i, k in enumerate(self.order)}
        self.live = self._live(list(self.outputs))
        self.consumers: dict[Key, list] = defaultdict(list)
        for k in self.order:
            if k in self.live:
                for position, source in enumerate(self.node[k]["inputs"]):
                    self.consumers[source].append((k, position))
        self.members: dict[tuple, dict] = defaultdict(dict)
        for k in self.order:
            if k in self.live:
                self.members[class_of(k)][k[2]] = k
        self.meta = self._infer()
        self.recurrent = self._recurrent()
        self.needs_grad = self._needs_grad()

    def inputs(self, key: Key) -> tuple:
        return self.node[key]["inputs"]

    def kind(self, key: Key) -> str:
        return self.node[key]["kind"]

    def _live(self, outputs: list) -> set:
        """Ancestors of the requested outputs (dead-node elimination)."""
        live, stack = set(outputs), list(outputs)
        while stack:
            for source in self.node[stack.pop()]["inputs"]:
                if source not in live:
                    live.add(source)
                    stack.append(source)
        return live

    def _infer(self) -> dict:
        """(shape, dtype) of every live node; each distinct op signature is evaluated once."""
        import array_api_compat.numpy as xp

        meta, memo = dict(self.meta), {}
        for k in self.order:
            if k not in self.live or k in meta:
                continue
            node = self.node[k]
            if node["kind"] in ("param", "const"):
                shape = (
                    self.graph.param_info[node["param"]].shape
                    if node["kind"] == "param"
                    else np.shape(node["attrs"]["value"])
                )
                meta[k] = (tuple(shape), self.dtype)
                continue
            signature = tuple(meta[i] for i in node["inputs"])
            memo_key = (node["op"], repr(sorted(node["attrs"].items())), signature)
            if memo_key not in memo:
                zeros = [np.zeros(s, d) for s, d in signature]
                with np.errstate(all="ignore"):
                    out = ops.OPS[node["op"]].forward(xp, *zeros, **node["attrs"])
                memo[memo_key] = (tuple(out.shape), np.dtype(out.dtype))
            meta[k] = memo[memo_key]
        return meta

    def _recurrent(self) -> set:
        """Classes on a cycle of the graph folded over time: they must run step by step."""
        folded = nx.DiGraph()
        folded.add_nodes_from(self.members)
        for k in self.live:
            for source in self.node[k]["inputs"]:
                folded.add_edge(class_of(source), class_of(k))
        out = set()
        for part in nx.strongly_connected_components(folded):
            if len(part) > 1 or any(folded.has_edge(c, c) for c in part):
                out |= part
        return out

    def _needs_grad(self) -> set:
        needs = set()
        if self.graph.state_grads:  # recomputation in segments hands these back
            needs = {k for k, r in self.graph.inputs.items() if r["role"] == "state"}
        for k in self.order:
            floating = self.meta[k][1].kind == "f" if k in self.meta else False
            if (
                k in self.live
                and floating
                and (self.kind(k) == "param" or any(i in needs for i in self.node[k]["inputs"]))
            ):
                needs.add(k)
        return needs

    def has_grad(self, loss: Key) -> set:
        """Nodes that receive a gradient from `loss` (backward skips every other node)."""
        out = {loss}
        for k in reversed(self.order):
            if k in out and self.kind(k) == "op":
                out.update(i for i in self.node[k]["inputs"] if i in self.needs_grad)
        return out

    def stackable(self, cls: tuple) -> bool:
        """A per-step class whose steps are contiguous and share one shape and dtype."""
        members = self.members[cls]
        if None in members:
            return False
        ts = sorted(members)
        return (
            ts == list(range(ts[0], ts[-1] + 1))
            and len({self.meta[k] for k in members.values()}) == 1
        )

    def same_op(self, cls: tuple):
        """(op, attrs) if every member of the class applies the same op, else None."""
        nodes = [self.node[k] for k in self.members[cls].values()]
        first = nodes[0]
        if first["kind"] != "op" or any(
            n["op"] != first["op"] or n["attrs"] != first["attrs"] for n in nodes
        ):
            return None
        return first["op"], first["attrs"]

    def input_pattern(self, cls: tuple, position: int):
        """How input `position` of a class varies with t.

        ("shared", key): one node for every step (a parameter, a constant);
        ("class", D, d, boundary): step t reads class D at t + d, except the boundary step
        (the first when d = -1, the last when d = +1) which reads node `boundary`; or None.
        """
        members = self.members[cls]
        sources = {t: self.node[k]["inputs"][position] for t, k in members.items()}
        first = next(iter(sources.values()))
        if all(s == first for s in sources.values()):
            return ("shared", first) if first[2] is None else None
        ts = sorted(sources)
        for d, edge in ((0, None), (-1, ts[0]), (1, ts[-1])):
            inner = [t for t in ts if t != edge] or ts
            target = class_of(sources[inner[0]])
            if len(target) != 2 or any(sources[t] != (*target, t + d) for t in inner):
                continue
            if edge is None or sources[edge] == (*target, edge + d):
                return ("class", target, d, None)
            boundary = sources[edge]
            if boundary[2] is None:
                return ("class", target, d, boundary)
        return None

    def addn_of_class(self, key: Key):
        """The class whose every step `key` (an addn: `Op.variadic_sum`) sums, in order; None
        if not that shape."""
        node = self.node[key]
        if node["kind"] != "op" or not ops.OPS[node["op"]].variadic_sum or not node["inputs"]:
            return None
        cls = class_of(node["inputs"][0])
        members = self.members.get(cls, {})
        if (
            len(cls) == 2
            and self.stackable(cls)
            and list(node["inputs"]) == [members[t] for t in sorted(members)]
        ):
            return cls
        return None
