"""Which classes run as one kernel over all steps, and in what order everything runs.

A class off every recurrence whose op has a batch rule runs as ONE kernel over all steps
(input projections, readouts, losses); the rest run per node, in an order that respects
every dependency (`topological_order`, ties broken by the graph's own order). `schedule` takes
the analysis and the buffer layout and hands on a `Schedule`: the batched classes with the
stacked views they read, and the units in run order. `deferred` is the backward's share:
the per-step classes whose gradient for a shared input is summed once, after the loop.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass
from itertools import chain, repeat

from seqgraph.engine import ops
from seqgraph.engine.graph import topological_order
from seqgraph.plan import analysis
from seqgraph.plan.analysis import Analysis
from seqgraph.plan.layout import Layout


@dataclass
class Schedule:
    """The analysis and layout a plan runs over, and what this stage decided about them.

    batched: class -> (batch rule kind, attrs, stacked input views) for each class that runs
    as one kernel over all steps; units: ("class", cls) or ("node", key) in run order;
    outputs: the nodes whose values a caller reads (the loss among them)."""

    an: Analysis
    layout: Layout
    outputs: set
    batched: dict
    units: list


def schedule(an: Analysis, lay: Layout, outputs: set, fuse_into_steps: bool = False) -> Schedule:
    """Pick the time-batched classes, then order every unit (see the module docstring).
    `fuse_into_steps`: fused groups will be compiled, so an elementwise class that feeds one
    per-step elementwise node at each step runs beside it instead (`feeds_one_step`)."""
    batched = _batched_classes(an, lay)
    if fuse_into_steps:
        for c in [c for c in batched if feeds_one_step(an, c, outputs)]:
            del batched[c]
    return Schedule(an, lay, outputs, batched, _units(an, lay, batched))


def feeds_one_step(an: Analysis, c, outputs: set) -> bool:
    """Whether class c, elementwise (a C expression, no attrs), has each step's node read
    by one node alone, of the same step, shape and dtype, elementwise too, on a recurrence.
    Such a class (an LSTM's x W + b, read only by + h U at its step) is better run step by
    step: fusion then joins the two in one compiled loop that reads x W once and writes the
    gates once, where the batched kernel makes a pass of its own over all steps (medium
    LSTM: 26 MiB) and each step's add another."""
    same = an.same_op(c)
    if same is None or same[1] or ops.OPS[same[0]].c_expr is None:
        return False
    for t, k in an.members[c].items():
        users = an.consumers.get(k, ())
        if k in outputs or len(users) != 1:
            return False
        user = users[0][0]
        node = an.node[user]
        if user[2] != t or analysis.class_of(user) not in an.recurrent or node["attrs"]:
            return False
        if ops.OPS[node["op"]].c_expr is None or an.meta[user] != an.meta[k]:
            return False
    return True


def class_rule(an: Analysis, lay: Layout, c, same) -> tuple:
    """(op, first member, input ranks, batch rule, input patterns) of class `c`, whose
    nodes all run `same` = (op, attrs): how one kernel over all steps could compute it."""
    op, attrs = same
    k0 = an.members[c][lay.range[c][0]]
    in_nd = [len(an.meta[i][0]) for i in an.inputs(k0)]
    patterns = [an.input_pattern(c, i) for i in range(len(in_nd))]
    stacked = [p is not None and p[0] == "class" for p in patterns]
    return op, k0, in_nd, analysis.batch_rule(op, attrs, in_nd, stacked), patterns


def stacked_inputs(an: Analysis, lay: Layout, cls, op: str, in_nd: list, k0, grad=False):
    """Every input of `cls` over all its steps, one array each (`Layout.stacked`), values or
    gradients; None if a value input does not form one block (a gradient input: None in
    its place)."""
    out_nd = len(an.meta[k0][0])
    pad = ops.OPS[op].elementwise
    views = []
    for i, nd in enumerate(in_nd):
        view = lay.stacked(cls, i, grad, pad=(out_nd - nd) if pad else 0)
        if view is None and not grad:
            return None
        views.append(view)
    return views


def deferred(sched: Schedule) -> dict:
    """Per-step classes whose gradients for a shared input (a parameter, or a matrix made of
    parameters outside time) are summed once, after the loop, as one batched product:
    class -> those input positions. Reads the layout as liveness left its values."""
    an, lay, out = sched.an, sched.layout, {}
    for c in lay.classes:
        same = an.same_op(c)
        if c in sched.batched or c in lay.source or same is None or c not in lay.grad_stack:
            continue
        op, k0, in_nd, rule, patterns = class_rule(an, lay, c, same)
        if rule is None or rule[0] != "same":
            continue
        if stacked_inputs(an, lay, c, op, in_nd, k0) is None:
            continue
        positions = [
            i
            for i, p in enumerate(patterns)
            if p and p[0] == "shared" and p[1] in an.needs_grad  # a parameter, or a node
            # outside time made of them (a fused gate matrix): gradient summed over steps
        ]
        if positions:
            out[c] = positions
    return out


def _batched_classes(an: Analysis, lay: Layout) -> dict:
    out = {}
    for c in lay.classes:
        same = an.same_op(c)
        if c in an.recurrent or c in lay.source or same is None:
            continue
        op, k0, in_nd, rule, _ = class_rule(an, lay, c, same)
        ins = stacked_inputs(an, lay, c, op, in_nd, k0)
        if rule is not None and ins is not None:
            out[c] = (rule[0], rule[1], ins)
    return out


def _units(an: Analysis, lay: Layout, batched: dict) -> list:
    """Units in dependency order: ("class", cls) or ("node", key)."""
    units, unit_of = number_units(an, lay, batched)
    return [units[u] for u in first_ready_order(unit_inputs(an, lay, units, unit_of))]


def number_units(an: Analysis, lay: Layout, batched: dict) -> tuple[list, dict]:
    """(units numbered in the order of their first node in graph order, node -> its
    unit's number) for the nodes that run: live op nodes that are no view or alias. Found
    class by class: every node of a class laid out over time that applies one op and is
    no view or alias of another runs, so only the other classes' nodes are looked at
    one by one; then one sort by graph position."""
    alias_of, nodes, pos = lay.alias_of, an.node, an.pos
    alone, firsts = [], []  # the nodes that run alone; (position, batched class)
    for c, members in an.members.items():  # every live node, class by class
        if c in batched:
            running = [k for k in members.values() if k not in alias_of]
            if running:
                firsts.append((min(map(pos.__getitem__, running)), c, running))
        elif c in lay.range and c not in lay.source and an.same_op(c) is not None:
            alone.extend(members.values())
        else:
            alone.extend(
                k for k in members.values() if k not in alias_of and nodes[k]["kind"] == "op"
            )
    alone.sort(key=pos.__getitem__)
    places, units, done = list(map(pos.__getitem__, alone)), [], 0
    unit_of: dict = {}
    for first, c, running in sorted(firsts):  # each batched class where its first node runs
        cut = bisect.bisect_left(places, first, done)
        unit_of.update(zip(alone[done:cut], range(len(units), len(units) + cut - done)))
        units += zip(repeat("node"), alone[done:cut])
        unit_of.update(dict.fromkeys(running, len(units)))
        units.append(("class", c))
        done = cut
    unit_of.update(zip(alone[done:], range(len(units), len(units) + len(alone) - done)))
    units += zip(repeat("node"), alone[done:])
    return units, unit_of


def unit_inputs(an: Analysis, lay: Layout, units: list, unit_of: dict) -> list:
    """deps[u]: the units whose nodes unit u's nodes read (through views and aliases),
    found class by class: where every input of a class reads one node or the same class
    at a fixed step offset (`Analysis.input_pattern`), the units its steps read at one
    position form a column made in C from a per-class map of units by step, and a step's
    deps are its row, without a lookup of every node, edge and alias; node by node
    (`unit_inputs_per_node`) where not."""
    by_step: dict = {}  # class -> {t: unit} for the classes whose nodes run alone
    for u, (kind, key) in enumerate(units):
        if kind == "node":
            by_step.setdefault(key if key[2] is None else key[:2], {})[key[2]] = u
    batched = {key: u for u, (kind, key) in enumerate(units) if kind == "class"}
    deps: list = [set() for _ in units]
    for c, steps in by_step.items():
        columns = _step_columns(an, lay, c, list(steps), unit_of, by_step, batched)
        if columns is None:
            for t, u in steps.items():
                deps[u] = _node_reads(an, lay, an.members[c][t], unit_of)
        elif columns:
            rows = map(set, zip(*columns))  # step i's row: the units it reads
            deque(map(deps.__setitem__, steps.values(), rows), maxlen=0)  # stored, in C
    for c, u in batched.items():
        steps = [k[2] for k in an.members[c].values() if unit_of.get(k) == u]
        columns = _step_columns(an, lay, c, steps, unit_of, by_step, batched)
        if columns is None:
            for t in steps:
                deps[u] |= _node_reads(an, lay, an.members[c][t], unit_of)
        else:
            deps[u] = set(chain.from_iterable(columns))
    for u, found in enumerate(deps):
        found.discard(None)
        found.discard(u)
    return deps


def unit_inputs_per_node(an: Analysis, lay: Layout, units: list, unit_of: dict) -> list:
    """`unit_inputs`, node by node: each node's inputs, followed through views and aliases
    to the node that runs, and that node's unit."""
    deps = [set() for _ in units]
    for k, u in unit_of.items():
        deps[u] |= _node_reads(an, lay, k, unit_of)
        deps[u].discard(u)
    return deps


def _node_reads(an: Analysis, lay: Layout, k, unit_of: dict) -> set:
    """The units of the nodes that node k reads (through views and aliases); no None."""
    found = {_unit_at(lay.alias_of, source, unit_of) for source in an.node[k]["inputs"]}
    found.discard(None)
    return found


def _unit_at(alias_of: dict, key, unit_of: dict):
    """The unit of the node `key` is read from: the end of its chain of views and aliases."""
    while key in alias_of:
        key = alias_of[key]
    return unit_of.get(key)


def _step_columns(an, lay, c, steps: list, unit_of: dict, by_step: dict, batched: dict):
    """For class `c` at `steps`, one column per input position: the unit each step's node
    reads there (None: no unit); None where an input follows no pattern, or reads a class
    not laid out over time (whose nodes may be views one by one), or the members' input
    counts differ."""
    inputs = an.member_inputs(c)
    if len(set(map(len, inputs))) != 1:
        return None
    columns = []
    for position in range(len(inputs[0])):
        pattern = an.input_pattern(c, position)
        if pattern is None:
            return None
        if pattern[0] == "shared":
            columns.append([_unit_at(lay.alias_of, pattern[1], unit_of)] * len(steps))
            continue
        _, target, d, boundary = pattern
        while target in lay.source:  # a view's or an alias's step t is its source's step t
            target = lay.source[target][1]
        if target not in lay.range:
            return None
        if target in batched:
            column = [batched[target]] * len(steps)
        else:
            column = list(map(by_step.get(target, {}).get, map(d.__add__, steps)))
        if boundary is not None:  # the first step (d = -1) or the last (d = +1) reads it
            members = sorted(an.members[c])
            edge = members[0] if d < 0 else members[-1]
            if edge in steps:
                column[steps.index(edge)] = _unit_at(lay.alias_of, boundary, unit_of)
        columns.append(column)
    return columns


def first_ready_order(deps: list) -> list:
    """Unit numbers in dependency order, of the ready units the one made first (its first
    node earliest in graph order) going first: `topological_order` with that priority, for
    units numbered in the order they were made, where number and priority agree, so a heap
    of the numbers themselves (ints compared in C) does what its heap of (priority, count,
    item) tuples does. deps[u]: the units u reads (a set, none u itself)."""
    waiting = list(map(len, deps))
    readers: list[list[int]] = [[] for _ in deps]
    for u, found in enumerate(deps):
        for v in found:
            readers[v].append(u)
    heap = [u for u, n in enumerate(waiting) if not n]  # ascending: already a heap
    order, push, pop = [], heapq.heappush, heapq.heappop
    while heap:
        u = pop(heap)
        order.append(u)
        for reader in readers[u]:
            waiting[reader] -= 1
            if not waiting[reader]:
                push(heap, reader)
    if len(order) < len(deps):  # a cycle: the general sort names it
        topological_order(range(len(deps)), deps.__getitem__)
    return order
