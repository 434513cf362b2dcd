"""Graphviz pictures of an unrolled graph (only read), drawn so backpropagation through time
shows: x_t at the bottom, losses L_t at the top summed into L, time left to right, bold edges
carrying a cell's state between steps, gold parameters drawn once with an edge to every step.
Views: compact (default; a grid of one node per cell step, a row per layer and lane), detail
(every op, a cluster per cell step) and fold (each cell once with a self-loop "h: t-1 → t").
Gradients colour each value by log10 ‖dL/d(value)‖: a node by what it passes on, an edge by
what it carries. Const nodes, masks and loss weights are left out.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import graphviz
import networkx as nx
import numpy as np

from . import batch as batching
from .autodiff import Program
from .errors import SeqgraphError
from .graph import Graph, Key, key_str
from .xp_extra import to_numpy


def _pairs(text: str) -> dict[str, str]:
    """ "a=1 b=2" -> {"a": "1", "b": "2"}: Graphviz attributes and op symbols, compactly."""
    return dict(item.split("=", 1) for item in text.split())


SYMBOLS = _pairs(
    "add=+ addn=Σ sub=− mul=⊙ div=÷ neg=−x matmul=@ sigmoid=σ chunk=split slice=[:] sum=Σ "
    "where=mask embedding=embed softmax_ce=CE mse=MSE"
)
HIDDEN_ROLES = ("mask", "weight", "coin")
# reversed viridis: small gradients pale and thin, large ones dark and thick
PALETTE = tuple(
    "#fde725 #b5de2b #6ece58 #35b779 #1f9e89 #26828e #31688e #3e4989 #482878 #440154".split()
)
ZERO, GREY, GOLD, STATE, PARAM_EDGE = "#e0e0e0", "#b0b0b0", "#ffd966", "#1a4d99", "#c9a227a0"
LANES = {
    "fwd": ("#dbe9f6", "#6b9bd1"),
    "bwd": ("#dff0d8", "#6aa84f"),
    "dec": ("#ebe1f3", "#8e7cc3"),
}
SUBSCRIPT = str.maketrans("0123456789t-", "₀₁₂₃₄₅₆₇₈₉ₜ₋")
COLUMN, ROW, DETAIL_ROW = 1.5, 0.8, 0.55  # grid spacing, inches
SPLINE_EDGES = 250  # above this, straight edges: routing them around nodes gets slow
GRAPH_ATTR = _pairs("rankdir=BT fontname=Helvetica fontsize=11 labelloc=t outputorder=edgesfirst")
NODE_ATTR = _pairs(
    "fontname=Helvetica fontsize=9 shape=box style=rounded,filled fillcolor=white height=0.3 "
    "width=0.3 margin=0.06,0.03"
)
PLAIN = _pairs("shape=plaintext style=solid margin=0")  # for HTML-like tables
EDGE_ATTR = _pairs("arrowsize=0.5 penwidth=0.8 color=#555555 fontname=Helvetica fontsize=8")


def _sub(t) -> str:
    return "" if t is None else str(t).translate(SUBSCRIPT)


def _group(scope: str) -> str:
    """Stacked encoders (enc0, enc1) draw as one block, a layer's bridges (h, c) as one."""
    return re.sub(r"^(enc|fb)\d+$|^(bridge\.l\d+)\..*$", lambda m: m[1] or m[2], scope)


def _lane(scope: str) -> tuple[str, str]:
    return LANES["bwd" if scope.endswith(".bwd") else "dec" if scope.startswith("dec.") else "fwd"]


def _ink(background: str) -> str:
    return "white" if background in PALETTE[5:] else "black"


def _table(title: str, cells: list[tuple[str, str]], border: int) -> str:
    """An HTML-like label: a title cell, then (text, background) cells, in one row."""
    row = "".join(
        f'<TD BGCOLOR="{bg}"><FONT COLOR="{_ink(bg)}">{text}</FONT></TD>' for text, bg in cells
    )
    return (
        f'<<TABLE BORDER="{border}" CELLBORDER="{1 - border}" CELLSPACING="0" CELLPADDING="2" '
        f'BGCOLOR="{GOLD if border else "white"}"><TR><TD>{title}</TD>{row}</TR></TABLE>>'
    )


class _Scene:
    """What to draw, worked out from the graph: blocks (drawn nodes), their members, edges."""

    def __init__(self, graph: Graph, spec, detail: bool, fold: bool, lengths, grads):
        self.g, self.spec, self.detail, self.fold = graph, spec, detail, fold
        self.lengths = [int(n) for n in lengths] if lengths else None
        self.grads = grads or {}
        order = list(nx.topological_sort(graph.nx))
        # what cannot reach the loss (a layer's unused final state) is not drawn
        self.live = set(order) if graph.loss is None else nx.ancestors(graph.nx, graph.loss)
        self.live.add(graph.loss)
        sources = {k: str(graph.node(k).get("source")) for k in order}
        self.cells = {k[0] for k in order if sources[k].startswith("equations")}  # cell steps
        self.block = {k: self._block(k) for k in order}
        self.members: dict[str, list[Key]] = defaultdict(list)
        for key in order:
            if self.block[key] is not None:
                self.members[self.block[key]].append(key)
        # (previous state, cell step using it) -> state variable, from where(mask, new, prev)
        self.carriers = {
            (node["inputs"][2], self.cluster(key)): key[1]
            for key in order
            if (node := graph.node(key))["op"] == "where" and self.cluster(key)
        }
        self.steps = len({k[2] for k in order if k[0] in self.cells and k[2] is not None})
        self.x_steps = sum(k[:2] == ("x", "mask") for k in graph.inputs)
        self.y_axis = self._y_axis(order)

    def _block(self, key: Key) -> str | None:
        data, (scope, name, t) = self.g.node(key), key
        t = "t" if self.fold and t is not None else t
        if data["kind"] == "const" or data.get("role") in HIDDEN_ROLES or key not in self.live:
            return None
        if data["kind"] == "param":
            return f"param {scope}/{name}" if self.detail else f"params {_group(scope)}"
        if data["kind"] == "input":
            return "input " + key_str((scope, name, t))
        if self.detail:
            return key_str((scope, name, t))
        return _group(scope) + ("" if t is None else f"@{t}")

    def cluster(self, key: Key) -> str | None:
        """The cell step of a node, named like "l0.fwd t=3" (just "l0.fwd" when folded)."""
        scope, _, t = key
        if scope not in self.cells or t is None:
            return None
        return scope if self.fold else f"{scope} t={t}"

    def _y_axis(self, order: list[Key]) -> set[Key]:
        """Nodes on a decoder's time axis: y, dec.*, and all a decoder mask or feed reaches."""
        seen = {k for k in order if k[0] == "y" or k[0].startswith("dec.")}
        if not any(k[:2] == ("y", "mask") for k in seen):
            return set()
        sources = [k for k in seen if k[1] in ("mask", "feed")]
        return seen.union(*(nx.descendants(self.g.nx, k) for k in sources))

    def t(self, block: str):
        return self.members[block][0][2]

    def padding(self, block: str) -> str | None:
        """ "full" when the step is padded in every sequence, "part" in some, else None."""
        key = self.members[block][0]
        if self.lengths is None or self.fold or not isinstance(key[2], int):
            return None
        if (key in self.y_axis) == (self.x_steps > 0):  # lengths count input steps if any
            return None
        t = key[2]
        return "full" if t >= max(self.lengths) else "part" if t >= min(self.lengths) else None

    def norm(self, keys) -> float | None:
        """The norm of the gradients of `keys` taken together; None when none has one."""
        found = [to_numpy(self.grads[k]).astype(np.float64) for k in keys if k in self.grads]
        return math.sqrt(sum(float(np.sum(g * g)) for g in found)) if found else None

    def exported(self, block: str) -> list[Key]:
        """The members of a block whose value is used outside it."""
        after = self.g.nx.successors
        return [k for k in self.members[block] if {self.block[s] for s in after(k)} - {None, block}]

    def edges(self) -> dict[tuple, tuple[list[str], set[Key]]]:
        """(tail, head, carries state) -> (state variables, values carried)."""
        out: dict[tuple, tuple[list[str], set[Key]]] = {}
        for u, v in self.g.nx.edges():
            tail, head = self.block[u], self.block[v]
            var = self.carriers.get((u, self.cluster(v)))
            if tail is None or head is None or (tail == head and var is None):
                continue
            names, values = out.setdefault((tail, head, var is not None), ([], set()))
            values.add(u)
            if var is not None and var not in names:
                names.append(var)
        return out

    def cell_name(self, scope: str) -> str:
        found = re.match(r"(dec\.)?l(\d+)", scope)
        if self.spec is None or not found:
            return "cell"
        layers = self.spec.model.decoder_layers if found[1] else self.spec.model.layers
        return layers[int(found[2])].cell.upper()

    def label(self, block: str) -> str:
        first = self.members[block][0]
        data, (scope, name, t) = self.g.node(first), first
        shown, role = ("t" if self.fold and t is not None else t), data.get("role")
        if role == "feed":  # the previous target (teacher forcing), BOS first
            return "y" + _sub("t-1" if self.fold else t - 1) if self.fold or t else "⟨bos⟩"
        if data["kind"] == "input":
            return name[:-1] + " init" if role == "state" else (role or name) + _sub(shown)
        if data["kind"] == "param":
            return f"{scope}.{name}\\n{self.g.param_info[data['param']].shape}"
        if self.cluster(first) and not self.detail:
            return f"{self.cell_name(scope)} {scope}" + ("" if self.fold else f"\\nt={t}")
        if scope == "loss" and (not self.detail or name in ("L", "total")):
            several = len(self.g.outputs.get("losses", ())) > 1
            return "L = Σₜ Lₜ" if several and t is None else "L" + _sub(shown)
        if scope == "out" and not self.detail:
            return "ŷ" + _sub(shown)
        if self.detail and self.cluster(first) and data["op"] == "where":
            return name + _sub(shown)
        ops = [SYMBOLS.get(op, op) for op in (self.g.node(k)["op"] for k in self.members[block])]
        if len(set(ops)) == 1:
            return ops[0]
        return _group(scope) + ("\\n" + " → ".join(ops) if len(ops) <= 4 else "")

    def style(self, block: str) -> dict[str, str]:
        first = self.members[block][0]
        data, scope = self.g.node(first), first[0]
        if data["kind"] == "input":
            if data.get("role") == "state":  # small, so that h over c fits between two rows
                return _pairs("style=dashed height=0.22 fontsize=8 margin=0.04,0.01")
            return {"style": "solid"}
        if data["kind"] == "param":
            return {"style": "filled", "fillcolor": GOLD, "fontsize": "8"}
        if self.cluster(first) and (not self.detail or data["op"] == "where"):
            fill, border = _lane(scope)
            size = "9" if self.detail else "10"
            return _pairs(
                f"style=rounded,filled,bold fillcolor={fill} color={border} fontsize={size}"
            )
        if (scope == "loss" and not self.detail) or first[1] in ("L", "total"):
            total = first[2] is None and len(self.g.outputs.get("losses", ())) > 1
            if total:
                return _pairs("fillcolor=#e06666 fontsize=10 shape=doubleoctagon")
            return _pairs("fillcolor=#f4cccc fontsize=10")
        return _pairs("shape=ellipse fillcolor=#f3f3f3 fontsize=8 margin=0.02")

    def shape_of(self, key: Key) -> str:
        return "×".join(map(str, self.g.param_info[self.g.node(key)["param"]].shape))

    def param_table(self, block: str, colours: dict[Key, str]) -> str:
        """A layer's parameters as one gold table: a cell per parameter, with its shape."""
        cells = [
            (f"{k[1]}<BR/>{self.shape_of(k)}", colours.get(k, GOLD)) for k in self.members[block]
        ]
        return _table(f"<B>{block.split(' ', 1)[1]}</B>", cells, border=1)

    def width(self, block: str) -> float:
        """Roughly how wide (inches) a block is drawn, to keep parameters clear of the grid."""
        if not block.startswith("params "):
            return 0.2 + 0.075 * max(map(len, self.label(block).split("\\n")))
        return 0.1 + 0.09 * (
            len(block) + sum(max(len(k[1]), len(self.shape_of(k))) for k in self.members[block])
        )


class _Scale:
    """log10 of a gradient norm -> a colour and a pen width, over the range drawn."""

    def __init__(self, norms):
        logs = [math.log10(n) for n in norms if n is not None and 0 < n < math.inf]
        self.lo, self.hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
        if self.hi - self.lo < 1e-9:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5

    def frac(self, norm: float) -> float:
        if not 0 < norm < math.inf:
            return float(norm > 0)
        return min(1.0, max(0.0, (math.log10(norm) - self.lo) / (self.hi - self.lo)))

    def colour(self, norm: float) -> str:
        if norm == 0 or not math.isfinite(norm):
            return ZERO if norm == 0 else "#d62728"
        return PALETTE[min(len(PALETTE) - 1, int(self.frac(norm) * len(PALETTE)))]

    def legend(self) -> str:
        ticks = [10 ** (self.lo + i * (self.hi - self.lo) / 4) for i in range(5)]
        cells = [("0", ZERO)] + [(f"{x:.0e}", self.colour(x)) for x in ticks]
        return _table("gradient norm ‖∂L/∂value‖, log scale:", cells, border=0)


def _node_attrs(scene: _Scene, block: str) -> tuple[dict[str, str], float | None]:
    first = scene.members[block][0]
    tooltip = ", ".join(key_str(k) for k in scene.members[block][:8])
    attrs = {"label": scene.label(block), **scene.style(block), "tooltip": tooltip}
    norm = None
    if scene.grads and not block.startswith("params "):
        param = scene.g.node(first)["kind"] == "param"
        norm = scene.norm(scene.members[block] if param else scene.exported(block))
    if norm is not None and scene.cluster(first) and not scene.detail:
        attrs["label"] += f"\\n|∇| {norm:.1e}"
    padded = scene.padding(block)
    if padded == "full":
        attrs.update(fillcolor="#f2f2f2", fontcolor=GREY, color=GREY)
        attrs["label"] += "\\n(padded)" if scene.cluster(first) and not scene.detail else ""
        norm = None
    elif padded == "part":
        attrs["style"] = attrs.get("style", "") + ",dashed"
    return attrs, norm


def _edge_attrs(scene: _Scene, tail: str, head: str, names: list[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if tail.startswith("param"):
        attrs = _pairs(f"color={PARAM_EDGE} style=dashed arrowsize=0.4")
    elif names:
        attrs = {"penwidth": "2.2", "color": STATE, "label": ", ".join(names)}
        if scene.cluster(scene.members[tail][0]) == scene.cluster(scene.members[head][0]):
            back = scene.members[head][0][0].endswith(".bwd")  # only when folded
            attrs["label"] += f": t{'+' if back else '-'}1 → t"
    if "full" in (scene.padding(tail), scene.padding(head)):
        attrs.update(color=GREY, style="dotted")
    return attrs


def _paint(scene: _Scene, nodes: dict, edges: dict) -> _Scale:
    """Colour nodes, parameter cells and edges by their gradient norms; returns the scale."""
    params = {k: scene.norm([k]) for k in scene.g.params.values()} if scene.grads else {}
    norms = [n for _, n in nodes.values()] + [n for _, n in edges.values()]
    scale = _Scale(norms + list(params.values()))
    for attrs, norm in nodes.values():
        if norm is not None:
            attrs.update(fillcolor=scale.colour(norm), fontcolor=_ink(scale.colour(norm)))
            attrs["style"] = attrs.get("style", "") + ",filled"
    for (_, _, state), (attrs, norm) in edges.items():
        if norm is not None and attrs.get("style") != "dotted":
            attrs["color"] = scale.colour(norm)
            attrs["penwidth"] = f"{(1.6 if state else 0.6) + 2.4 * scale.frac(norm):.2f}"
    colours = {k: scale.colour(n) for k, n in params.items() if n is not None}
    for block, (attrs, _) in nodes.items():
        if block.startswith("params "):
            attrs.update(PLAIN, label=scene.param_table(block, colours))
    return scale


def _levels(scene: _Scene, edges: dict, row_of: dict[str, str]) -> dict[str, int]:
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
    order = list(nx.topological_sort(dag))
    for row in order:
        level[row] = max((level[p] + 1 for p in dag.predecessors(row)), default=0)
    for row in reversed(order):
        if dag.in_degree(row) == 0 and dag.out_degree(row):
            level[row] = min(level[s] for s in dag.successors(row)) - 1
    return {block: level[row] for block, row in row_of.items() if dag.degree(row)}


def _columns(scene: _Scene, edges: dict) -> tuple[dict[str, float], dict[str, int]]:
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


def _grid(scene: _Scene, edges: dict) -> dict[str, tuple[float, float]]:
    """Positions (inches) for the unrolled views; blocks sharing a place stand side by side,
    initial states (h over c) one above the other."""
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


def _clear(scene: _Scene, where: dict) -> None:
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


def _place_param(scene: _Scene, block: str, heads: list[str], where: dict, row: float) -> None:
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


def _emit(dot: graphviz.Digraph, scene: _Scene, nodes: dict, edges: dict, where: dict) -> None:
    """Title, nodes (pinned where `where` says; in their step cluster in the detail view), edges."""
    pattern = f" ({scene.spec.model.pattern})" if scene.spec is not None else ""
    view = "folded" if scene.fold else f"unrolled T={scene.steps}"
    dot.attr(label=f"{dot.name}{pattern}, {view}; bold: state t-1 → t, gold: shared parameters")
    clusters: dict[str, list[str]] = defaultdict(list)
    for block, (attrs, _) in nodes.items():
        if block in where:
            attrs["pos"] = "{:.2f},{:.2f}!".format(*where[block])
        name = scene.cluster(scene.members[block][0]) if scene.detail else None
        clusters[name].append(block) if name else dot.node(block, **attrs)
    for name, blocks in clusters.items():
        padded, label = scene.padding(blocks[0]), name + (" (every t)" if scene.fold else "")
        style = {"style": "rounded", "color": _lane(name)[1]}
        if padded:
            label += f" (padded in {sum(n <= scene.t(blocks[0]) for n in scene.lengths)}"
            label += f"/{len(scene.lengths)})"
            full = f"style=rounded,filled fillcolor=#f7f7f7 color={GREY}"
            style.update(_pairs(full if padded == "full" else "style=rounded,dashed"))
        with dot.subgraph(name=f"cluster_{name}") as sub:
            # left-justified: neato writes it inside the box, where a cell's top node is centred
            sub.attr(label=label, labeljust="l", fontsize="8", fontcolor="#666666", **style)
            for block in blocks:
                sub.node(block, **nodes[block][0])
    for (tail, head, _), (attrs, _) in edges.items():
        dot.edge(tail, head, **attrs)


def render_graph(
    graph: Graph,
    *,
    lengths: list[int] | None = None,
    grads: dict[Key, Any] | None = None,
    fold: bool = False,
    spec=None,
    detail: bool = False,
) -> graphviz.Digraph:
    """Draw an unrolled `graph` (never modified) as a graphviz.Digraph.

    lengths: real steps of each sequence of a batch. Step t is greyed (padded everywhere) when
        t >= max(lengths) and dashed when padded in some sequences (min <= t < max). They count
        input steps; for one_to_many, which has none, the generated steps.
    grads: node key -> gradient. Parameters (all `Program.backward` returns) colour their table
        cells; any other node with an entry (render_model gives all) colours what it is drawn
        as, by log10 of the norm, with a legend.
    fold: each cell once, with a self-loop for its recurrence, instead of once per step.
    spec: the model's Spec, for cell names ("LSTM l0") and the title.
    detail: every op node, in a cluster per cell step, instead of one node per cell step.
    The unrolled views are pinned on a grid for `neato`, the folded one laid out by `dot`.
    """
    scene = _Scene(graph, spec, detail, fold, lengths, grads)
    nodes = {block: _node_attrs(scene, block) for block in scene.members}
    edges = {}
    for (tail, head, state), (names, values) in scene.edges().items():
        norm = None if tail.startswith("param") else scene.norm(values)  # per-step dW unknown
        edges[(tail, head, state)] = (_edge_attrs(scene, tail, head, names), norm)
    scale = _paint(scene, nodes, edges)
    where = {} if fold else _grid(scene, edges)
    # layout=neato: the pinned grid survives `dot -Tsvg g.dot` too
    splines = "true" if len(edges) <= SPLINE_EDGES else "line"
    grid = {"layout": "neato", "splines": splines} if where else {}
    name = spec.name if spec is not None else "seqgraph"
    engine, graph_attr = "neato" if where else "dot", {**GRAPH_ATTR, **grid}
    dot = graphviz.Digraph(name, engine=engine, graph_attr=graph_attr, node_attr=NODE_ATTR)
    dot.edge_attr.update(EDGE_ATTR)
    _emit(dot, scene, nodes, edges, where)
    if scene.grads:
        corner = max(where.values(), default=(0.0, 0.0))[0]
        dot.node("legend", label=scale.legend(), **PLAIN, pos=f"{corner:.2f},{-ROW:.2f}!")
    return dot


def render_to_file(digraph: graphviz.Digraph, path: str | Path) -> Path:
    """Write `digraph` by the suffix of `path`: .dot (its source; needs no Graphviz install),
    or .svg, .png, .pdf (drawn by the Graphviz programs, `dot`). Returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt in ("dot", "gv"):
        path.write_text(digraph.source, encoding="utf-8")
        return path
    if fmt not in ("svg", "png", "pdf"):
        raise SeqgraphError(f"cannot write {path.name}: use a .dot, .svg, .png or .pdf file")
    missing = (
        f"drawing a .{fmt} needs Graphviz's `dot` program, which is not on PATH; install "
        "it (apt-get install graphviz / brew install graphviz) or write a .dot file"
    )
    if shutil.which("dot") is None:
        raise SeqgraphError(missing)
    try:
        path.write_bytes(digraph.pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        raise SeqgraphError(missing) from None
    except graphviz.CalledProcessError as exc:
        reason = (exc.stderr or b"").decode(errors="replace").strip().splitlines() or ["?"]
        raise SeqgraphError(f"Graphviz could not draw {path.name}: {reason[-1]}") from None
    return path


def render_model(
    model,
    steps: int,
    *,
    out_steps: int | None = None,
    lengths: list[int] | None = None,
    fold: bool = False,
    with_grads: bool = False,
    batch: dict | None = None,
    detail: bool = False,
) -> graphviz.Digraph:
    """Draw `model` (a seqgraph.Model) unrolled over `steps` input steps (and `out_steps`
    decoder steps, default `steps`). with_grads: run one forward and backward pass on `batch`
    (default a random batch, one sequence per entry of `lengths`, else 2) and colour every
    value by its gradient norm; a given batch sets the steps and, unless given, the lengths."""
    spec = model.spec
    if spec.model.feeds_back and out_steps is None:
        out_steps = steps
    if not with_grads:
        graph = model.compiled(steps, out_steps)
        return render_graph(graph, lengths=lengths, fold=fold, spec=spec, detail=detail)
    axis = "y_lengths" if spec.model.pattern == "one_to_many" else "lengths"
    if batch is None:
        batch = batching.dummy(spec, len(lengths) if lengths else 2, steps, out_steps)
        batch[axis] = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    lengths = lengths if lengths is not None else batch.get(axis)
    graph, grads = _model_grads(model, batch)
    lengths = None if lengths is None else list(lengths)
    return render_graph(graph, lengths=lengths, grads=grads, fold=fold, spec=spec, detail=detail)


def _model_grads(model, batch: dict) -> tuple[Graph, dict[Key, Any]]:
    """One forward pass on `batch` as Model._run does it, then every node's gradient."""
    _, steps, out_steps = batching.shape_of(model.spec, batch)
    program = model.program(steps, out_steps)
    graph, backend = program.graph, model.backend
    leaves = {k: backend.asarray(v) for k, v in batching.feeds(model.spec, graph, batch).items()}
    leaves.update({key: model.params[name] for name, key in graph.params.items()})
    leaves.update({key: backend.asarray(v) for key, v in program.consts.items()})
    return graph, _node_grads(program, backend.xp, program.forward(backend.xp, leaves))


def _node_grads(program: Program, xp, values: dict) -> dict[Key, Any]:
    """dL/d(node) for every node that needs one. Program.backward frees each node's gradient
    once passed on (only the leaves' come back), so this is its loop keeping them all."""
    loss = program.graph.loss
    grads: dict[Key, Any] = {loss: xp.ones_like(values[loss])}
    for ins in reversed(program.instructions):
        if ins.key not in grads:
            continue
        inputs = [values[i] for i in ins.inputs]
        parts = ins.op.vjp(xp, grads[ins.key], values[ins.key], *inputs, **ins.attrs)
        for source, grad in zip(ins.inputs, parts):
            if grad is not None and source in program.needs_grad:
                grads[source] = grads[source] + grad if source in grads else grad
    return grads
