"""Small edits of an analysis' copy of the graph that every rewrite shares: a new op node,
and a dependency order for the graph once nodes have been added (`reorder`)."""

from __future__ import annotations

from seqgraph.engine.graph import topological_order


def op_node(op: str, inputs: tuple, **attrs) -> dict:
    return {"kind": "op", "op": op, "inputs": inputs, "attrs": attrs}


def reorder(an, before: dict) -> list:
    """A dependency order for the rewritten graph that stays close to the old one: ready nodes
    go by old position (`topological_order`'s priority); a new node sorts just before the
    first of the old nodes it stands in for."""
    rank = {k: (i, 0, "") for i, k in enumerate(an.order)}
    for key, olds in before.items():
        rank[key] = (min(an.pos[k] for k in olds), -1, repr(key))
    keys = list(an.order) + list(before)
    return topological_order(keys, lambda k: an.node[k]["inputs"], rank.__getitem__)
