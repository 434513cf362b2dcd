"""The unrolled computation, with the invariants the engine relies on.

A node's key is `(scope, name, t)`; parameters and constants have `t=None` and exist once, so
every time step that uses a parameter points at the same node. A node stores its kind, op,
attrs and the ORDERED tuple of input keys; that tuple is the truth. As a networkx
MultiDiGraph (`Graph.nx`, built when asked for) the edges mirror it (one edge per input
position, so `mul(x, x)` has two).
"""

from __future__ import annotations

import gc
import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

import networkx as nx

from seqgraph.engine import ops
from seqgraph.errors import GraphError

Key = tuple  # (scope, name, t)
KINDS = ("param", "input", "const", "op")
T = TypeVar("T", bound=Hashable)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while unrolling or lowering a long graph.

    Both allocate millions of small dicts, tuples and lists and free almost none, and each
    of the collector's full passes walks every object alive, so the passes a long build
    triggers cost more than the build itself (a lowering at T = 10,000 spent most of its
    time there). A cycle left as garbage meanwhile is reclaimed by the collector's next pass
    once it runs again. Leaves it off if it was off. Also a decorator (`@collector_paused()`).

    On the way out, the objects the build made go straight to the oldest generation
    (`gc.freeze` then `gc.unfreeze`: two list splices, no walk) instead of staying in the
    youngest, whose next pass would walk every one of them at once (seconds after a
    lowering at T = 10,000) only to find them alive and promote them. Nothing is exempt from
    collection: a full pass, when the collector's own thresholds call one, sees them all.
    Not while the process keeps objects frozen itself (`gc.freeze` before a fork, say):
    `gc.unfreeze` would thaw those too."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def topological_order(
    items: Iterable[T],
    inputs: Callable[[T], Iterable[T]],
    priority: Callable[[T], Any] | None = None,
) -> list[T]:
    """`items` ordered so that each comes after all of its `inputs` (Kahn's algorithm, no
    recursion, so a 100,000-step chain is fine). The one topological sort of seqgraph.

    Stable and deterministic: of the items ready at the same time, the one with the smallest
    `priority(item)` goes first; equal priorities, or no `priority`, go in the order the items
    became ready, and the items without inputs in the order given. Without `priority` the
    order is breadth-first (all items with no inputs, then those they alone enable, ...),
    the order of `networkx.topological_sort` for a graph whose nodes and edges were added in
    the same order; `Graph.order` relies on that, so its order (hence every sum of
    gradients and every plan built from it) stays what networkx gave. An input listed twice
    counts once. Raises GraphError on a cycle (naming one) or an input not among `items`.
    """
    items = list(items)
    return _ordered(items, map(inputs, items), inputs, priority)


def _ordered(items: list, input_lists: Iterable, inputs: Callable, priority) -> list:
    """`topological_order` with each item's inputs handed in, in the items' order
    (`input_lists`), so that a caller holding them in a list is spared a lookup per item;
    `inputs` still names a cycle."""
    index = dict(zip(items, range(len(items))))  # item -> its number, built in C
    if len(index) != len(items):
        raise GraphError("topological_order: an item is listed twice")
    waiting = [0] * len(items)  # inputs not yet placed
    readers: list[list[int]] = [[] for _ in items]
    number, found = index.__getitem__, iter(input_lists)
    for i in range(len(items)):
        try:
            # set(map(...)): the set a comprehension makes (the same insertions, so the same
            # iteration order), without a comprehension's call per item (millions at T=10^4)
            sources = set(map(number, next(found)))
        except KeyError as missing:
            raise GraphError(
                f"{items[i]!r} depends on {missing.args[0]!r}, which is not among the items "
                "to order"
            ) from None
        waiting[i] = len(sources)
        for j in sources:
            readers[j].append(i)
    starts = [i for i, n in enumerate(waiting) if not n]
    if priority is None:
        order = _breadth_first(starts, waiting, readers)
    else:
        order = _by_priority(starts, waiting, readers, [priority(item) for item in items])
    if len(order) < len(items):
        raise GraphError(f"a cycle: {_cycle(items, inputs, waiting)}")
    return [items[i] for i in order]


def _breadth_first(ready: list[int], waiting: list[int], readers: list[list[int]]) -> list[int]:
    queue, order = deque(ready), []
    while queue:
        i = queue.popleft()
        order.append(i)
        for reader in readers[i]:
            waiting[reader] -= 1
            if not waiting[reader]:
                queue.append(reader)
    return order


def _by_priority(
    ready: list[int], waiting: list[int], readers: list[list[int]], rank: list
) -> list[int]:
    heap = [(rank[i], n, i) for n, i in enumerate(ready)]  # n: the order they became ready
    heapq.heapify(heap)
    count, order = len(heap), []
    while heap:
        i = heapq.heappop(heap)[2]
        order.append(i)
        for reader in readers[i]:
            waiting[reader] -= 1
            if not waiting[reader]:
                heapq.heappush(heap, (rank[reader], count, reader))
                count += 1
    return order


def _cycle(items: list, inputs: Callable, waiting: list[int]) -> str:
    """One cycle among the items left waiting (each waits on another waiting one), walked
    from the first of them."""
    stuck = {item for item, n in zip(items, waiting, strict=True) if n}
    path, seen = [], {}
    item = next(item for item in items if item in stuck)
    while item not in seen:
        seen[item] = len(path)
        path.append(item)
        item = next(source for source in inputs(item) if source in stuck)
    return " -> ".join(repr(x) for x in [*path[seen[item] :], item])


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
    """An unrolled model: nodes, their order, and the roles (loss, outputs, inputs) they play.

    `nodes` holds each node's record ({kind, op, inputs, attrs, ...}) in the order added;
    `nx` is the same graph as a networkx MultiDiGraph (an edge per input position), built
    the first time something asks for it (rendering, `Model.graph`, `describe`). The
    interpreter and the plan read the records alone, and the edges' dicts were most of an
    unrolled graph's memory (2.9 of 3.8 MiB for a 100-step LSTM layer), kept for as long
    as its plan runs."""

    nodes: dict[Key, dict] = field(default_factory=dict)
    params: dict[str, Key] = field(default_factory=dict)  # model parameter name -> node key
    param_info: dict[str, ParamInfo] = field(default_factory=dict)
    inputs: dict[Key, dict] = field(default_factory=dict)  # data node key -> {role, ...}
    outputs: dict[str, Any] = field(default_factory=dict)  # role -> key or list of keys
    loss: Key | None = None
    state_grads: bool = False  # initial states are differentiated too (spec.unroll: state_seeds)
    _order: list[Key] | None = None
    _nx: nx.MultiDiGraph | None = None

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The graph as a networkx MultiDiGraph: the records as node data, an edge from each
        input to its reader keyed by the input's position (built once, then kept)."""
        if self._nx is None:
            self._nx = nx.MultiDiGraph()
            for key, record in self.nodes.items():
                self._add_to_nx(key, record)
        return self._nx

    def _add_to_nx(self, key: Key, record: dict) -> None:
        self._nx.add_node(key, **record)
        for position, source in enumerate(record["inputs"]):
            self._nx.add_edge(source, key, key=position)

    def edge_count(self) -> int:
        """How many edges the graph has: one per input position of every node."""
        return sum(len(record["inputs"]) for record in self.nodes.values())

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
        if key in self.nodes:
            raise GraphError(f"node {key_str(key)} added twice")
        if kind in ("const", "param") and len(key) == 3 and key[2] is not None:
            # the plan loads constants once, as classes outside time (`Plan._fill_consts`)
            raise GraphError(f"{kind} node {key_str(key)} must be outside time (t=None)")
        for source in inputs:
            if source not in self.nodes:
                raise GraphError(f"node {key_str(key)} uses {key_str(source)}, which is not built")
        record = dict(kind=kind, op=op, inputs=tuple(inputs), attrs=attrs or {}, **meta)
        self.nodes[key] = record
        if self._nx is not None:
            self._add_to_nx(key, record)
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
        return self.nodes[key]

    def records(self) -> dict[Key, dict]:
        """key -> node record (the graph's own dicts), in the order nodes were added: one
        dict copy of the node table (the lowering starts with this, over every node)."""
        return dict(self.nodes)

    def order(self) -> list[Key]:
        """Nodes in a topological order: `topological_order` without a priority, breadth-first
        from the nodes in the order they were added, i.e. networkx's `topological_sort`
        order, which the interpreter's gradient sums and every plan were built on. Insertion
        order alone would also be topological (`add` needs inputs first), but would change
        the order gradients are summed in, hence the last bits of the numbers."""
        if self._order is None:  # the records' inputs in insertion order: no lookup per node
            keys, records = list(self.nodes), self.nodes.values()
            inputs = map(itemgetter("inputs"), records)
            self._order = _ordered(keys, inputs, lambda k: self.nodes[k]["inputs"], None)
        return self._order

    def __repr__(self) -> str:
        kinds = dict.fromkeys(KINDS, 0)
        steps = set()
        for key, kind in ((k, record["kind"]) for k, record in self.nodes.items()):
            kinds[kind] += 1
            if key[2] is not None:
                steps.add(key[2])
        counts = ", ".join(f"{n} {kind}s" for kind, n in kinds.items() if n)
        span = f"steps t={min(steps)}..{max(steps)}" if steps else "no steps"
        names = list(self.params)
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        loss = key_str(self.loss) if self.loss is not None else "none"
        return (
            f"Graph({len(self.nodes)} nodes ({counts}), "
            f"{self.edge_count()} edges, {span}; params {shown or 'none'}; loss {loss})"
        )

    def describe(self, key: Key, values: dict | None = None) -> str:
        """One node, readably: `l0/r#12@0 = sigmoid(l0/t#11@0)` with its attrs, then where it
        comes from (`source`), its role or parameter, its shape when known (a parameter's
        always; any node's when `values` holds it, e.g. from `Model.interpret`) and its users.
        """
        if key not in self.nodes:
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
