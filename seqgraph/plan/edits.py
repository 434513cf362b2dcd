"""Small edits of an analysis' copy of the graph that every rewrite shares: a new op node,
and a dependency order for the graph once nodes have been added (`reorder`)."""

from __future__ import annotations

from bisect import bisect_right

from seqgraph.engine.graph import topological_order


def op_node(op: str, inputs: tuple, **attrs) -> dict:
    return {"kind": "op", "op": op, "inputs": inputs, "attrs": attrs}


def reorder(an, before: dict) -> list:
    """A dependency order for the rewritten graph that stays close to the old one: ready nodes
    go by old position (`topological_order`'s priority); a new node sorts just before the
    first of the old nodes it stands in for.

    That order is the old one with each new node inserted at its place whenever every node
    the rewrite made or edited (`an.edited`) then still comes after its inputs (the other
    nodes keep theirs, and their relative order): checked for those nodes alone, so the
    usual rewrite costs a merge, not a sort of the whole graph."""
    rank = {key: (min(an.pos[k] for k in olds), -1, repr(key)) for key, olds in before.items()}
    if not rank.keys() & an.pos.keys():
        inserted = sorted(rank, key=rank.__getitem__)
        order = _merged(an.order, inserted, [rank[k][0] for k in inserted])
        if _follows_inputs(an, inserted, rank):
            return order
    rank.update({k: (i, 0, "") for i, k in enumerate(an.order)})
    keys = list(an.order) + list(before)
    return topological_order(keys, lambda k: an.node[k]["inputs"], rank.__getitem__)


def _merged(order: list, inserted: list, at: list) -> list:
    """`order` with inserted[j] placed just before order[at[j]] (`at` ascending)."""
    out, start = [], 0
    for key, i in zip(inserted, at, strict=True):
        out.extend(order[start:i])
        out.append(key)
        start = i
    out.extend(order[start:])
    return out


def _follows_inputs(an, inserted: list, rank: dict) -> bool:
    """Whether, in the merged order, every edited or new node comes after its inputs."""
    at = [rank[k][0] for k in inserted]
    new_index = {k: j for j, k in enumerate(inserted)}

    def place(k):  # index in the merged order
        if k in new_index:
            return at[new_index[k]] + new_index[k]
        i = an.pos.get(k)
        return None if i is None else i + bisect_right(at, i)

    for k in list(an.edited) + inserted:
        here = place(k)
        if here is None:
            continue  # an edited node no longer in the order (reassociate's)
        for source in an.node[k]["inputs"]:
            there = place(source)
            if there is None or there >= here:
                return False
    return True
