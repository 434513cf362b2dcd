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
import heapq
from collections import Counter, defaultdict
from itertools import compress, repeat
from operator import itemgetter, not_

import networkx as nx
import numpy as np

from seqgraph.engine import ops
from seqgraph.engine.backend import numpy_namespace
from seqgraph.engine.graph import Graph, Key


def class_of(key: Key) -> tuple:
    """(scope, name) for a per-step node; the key itself for a node outside time."""
    return key if key[2] is None else key[:2]


def positions(order: list) -> dict:
    """item -> its index in `order` (a dict built in C: a comprehension over half a million
    nodes costs twice as much, and the lowering makes several)."""
    return dict(zip(order, range(len(order))))


def attrs_key(attrs: dict) -> str:
    """A hashable stand-in for an op's attrs (their values may be lists or arrays); most
    nodes have none, and a repr per node of an unrolled graph adds up."""
    return repr(sorted(attrs.items())) if attrs else ""


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


class AttrsKeys(dict):
    """attrs dict -> `attrs_key(attrs)`, each distinct attrs made once: unrolling gives every
    step's node its own attrs dict with the same items, so attrs of ints, strings, bools and
    None are found by their items and the types of their values (True == 1, but their reprs
    differ; floats are left out, as 0.0 == -0.0); any other attrs by the dict's id (the dict
    kept, so the id stays its own)."""

    def __call__(self, attrs: dict) -> str:
        if not attrs:
            return ""
        values = attrs.values()
        types = tuple(map(type, values))
        if _SCALARS.issuperset(types):
            found = (tuple(attrs), tuple(values), types)
        else:
            found = id(attrs)
        held = self.get(found)
        if held is None:
            held = self[found] = (attrs, attrs_key(attrs))
        return held[1]


_SCALARS = frozenset({int, bool, str, type(None)})
_OP, _ATTRS, _INPUTS = itemgetter("op"), itemgetter("attrs"), itemgetter("inputs")
_FIRST = itemgetter(0)


class _Floating(dict):
    """dtype -> whether it is a floating type, each dtype asked once (`dtype.kind` per node
    adds up over an unrolled graph)."""

    def __missing__(self, dtype) -> bool:
        self[dtype] = dtype.kind == "f"
        return self[dtype]


class Analysis:
    """Everything the planner needs to know about one graph and one batch shape.

    The rewrites edit a fork's copy of the graph through `set_node` (and `order`), then call
    `update`, which derives the facts again for the nodes the edits touched and what they
    reach (`refresh` derives them all from scratch; both give the same facts, and
    `tests/test_plan_analysis.py` holds them to it after every rewrite)."""

    def __init__(self, graph: Graph, leaf_meta: dict, outputs: list, dtype, full: bool):
        self.graph, self.dtype = graph, np.dtype(dtype)
        self.order = list(graph.order())  # a copy: `rewrites` edit it
        self.node = graph.records()  # a copy: `rewrites` edit it
        self.outputs = set(outputs)
        self.const_true = {k for k, r in graph.inputs.items() if full and r["role"] == "mask"}
        self.state_inputs = (
            {k for k, r in graph.inputs.items() if r["role"] == "state"}
            if graph.state_grads  # recomputation in segments hands these back
            else set()
        )
        self.meta = dict(leaf_meta)
        self.edited: dict = {}  # node -> its record before the edits `update` has not seen
        self.refresh()

    def fork(self) -> Analysis:
        """A copy with its own graph copy (`node`, `order`) to rewrite and its own containers
        of derived facts for `update` to change; a fact's inner list or dict is shared until
        `update` replaces it (it never changes one in place)."""
        other = copy.copy(self)
        other.node, other.order = dict(self.node), list(self.order)
        other.pos, other.live, other.meta = dict(self.pos), set(self.live), dict(self.meta)
        other._positioned = other.order if self._positioned is self.order else None
        other.consumers = defaultdict(list, self.consumers)
        other.members = defaultdict(dict, self.members)
        other.class_edges = Counter(self.class_edges)
        other.needs_grad, other.edited = set(self.needs_grad), dict(self.edited)
        other.recurrent, other._facts = set(self.recurrent), {}
        other.member_records = dict(self.member_records)  # lists shared: never changed
        other.by_op = {op: dict(keys) for op, keys in self.by_op.items()}
        return other

    def set_node(self, key: Key, node: dict) -> None:
        """Add node `key` or replace its record (a rewrite's edit; `update` follows)."""
        if key not in self.edited:
            self.edited[key] = self.node.get(key)
        self.node[key] = node
        self._facts.clear()
        self.member_records.pop(key if key[2] is None else key[:2], None)

    def refresh(self) -> None:
        """Liveness, consumers, classes, shapes, recurrences, all derived from scratch: one
        pass over the live nodes in graph order (each node's inputs come before it)."""
        self.pos, self._positioned = positions(self.order), self.order
        self.live, keys_live, records_live = self._live_in_order(list(self.outputs))
        self.consumers: dict[Key, list] = defaultdict(list)
        consumers, groups = self.consumers, {}  # class -> (step -> member, member records)
        meta, needs, keys = dict(self.meta), set(self.state_inputs), AttrsKeys()
        memo: dict = {AttrsKeys: keys}  # as `_shape` keeps it
        edges, by_op = defaultdict(int), defaultdict(dict)
        floating = _Floating()
        for k, node in zip(keys_live, records_live):
            cls = k if k[2] is None else k[:2]  # class_of, inline: once per node and edge
            group = groups.get(cls)
            if group is None:
                group = groups[cls] = ({}, [])
            group[0][k[2]] = k
            group[1].append(node)
            kind = node["kind"]
            if kind == "op":
                by_op[node["op"]][k] = None
            inputs = node["inputs"]
            for position, source in enumerate(inputs):
                consumers[source].append((k, position))
                edges[(source if source[2] is None else source[:2], cls)] += 1
            shape = meta.get(k)
            if shape is None and kind == "op":  # `_shape`, inline: once per node
                attrs = node["attrs"]
                signature = tuple(map(meta.__getitem__, inputs))
                found = (node["op"], keys(attrs) if attrs else "", signature)
                shape = memo.get(found)
                if shape is None:
                    shape = memo[found] = self._evaluate(node, signature)
                meta[k] = shape
            elif shape is None:
                shape = meta[k] = self._shape(node, meta, memo)
            # isdisjoint: the "reads a node that needs it" test in C, not a generator per node
            if floating[shape[1]] and (kind == "param" or not needs.isdisjoint(inputs)):
                needs.add(k)
        self.class_edges: Counter = Counter(edges)  # (source class, class) -> input edges
        self.members: dict[tuple, dict] = defaultdict(dict)
        self.members.update((c, group[0]) for c, group in groups.items())
        # each class's member records, in member order, met on the way (`member_inputs`)
        self.member_records = {c: group[1] for c, group in groups.items()}
        self.meta, self.needs_grad = meta, needs
        self.by_op = dict(by_op)  # op -> its live nodes (a dict as an ordered set)
        self.recurrent = self._recurrent()
        self.edited, self._facts = {}, {}

    def update(self) -> None:
        """The facts `refresh` derives, derived again only where the edits since the last
        derivation (`set_node`, and `order` with the old nodes kept in their order: a new
        list, or a slot replaced by `replace_in_order`) reach:
        the edited nodes, the nodes they make live or dead, and the gradient flags their
        change passes on. What every graph-changing rewrite calls."""
        edited, self.edited, self._facts = self.edited, {}, {}
        if self.order is not self._positioned:  # a new order, not one slot replaced
            self.pos, self._positioned = positions(self.order), self.order
        readers: dict = {}  # source -> its consumers as a set while they change
        born, lost = [], []  # lost: sources that lost a consumer, maybe dead now
        for k, old in edited.items():
            if k not in self.live:
                continue  # a new node, or one dead before: made live below if reached
            self._index_op(k, old, False)
            self._index_op(k, self.node[k], True)
            old_inputs = old["inputs"] if old is not None else ()
            self._unlink(k, old_inputs, readers)
            lost.extend(old_inputs)
            self._link(k, born, readers)
        died = self._sweep(lost, readers)
        for k in died:
            self._index_op(k, self.node[k], False)
        for k in born:
            self._index_op(k, self.node[k], True)
        pos = self.pos
        for source, users in readers.items():
            if len(users) > 1:
                self.consumers[source] = sorted(users, key=lambda r: (pos[r[0]], r[1]))
            elif users:
                self.consumers[source] = list(users)
            else:
                self.consumers.pop(source, None)
        self._update_members(born, died)
        self.meta = self._infer(sorted(born, key=self.pos.__getitem__))
        self.recurrent = self._recurrent()
        # a node that died needs no gradient (unless an initial state handed back), and no
        # live node reads it: its flag goes without passing anything on
        gone = set(died) - self.state_inputs
        self.needs_grad.difference_update(gone)
        self._update_needs_grad([k for k in [*edited, *born, *died] if k not in gone])

    def replace_in_order(self, old: Key, new: Key) -> None:
        """Put node `new` in the place of `old` in `order` (and in `pos`): the one edit of
        the order in place that `update` knows of; any other change of the order assigns
        a new list, and `update` numbers it again (half a million positions)."""
        at = self.pos.pop(old)
        self.order[at] = new
        self.pos[new] = at

    def _index_op(self, key: Key, node: dict | None, present: bool) -> None:
        """Enter the live op node `key` (record `node`) into `by_op`, or take it out."""
        if node is not None and node["kind"] == "op":
            if present:
                self.by_op.setdefault(node["op"], {})[key] = None
            else:
                self.by_op[node["op"]].pop(key, None)

    def nodes_of(self, *op_names: str) -> list:
        """The live nodes that apply any of these ops, in graph order: what a rewrite that
        looks for one op scans, instead of every node."""
        keys = [k for op in op_names for k in self.by_op.get(op, ())]
        return sorted(keys, key=self.pos.__getitem__)

    def _readers(self, source: Key, readers: dict) -> set:
        if source not in readers:
            readers[source] = set(self.consumers.get(source, ()))
        return readers[source]

    def _link(self, key: Key, born: list, readers: dict) -> None:
        """Register the live node `key` as the consumer of its inputs; an input not yet live
        becomes live and registers its own (iterative: unrolled graphs are deep)."""
        stack = [key]
        while stack:
            k = stack.pop()
            cls = class_of(k)
            for position, source in enumerate(self.node[k]["inputs"]):
                self._readers(source, readers).add((k, position))
                self.class_edges[(class_of(source), cls)] += 1
                if source not in self.live:
                    self.live.add(source)
                    born.append(source)
                    stack.append(source)

    def _unlink(self, key: Key, inputs: tuple, readers: dict) -> None:
        """Drop `key`'s registration as the consumer of `inputs` (its inputs before an edit)."""
        cls = class_of(key)
        for position, source in enumerate(inputs):
            self._readers(source, readers).discard((key, position))
            edge = (class_of(source), cls)
            self.class_edges[edge] -= 1
            if not self.class_edges[edge]:
                del self.class_edges[edge]

    def _sweep(self, lost: list, readers: dict) -> list:
        """Dead-node elimination from the nodes that lost a consumer: one no live node reads
        and no caller asked for dies, and its inputs lose a consumer in turn."""
        died, stack = [], list(lost)
        while stack:
            k = stack.pop()
            if k not in self.live or k in self.outputs or self._readers(k, readers):
                continue
            self.live.discard(k)
            died.append(k)
            inputs = self.node[k]["inputs"]
            self._unlink(k, inputs, readers)
            stack.extend(inputs)
        return died

    def _update_members(self, born: list, died: list) -> None:
        """Class members after nodes were born or died; every class's members in graph
        order, and the classes in the order of their first member (as `refresh` makes)."""
        changes: dict = defaultdict(list)
        for k in born + died:
            changes[class_of(k)].append(k)
        for cls in changes:
            self.member_records.pop(cls, None)
        pos = self.pos
        for cls, keys in changes.items():
            kept = [k for k in self.members.get(cls, {}).values() if k in self.live]
            kept += [k for k in keys if k in self.live and k[2] not in self.members.get(cls, {})]
            if kept:
                self.members[cls] = {k[2]: k for k in sorted(kept, key=pos.__getitem__)}
            else:
                self.members.pop(cls, None)
        if changes:
            ordered = sorted(self.members.items(), key=lambda c: pos[next(iter(c[1].values()))])
            self.members = defaultdict(dict, ordered)

    def _update_needs_grad(self, touched: list) -> None:
        """Gradient flags of the touched nodes, passed on to their readers while they change
        (in graph order, so each node is decided after its inputs)."""
        pos, heap, queued = self.pos, [], set()
        for k in touched:
            if k not in queued:
                queued.add(k)
                heapq.heappush(heap, (pos.get(k, -1), len(queued), k))
        while heap:
            k = heapq.heappop(heap)[2]
            needed = self._needs(k)
            if needed == (k in self.needs_grad):
                continue
            if needed:
                self.needs_grad.add(k)
            else:
                self.needs_grad.discard(k)
            for reader, _ in self.consumers.get(k, ()):
                if reader not in queued:
                    queued.add(reader)
                    heapq.heappush(heap, (pos[reader], len(queued), reader))

    def _needs(self, key: Key) -> bool:
        """Whether `key` needs a gradient: an initial state handed back, or a live floating
        node that is a parameter or reads one that needs it."""
        if key in self.state_inputs:
            return True
        meta = self.meta.get(key)
        if key not in self.live or meta is None or meta[1].kind != "f":
            return False
        node = self.node[key]  # isdisjoint: the test of its inputs in C
        return node["kind"] == "param" or not self.needs_grad.isdisjoint(node["inputs"])

    def inputs(self, key: Key) -> tuple:
        return self.node[key]["inputs"]

    def kind(self, key: Key) -> str:
        return self.node[key]["kind"]

    def _live_in_order(self, outputs: list) -> tuple[set, list, list]:
        """(the ancestors of the requested outputs (dead-node elimination), those nodes in
        graph order, their records): one sweep of the graph order backwards, each live
        node's inputs added at once (a set update in C, not a test and a push per edge),
        since every reader comes after its inputs; the nodes and records it meets are what
        `refresh` walks next, without looking either up again."""
        live, nodes, keys, records = set(outputs), self.node, [], []
        for k in reversed(self.order):
            if k in live:
                node = nodes[k]
                live.update(node["inputs"])
                keys.append(k)
                records.append(node)
        keys.reverse()
        records.reverse()
        return live, keys, records

    def _infer(self, keys) -> dict:
        """`meta` with the (shape, dtype) of each of `keys` (live nodes, in graph order) it
        lacks."""
        meta, memo, nodes = dict(self.meta), {}, self.node
        for k in keys:
            if k not in meta:
                meta[k] = self._shape(nodes[k], meta, memo)
        return meta

    def _shape(self, node: dict, meta: dict, memo: dict) -> tuple:
        """(shape, dtype) of one node whose inputs `meta` has; each distinct op signature is
        evaluated once (on zeros) per `memo`."""
        if node["kind"] in ("param", "const"):
            shape = (
                self.graph.param_info[node["param"]].shape
                if node["kind"] == "param"
                else np.shape(node["attrs"]["value"])
            )
            return tuple(shape), self.dtype
        signature = tuple(map(meta.__getitem__, node["inputs"]))
        attrs, keys = node["attrs"], memo.get(AttrsKeys)
        if keys is None:
            keys = memo[AttrsKeys] = AttrsKeys()
        memo_key = (node["op"], keys(attrs) if attrs else "", signature)
        if memo_key not in memo:
            memo[memo_key] = self._evaluate(node, signature)
        return memo[memo_key]

    @staticmethod
    def _evaluate(node: dict, signature: tuple) -> tuple:
        """(shape, dtype) of op node `node` on inputs of these (shape, dtype)s: its forward
        run on zeros (once per distinct op signature: `_shape`)."""
        xp = numpy_namespace()
        zeros = [np.zeros(s, d) for s, d in signature]
        with np.errstate(all="ignore"):
            out = ops.OPS[node["op"]].forward(xp, *zeros, **node["attrs"])
        return tuple(out.shape), np.dtype(out.dtype)

    def _recurrent(self) -> set:
        """Classes on a cycle of the graph folded over time: they must run step by step.
        The folded graph is `class_edges`, a few edges per class whatever the length."""
        folded = nx.DiGraph()
        folded.add_nodes_from(self.members)
        folded.add_edges_from(self.class_edges)
        out = set()
        for part in nx.strongly_connected_components(folded):
            if len(part) > 1 or any(folded.has_edge(c, c) for c in part):
                out |= part
        return out

    def reader_classes(self, cls: tuple) -> set:
        """The classes with a node that reads a node of class `cls`: from the folded
        graph's edges (`class_edges`, a few per class), not every member's consumers."""
        return {reader for source, reader in self.class_edges if source == cls}

    def has_grad(self, loss: Key) -> set:
        """Nodes that receive a gradient from `loss` (backward skips every other node): the
        nodes that need one and have a reader that receives one, walked back from `loss`.
        Where the first readers say who they are, found without the walk
        (`has_grad_by_first_readers`)."""
        found = self.has_grad_by_first_readers(loss)
        if found is not None:
            return found
        out, nodes, needs = {loss}, self.node, self.needs_grad
        for k in reversed(self.order):
            if k in out:
                node = nodes[k]
                if node["kind"] == "op":  # the inputs that need a gradient, found in C
                    out.update(needs.intersection(node["inputs"]))
        return out

    def has_grad_by_first_readers(self, loss: Key) -> set | None:
        """`has_grad` without its walk, or None where this cannot tell: the nodes that need
        a gradient but those that nothing reads (a final state handed back), with `loss`,
        where the first reader of each of them is among them. Then each reaches
        `loss` through readers that receive a gradient (follow first readers: the graph
        has no cycle, and only `loss` lacks one), and the walk would hand every one of
        them one; a node nothing reads receives none. Asked in C, a consumer list each."""
        needs = self.needs_grad
        # in graph order, not the set's: a lookup in a dict of half a million keys costs
        # half as much again out of order
        others = list(filter(needs.__contains__, self.order))
        if len(others) != len(needs):
            return None  # a node outside the order: the walk decides
        # .get: `consumers` is a defaultdict, and a lookup must not add an empty list
        readers = list(map(self.consumers.get, others))
        unread = set(compress(others, map(not_, readers)))
        has = (needs - unread) | {loss}
        first = map(_FIRST, map(_FIRST, filter(None, readers)))
        return has if has.issuperset(first) else None

    def member_inputs(self, cls: tuple) -> list:
        """The input tuples of a class's members, in member order: fetched from the node
        table once per class (a fact, as `same_op`), for `same_op` and `input_pattern` at
        every position, since looking up every step's record is what those cost."""
        fact = ("inputs", cls)
        found = self._facts.get(fact)
        if found is None:
            records = self.member_records.get(cls)  # as `refresh` met them, if unedited
            if records is None:
                records = list(map(self.node.__getitem__, self.members[cls].values()))
            self._facts[("records", cls)] = records
            found = self._facts[fact] = list(map(_INPUTS, records))
        return found

    def stackable(self, cls: tuple) -> bool:
        """A per-step class whose steps are contiguous and share one shape and dtype."""
        fact = ("stackable", cls)
        if fact not in self._facts:  # asked per class by the layout and every addn
            self._facts[fact] = self._stackable(cls)
        return self._facts[fact]

    def _stackable(self, cls: tuple) -> bool:
        members = self.members[cls]
        if None in members:
            return False
        ts = sorted(members)
        if ts != list(range(ts[0], ts[-1] + 1)):
            return False
        # every (shape, dtype) equal to the first, by list.count: the members share one
        # memoized tuple (`_shape`), which it finds by identity; a set would hash each
        # one, its dtype too (not cached: about half this pass over every node)
        metas = list(map(self.meta.__getitem__, members.values()))
        return metas.count(metas[0]) == len(metas)

    def same_op(self, cls: tuple):
        """(op, attrs) if every member of the class applies the same op, else None."""
        fact = ("same_op", cls)
        if fact not in self._facts:  # asked per class by every later stage: derived once
            self._facts[fact] = self._same_op(cls)
        return self._facts[fact]

    def _same_op(self, cls: tuple):
        self.member_inputs(cls)
        nodes = self._facts[("records", cls)]
        first = nodes[0]
        if first["kind"] != "op":
            return None
        op, attrs = first["op"], first["attrs"]
        # list.count compares in C: this runs over every step of every class
        if list(map(_OP, nodes)).count(op) != len(nodes):
            return None
        if list(map(_ATTRS, nodes)).count(attrs) != len(nodes):
            return None
        return op, attrs

    def input_pattern(self, cls: tuple, position: int):
        """How input `position` of a class varies with t.

        ("shared", key): one node for every step (a parameter, a constant);
        ("class", D, d, boundary): step t reads class D at t + d, except the boundary step
        (the first when d = -1, the last when d = +1) which reads node `boundary`; or None.
        """
        fact = ("input_pattern", cls, position)
        if fact not in self._facts:
            self._facts[fact] = self._input_pattern(cls, position)
        return self._facts[fact]

    def _input_pattern(self, cls: tuple, position: int):
        members = self.members[cls]  # step -> node
        # map and itemgetter: this reads every step of every class, in C
        read = list(map(itemgetter(position), self.member_inputs(cls)))
        first = read[0]
        if read.count(first) == len(read):  # list.count and == on lists: loops in C
            return ("shared", first) if first[2] is None else None
        steps = list(members)
        if steps == list(range(steps[0], steps[0] + len(steps))) and len(steps) > 1:
            return self._input_pattern_by_columns(read, steps[0])
        return self._input_pattern_by_steps(steps, read)

    @staticmethod
    def _input_pattern_by_steps(steps: list, read: list):
        """`_input_pattern` of a class whose steps are `steps` (in member order), `read`
        what each reads (not one node for all), a step at a time."""
        sources = dict(zip(steps, read))
        ts = sorted(sources)
        for d, edge in ((0, None), (-1, ts[0]), (1, ts[-1])):
            # the steps but the boundary one (ts holds each step once, in order)
            inner = ts if edge is None else (ts[1:] if d < 0 else ts[:-1]) or ts
            target = class_of(sources[inner[0]])
            if len(target) != 2:
                continue
            if sources[inner[0]][2] != inner[0] + d:  # the first step already says no
                continue
            # both lists built in C: step t's source against (*target, t + d)
            shifted = zip(repeat(target[0]), repeat(target[1]), map(d.__add__, inner))
            if list(map(sources.__getitem__, inner)) != list(shifted):
                continue
            if edge is None or sources[edge] == (*target, edge + d):
                return ("class", target, d, None)
            boundary = sources[edge]
            if boundary[2] is None:
                return ("class", target, d, boundary)
        return None

    @staticmethod
    def _input_pattern_by_columns(read: list, start: int):
        """`_input_pattern` of a class whose members are steps start, start + 1, ... in
        that order, `read` what each reads (not one node for all): the sources split into
        columns of scopes, names and steps (`zip(*read)`, in C), each compared whole, with
        no tuple made per step."""
        scopes, names, ts = zip(*read)
        n = len(read)
        for d, edge in ((0, None), (-1, 0), (1, n - 1)):
            inner = slice(0, n) if edge is None else (slice(1, n) if d < 0 else slice(0, n - 1))
            scope, name, t = read[inner.start]
            if t is None or t != start + inner.start + d:  # the first step already says no
                continue
            lo, hi = inner.start, inner.stop
            if scopes[lo:hi].count(scope) != hi - lo or names[lo:hi].count(name) != hi - lo:
                continue
            if ts[lo:hi] != tuple(range(start + lo + d, start + hi + d)):
                continue
            target = (scope, name)
            if edge is None or read[edge] == (*target, start + edge + d):
                return ("class", target, d, None)
            boundary = read[edge]
            if boundary[2] is None:
                return ("class", target, d, boundary)
        return None

    def addn_of_class(self, key: Key):
        """The class whose every step the live node `key` (an addn: `Op.variadic_sum`) sums,
        in order; None if not that shape. Asked of every fusable unit and of readers in the
        liveness passes: most are no sum at all, found in the few live sums (a fact), and a
        sum's answer is kept, since it lists every step of a class."""
        sums = self._live_sums()
        if key not in sums:
            return None
        if sums[key] is None:
            sums[key] = (self._addn_of_class(key),)
        return sums[key][0]

    def class_sums(self, keys) -> set:
        """The nodes among `keys` that sum a whole class (`addn_of_class`), looked for
        among the few live sums in C, not asked of each key."""
        found = self._live_sums().keys() & set(keys)
        return {k for k in found if self.addn_of_class(k) is not None}

    def _live_sums(self) -> dict:
        """Every live node of a summing op (a handful per graph) -> (its `addn_of_class`,)
        once asked, else None (a fact)."""
        sums = self._facts.get("sums")
        if sums is None:
            found = (keys for op, keys in self.by_op.items() if ops.OPS[op].variadic_sum)
            sums = self._facts["sums"] = {k: None for keys in found for k in keys}
        return sums

    def _addn_of_class(self, key: Key):
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
