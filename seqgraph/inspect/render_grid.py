"""Where each block of the unrolled picture goes: columns are time steps, rows are layers and
lanes. Positions are pinned for `neato`, since `dot` scrambles time order here."""

from __future__ import annotations

import re
from collections import defaultdict

import networkx as nx

from seqgraph.engine.graph import topological_order
from seqgraph.inspect.render_scene import (
    COLUMN,
    DETAIL_ROW,
    ROW,
    Scene,
)


def _levels(scene: Scene, edges: dict, row_of: dict[str, str]) -> dict[str, int]:
    """Depth of every row (longest path from the inputs, a backward lane above its forward
    one); a row that only feeds others sits just below the first of them."""
    dag = nx.DiGraph()
    dag.add_nodes_from(set(row_of.values()))
    for tail, head, state in edges:
        a, b, times = row_of.get(tail), row_of.get(head), (scene.t(tail), scene.t(head))
        across = all(isinstance(t, int) for t in times) and times[0] != times[1]
        fresh = a and b and a != b and not (state or across or dag.has_edge(a, b))
        if fresh and not nx.has_path(dag, b, a):  # a cycle (free-running feedback) is cut
            dag.add_edge(a, b)
    lanes: dict[tuple, list[str]] = defaultdict(list)  # the rows of each lane of each layer
    for row in dag:
        if found := re.match(r"((?:dec\.)?l\d+)\.(fwd|bwd)\b", row):
            lanes[found[1], found[2]].append(row)
    dag.add_edges_from(
        (a, b)
        for (layer, d), rows in lanes.items()
        if d == "fwd"
        for a in rows
        for b in lanes[layer, "bwd"]
    )
    level: dict[str, int] = {}
    order = topological_order(dag, dag.predecessors)
    for row in order:
        level[row] = max((level[p] + 1 for p in dag.predecessors(row)), default=0)
    for row in reversed(order):
        if dag.in_degree(row) == 0 and dag.out_degree(row):
            level[row] = min(level[s] for s in dag.successors(row)) - 1
    return {block: level[row] for block, row in row_of.items() if dag.degree(row)}


def _columns(scene: Scene, edges: dict) -> tuple[dict[str, float], dict[str, int]]:
    """Column and level of each block: a step's column is t (a decoder continues after its
    encoder); a block without a step sits by its neighbours, an initial state beside its step."""
    row_of, col = {}, {}
    for block, members in scene.members.items():
        t = members[0][2]
        if isinstance(t, int):  # a gap column when a backward lane's initial state needs it
            gap = any(c.endswith(".bwd") for c in scene.cells)
            col[block] = t + ((scene.x_steps + gap) if members[0] in scene.y_axis else 0)
            row = re.sub(r"@\d+$", "", block).replace("dec.", "").replace("y/feed", "x/x")
            row_of[block] = re.sub(r"\bfb(\d*)\b", r"enc\1", row)
        elif not block.startswith("param"):
            row_of[block] = block + "@"
    level = _levels(scene, edges, row_of)
    near: dict[str, list[tuple]] = defaultdict(list)
    for tail, head, state in edges:
        if not tail.startswith("param"):
            near[tail].append((head, state))
            near[head].append((tail, False))
    for _ in range(4):
        for block in row_of:
            guesses = [
                col[o] + (0 if not state else -1 if scene.t(o) == 0 else 1)
                for o, state in near[block]
                if o in col
            ]
            if block not in col and guesses:
                col[block] = sum(guesses) / len(guesses)
            if block not in level and near[block] and near[block][0][0] in level:
                level[block] = level[near[block][0][0]]
    return {b: col.get(b, 0.0) for b in row_of}, {b: level.get(b, 0) for b in row_of}


def grid_positions(scene: Scene, edges: dict) -> dict[str, tuple[float, float]]:
    """Position (x, y in inches) of every block of `scene` in the unrolled views, for
    `neato` to pin: a column per time step, a row per layer and lane. `edges` are the
    scene's `(tail, head, carries state)` edges. Blocks sharing a place stand side by side,
    initial states (h over c) one above the other; parameters go just below their users."""
    col, level = _columns(scene, edges)
    slots: dict[tuple, list[str]] = defaultdict(list)
    for block in col:
        slots[(round(col[block], 2), level[block])].append(block)
    role = {b: scene.g.node(scene.members[b][0]).get("role") for b in col}
    states = {k for k, blocks in slots.items() if all(role[b] == "state" for b in blocks)}
    size = {k: sum(scene.width(b) + 0.15 for b in blocks) for k, blocks in slots.items()}
    width = max([COLUMN] + [size[k] + 0.3 for k in slots if k not in states])
    row, where = (DETAIL_ROW if scene.detail else ROW), {}
    for (c, lvl), blocks in slots.items():
        x, up = c * width - size[c, lvl] / 2, (c, lvl) in states
        for i, block in enumerate(blocks):
            # lanes of a bidirectional layer stagger, so x_t's edge to bwd passes beside fwd
            lane = {".fwd": -0.25, ".bwd": 0.25}.get(scene.members[block][0][0][-4:], 0) * width
            if up:
                where[block] = (c * width + lane, lvl * row + 0.32 * (i - (len(blocks) - 1) / 2))
            else:
                where[block] = (x + lane + scene.width(block) / 2 + 0.075, lvl * row)
                x += scene.width(block) + 0.15
    _clear(scene, where)
    users: dict[str, list[str]] = defaultdict(list)
    for tail, head, _ in edges:
        if tail.startswith("param") and head in where:
            users[tail].append(head)
    for block, heads in users.items():
        _place_param(scene, block, heads, where, row)
    return where


def _clear(scene: Scene, where: dict) -> None:
    """Move each block without a step sideways until it clears the others in its row."""
    rows: dict[float, list[str]] = defaultdict(list)
    for block, (_, y) in where.items():
        rows[round(y, 2)].append(block)
    for blocks in rows.values():
        placed = [b for b in blocks if isinstance(scene.t(b), int)]
        for block in (b for b in blocks if b not in placed):
            x, y = where[block]
            for other in sorted(placed, key=lambda o: abs(where[o][0] - x)):
                gap = (scene.width(block) + scene.width(other)) / 2 + 0.1
                overlap = gap - abs(where[other][0] - x)
                if overlap > 0:
                    x += overlap if x >= where[other][0] else -overlap
            where[block] = (x, y)
            placed.append(block)


def _place_param(scene: Scene, block: str, heads: list[str], where: dict, row: float) -> None:
    """A parameter goes in the gap just below its users' row, left of the grid (right for a
    decoder's), clear of what is there, so its edges fan out along the gap."""
    steps = [x for b, (x, _) in where.items() if isinstance(scene.t(b), int)] or [0.0]
    right = sum(where[h][0] for h in heads) / len(heads) > sum(steps) / len(steps) + COLUMN
    y = min(where[h][1] for h in heads) - row / 2
    near = [(x, scene.width(b) / 2) for b, (x, yy) in where.items() if abs(yy - y) < 0.45]
    half = scene.width(block) / 2
    if right:
        where[block] = (max(x + w for x, w in near) + 0.2 + half, y)
    else:
        where[block] = (min(x - w for x, w in near) - 0.2 - half, y)
