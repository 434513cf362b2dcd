"""The unrolled computation as a networkx MultiDiGraph, with the invariants the engine relies on.

A node's key is `(scope, name, t)`; parameters and constants have `t=None` and exist once, so
every time step that uses a parameter points at the same node. A node stores its kind, op,
attrs and the ORDERED tuple of input keys; that tuple is the truth and the edges mirror it
(one edge per input position, so `mul(x, x)` has two).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from seqgraph.engine import ops
from seqgraph.errors import GraphError

Key = tuple  # (scope, name, t)
KINDS = ("param", "input", "const", "op")


def key_str(key: Key) -> str:
    scope, name, t = key
    return f"{scope}/{name}" + ("" if t is None else f"@{t}")


@dataclass
class ParamInfo:
    """What a parameter node needs to be created: its shape and its initialiser."""

    shape: tuple[int, ...]
    init: dict
    fill: dict | None = None  # {parts, index, value} filled after init


@dataclass
class Graph:
    """An unrolled model: nodes, their order, and the roles (loss, outputs, inputs) they play."""

    nx: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    params: dict[str, Key] = field(default_factory=dict)  # model parameter name -> node key
    param_info: dict[str, ParamInfo] = field(default_factory=dict)
    inputs: dict[Key, dict] = field(default_factory=dict)  # data node key -> {role, ...}
    outputs: dict[str, Any] = field(default_factory=dict)  # role -> key or list of keys
    loss: Key | None = None
    state_grads: bool = False  # initial states are differentiated too (spec.unroll: state_seeds)
    _order: list[Key] | None = None

    def add(
        self,
        key: Key,
        kind: str,
        op: str | None = None,
        inputs: tuple = (),
        attrs: dict | None = None,
        **meta,
    ) -> Key:
        """Add a node; its inputs must already exist (so insertion order is topological)."""
        if key in self.nx:
            raise GraphError(f"node {key_str(key)} added twice")
        for source in inputs:
            if source not in self.nx:
                raise GraphError(f"node {key_str(key)} uses {key_str(source)}, which is not built")
        self.nx.add_node(key, kind=kind, op=op, inputs=tuple(inputs), attrs=attrs or {}, **meta)
        for position, source in enumerate(inputs):
            self.nx.add_edge(source, key, key=position)
        self._order = None
        return key

    def add_param(self, name: str, key: Key, info: ParamInfo) -> Key:
        self.params[name] = key
        self.param_info[name] = info
        return self.add(key, "param", param=name)

    def add_input(self, key: Key, **role) -> Key:
        self.inputs[key] = role
        return self.add(key, "input", **role)

    def node(self, key: Key) -> dict:
        return self.nx.nodes[key]

    def order(self) -> list[Key]:
        """Nodes in a topological order (stable for a given build; no recursion)."""
        if self._order is None:
            self._order = list(nx.topological_sort(self.nx))
        return self._order

    def __repr__(self) -> str:
        kinds = dict.fromkeys(KINDS, 0)
        steps = set()
        for key, kind in self.nx.nodes(data="kind"):
            kinds[kind] += 1
            if key[2] is not None:
                steps.add(key[2])
        counts = ", ".join(f"{n} {kind}s" for kind, n in kinds.items() if n)
        span = f"steps t={min(steps)}..{max(steps)}" if steps else "no steps"
        names = list(self.params)
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        loss = key_str(self.loss) if self.loss is not None else "none"
        return (
            f"Graph({self.nx.number_of_nodes()} nodes ({counts}), "
            f"{self.nx.number_of_edges()} edges, {span}; params {shown or 'none'}; loss {loss})"
        )

    def describe(self, key: Key, values: dict | None = None) -> str:
        """One node, readably: `l0/r#12@0 = sigmoid(l0/t#11@0)` with its attrs, then where it
        comes from (`source`), its role or parameter, its shape when known (a parameter's
        always; any node's when `values` holds it, e.g. from `Model.interpret`) and its users.
        """
        if key not in self.nx:
            raise GraphError(f"no node {key_str(key)} in this graph")
        data = self.node(key)
        attrs = {k: v for k, v in data["attrs"].items() if k != "value"}
        if data["kind"] == "op":
            args = [key_str(k) for k in data["inputs"]] + [f"{k}={v}" for k, v in attrs.items()]
            lines = [f"{key_str(key)} = {data['op']}({', '.join(args)})"]
        else:
            lines = [f"{key_str(key)}: {data['kind']}"]
        meta = {k: v for k, v in data.items() if k not in ("kind", "op", "inputs", "attrs")}
        lines += [f"  {name}: {value}" for name, value in meta.items()]
        shape = _shape(self, key, values or {})
        if shape:
            lines.append(f"  shape: {shape}")
        users = list(dict.fromkeys(self.nx.successors(key)))
        if users:
            more = f" (+{len(users) - 8} more)" if len(users) > 8 else ""
            lines.append(f"  used by: {', '.join(key_str(k) for k in users[:8])}{more}")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise GraphError if an invariant the engine relies on does not hold."""
        for key, data in self.nx.nodes(data=True):
            if data["kind"] not in KINDS:
                raise GraphError(f"node {key_str(key)} has unknown kind {data['kind']!r}")
            if data["kind"] == "op":
                op = ops.OPS.get(data["op"])
                if op is None:
                    raise GraphError(f"node {key_str(key)} uses unknown op {data['op']!r}")
                if op.arity != ops.VARIADIC and op.arity != len(data["inputs"]):
                    raise GraphError(f"node {key_str(key)}: {op.name} takes {op.arity} inputs")
            if data["kind"] == "param" and key[2] is not None:
                raise GraphError(f"parameter {key_str(key)} must have t=None")
            edges = sorted((k, u) for u, _, k in self.nx.in_edges(key, keys=True))
            if edges != list(enumerate(data["inputs"])):
                raise GraphError(f"node {key_str(key)}: edges do not mirror its inputs")
        if not nx.is_directed_acyclic_graph(self.nx):
            raise GraphError("the unrolled graph has a cycle")


def _shape(graph: Graph, key: Key, values: dict) -> str:
    """A node's shape and dtype as far as known: from `values`, a parameter's info or a const."""
    data = graph.node(key)
    value = values.get(key, data["attrs"].get("value") if data["kind"] == "const" else None)
    if value is not None and hasattr(value, "shape"):
        return f"{tuple(value.shape)} {value.dtype}"
    if data["kind"] == "param":
        return str(graph.param_info[data["param"]].shape)
    return ""
