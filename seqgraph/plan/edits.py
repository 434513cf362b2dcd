"""Small edits of an analysis' copy of the graph that every rewrite shares: a new op node,
and a dependency order for the graph once nodes have been added (`reorder`)."""

from __future__ import annotations

import heapq
from collections import defaultdict


def op_node(op: str, inputs: tuple, **attrs) -> dict:
    return {"kind": "op", "op": op, "inputs": inputs, "attrs": attrs}


def reorder(an, before: dict) -> list:
    """A dependency order for the rewritten graph that stays close to the old one: Kahn's
    algorithm taking ready nodes by old position; a new node sorts just before the first of
    the old nodes it stands in for."""
    rank = {k: (i, 0, "") for i, k in enumerate(an.order)}
    for key, olds in before.items():
        rank[key] = (min(an.pos[k] for k in olds), -1, repr(key))
    keys = list(an.order) + list(before)
    waiting = {k: len(set(an.node[k]["inputs"])) for k in keys}
    readers = defaultdict(list)
    for k in keys:
        for source in set(an.node[k]["inputs"]):
            readers[source].append(k)
    ready = [(rank[k], k) for k in keys if waiting[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        for reader in readers[k]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, (rank[reader], reader))
    return order
