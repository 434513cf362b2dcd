"""Which classes run as one kernel over all steps, and in what order everything runs.

A class off every recurrence whose op has a batch rule runs as ONE kernel over all steps
(input projections, readouts, losses); the rest run per node, in an order that respects
every dependency (`topological_order`, ties broken by the graph's own order). `schedule` takes
the analysis and the buffer layout and hands on a `Schedule`: the batched classes with the
stacked views they read, and the units in run order. `deferred` is the backward's share:
the per-step classes whose gradient for a shared input is summed once, after the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    unit_of, class_unit, units, first = {}, {}, [], []
    live, nodes, alias_of, pos = an.live, an.node, lay.alias_of, an.pos
    for k in an.order:
        if k not in live or k in alias_of or nodes[k]["kind"] != "op":
            continue
        c = k if k[2] is None else k[:2]  # class_of, inline: once per node
        if c in batched:
            u = class_unit.get(c)
            if u is None:  # the first node of a batched class
                u = class_unit[c] = len(units)
                units.append(("class", c))
                first.append(pos[k])
        else:  # a node of its own
            u = len(units)
            units.append(("node", k))
            first.append(pos[k])
        unit_of[k] = u
    deps = [set() for _ in units]
    for k, u in unit_of.items():
        found = deps[u]
        for source in nodes[k]["inputs"]:
            while source in alias_of:
                source = alias_of[source]
            v = unit_of.get(source)
            if v is not None and v != u:
                found.add(v)
    by_first = topological_order(range(len(units)), deps.__getitem__, first.__getitem__)
    return [units[u] for u in by_first]
