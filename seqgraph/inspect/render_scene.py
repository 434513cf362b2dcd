"""What the renderer draws: an unrolled graph grouped into blocks (one per cell step, or per
op in the detail view), their labels, styles and the edges between them. Its public names
(`Scene`, the style constants and helpers) are what the grid placement (`render_grid.py`) and
the drawing (`render.py`) share."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import networkx as nx
import numpy as np

from seqgraph.engine.graph import Graph, Key, key_str
from seqgraph.engine.xp_extra import to_numpy


def attr_pairs(text: str) -> dict[str, str]:
    """ "a=1 b=2" -> {"a": "1", "b": "2"}: Graphviz attributes and op symbols, compactly."""
    return dict(item.split("=", 1) for item in text.split())


SYMBOLS = attr_pairs(
    "add=+ addn=Σ sub=− mul=⊙ div=÷ neg=−x matmul=@ sigmoid=σ chunk=split slice=[:] sum=Σ "
    "where=mask embedding=embed softmax_ce=CE mse=MSE"
)
HIDDEN_ROLES = ("mask", "weight", "coin")
# reversed viridis: small gradients pale and thin, large ones dark and thick
PALETTE = tuple(
    "#fde725 #b5de2b #6ece58 #35b779 #1f9e89 #26828e #31688e #3e4989 #482878 #440154".split()
)
ZERO, GREY, GOLD, STATE, PARAM_EDGE = "#e0e0e0", "#b0b0b0", "#ffd966", "#1a4d99", "#c9a227a0"
ATTENTION = "#e69138"  # edges into and out of the attention memory
LANES = {
    "fwd": ("#dbe9f6", "#6b9bd1"),
    "bwd": ("#dff0d8", "#6aa84f"),
    "dec": ("#ebe1f3", "#8e7cc3"),
}
SUBSCRIPT = str.maketrans("0123456789t-", "₀₁₂₃₄₅₆₇₈₉ₜ₋")
COLUMN, ROW, DETAIL_ROW = 1.5, 0.8, 0.55  # grid spacing, inches
SPLINE_EDGES = 250  # above this, straight edges: routing them around nodes gets slow
GRAPH_ATTR = attr_pairs(
    "rankdir=BT fontname=Helvetica fontsize=11 labelloc=t outputorder=edgesfirst"
)
NODE_ATTR = attr_pairs(
    "fontname=Helvetica fontsize=9 shape=box style=rounded,filled fillcolor=white height=0.3 "
    "width=0.3 margin=0.06,0.03"
)
PLAIN = attr_pairs("shape=plaintext style=solid margin=0")  # for HTML-like tables
EDGE_ATTR = attr_pairs("arrowsize=0.5 penwidth=0.8 color=#555555 fontname=Helvetica fontsize=8")


def subscript(t) -> str:
    """t as subscript digits ("" for None): h₁₂."""
    return "" if t is None else str(t).translate(SUBSCRIPT)


def _group(scope: str) -> str:
    """Stacked encoders (enc0, enc1) draw as one block, so do stacked output decoders (decode0,
    decode1, and the flattening `decode`), and a layer's bridges (h, c) as one."""
    return re.sub(r"^(enc|fb|decode)\d+$|^(bridge\.l\d+)\..*$", lambda m: m[1] or m[2], scope)


def lane_colours(scope: str) -> tuple[str, str]:
    """(fill, border) colours of a scope's lane: forward, backward (`.bwd`) or decoder."""
    return LANES["bwd" if scope.endswith(".bwd") else "dec" if scope.startswith("dec.") else "fwd"]


def ink_on(background: str) -> str:
    """The text colour readable on `background` (white on the dark end of the palette)."""
    return "white" if background in PALETTE[5:] else "black"


def html_table(title: str, cells: list[tuple[str, str]], border: int) -> str:
    """An HTML-like label: a title cell, then (text, background) cells, in one row."""
    row = "".join(
        f'<TD BGCOLOR="{bg}"><FONT COLOR="{ink_on(bg)}">{text}</FONT></TD>' for text, bg in cells
    )
    return (
        f'<<TABLE BORDER="{border}" CELLBORDER="{1 - border}" CELLSPACING="0" CELLPADDING="2" '
        f'BGCOLOR="{GOLD if border else "white"}"><TR><TD>{title}</TD>{row}</TR></TABLE>>'
    )


class Scene:
    """What to draw, worked out from the graph: blocks (drawn nodes), their members, edges.

    The one interface between the three render modules: `render_grid.grid_positions`
    places a scene's blocks, `render.render_graph` styles and emits them."""

    def __init__(self, graph: Graph, spec, detail: bool, fold: bool, lengths, grads):
        self.g, self.spec, self.detail, self.fold = graph, spec, detail, fold
        self.lengths = [int(n) for n in lengths] if lengths else None
        self.grads = grads or {}
        order = graph.order()
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
            return "y" + subscript("t-1" if self.fold else t - 1) if self.fold or t else "⟨bos⟩"
        if data["kind"] == "input":
            return name[:-1] + " init" if role == "state" else (role or name) + subscript(shown)
        if data["kind"] == "param":
            return f"{scope}.{name}\\n{self.g.param_info[data['param']].shape}"
        if self.cluster(first) and not self.detail:
            return f"{self.cell_name(scope)} {scope}" + ("" if self.fold else f"\\nt={t}")
        if scope == "loss" and (not self.detail or name in ("L", "total")):
            several = len(self.g.outputs.get("losses", ())) > 1
            return "L = Σₜ Lₜ" if several and t is None else "L" + subscript(shown)
        if scope == "out" and not self.detail:
            return "ŷ" + subscript(shown)
        if scope == "att" and not self.detail:
            return self._attention_label(t)
        if self.detail and self.cluster(first) and data["op"] == "where":
            return name + subscript(shown)
        ops = [SYMBOLS.get(op, op) for op in (self.g.node(k)["op"] for k in self.members[block])]
        if len(set(ops)) == 1:
            return ops[0]
        return _group(scope) + ("\\n" + " → ".join(ops) if len(ops) <= 4 else "")

    def _attention_label(self, t) -> str:
        """The memory every decoder step reads (one block, so T x T' attention edges draw
        as T in and T' out), or one step's attention: weights a_t, context c_t, h~_t."""
        if t is None:
            steps = "every hₛ" if self.fold else f"h₀ … h{subscript(self.x_steps - 1)}"
            return f"memory H = [{steps}]\\n(masked to real length)"
        shown = "t" if self.fold else t
        return f"attention{subscript(shown)}\\na, c, h̃"

    def is_attention(self, block: str) -> bool:
        """A block of the attention: the memory or a decoder step's read of it."""
        first = self.members[block][0]
        return first[0] == "att" and self.g.node(first)["kind"] == "op" and not self.detail

    def style(self, block: str) -> dict[str, str]:
        first = self.members[block][0]
        data, scope = self.g.node(first), first[0]
        if data["kind"] == "input":
            if data.get("role") == "state":  # small, so that h over c fits between two rows
                return attr_pairs("style=dashed height=0.22 fontsize=8 margin=0.04,0.01")
            return {"style": "solid"}
        if data["kind"] == "param":
            return {"style": "filled", "fillcolor": GOLD, "fontsize": "8"}
        if self.cluster(first) and (not self.detail or data["op"] == "where"):
            fill, border = lane_colours(scope)
            size = "9" if self.detail else "10"
            return attr_pairs(
                f"style=rounded,filled,bold fillcolor={fill} color={border} fontsize={size}"
            )
        if scope == "att" and not self.detail:
            return attr_pairs(f"shape=box style=rounded,filled fillcolor=#fce5cd color={ATTENTION}")
        if (scope == "loss" and not self.detail) or first[1] in ("L", "total"):
            total = first[2] is None and len(self.g.outputs.get("losses", ())) > 1
            if total:
                return attr_pairs("fillcolor=#e06666 fontsize=10 shape=doubleoctagon")
            return attr_pairs("fillcolor=#f4cccc fontsize=10")
        return attr_pairs("shape=ellipse fillcolor=#f3f3f3 fontsize=8 margin=0.02")

    def shape_of(self, key: Key) -> str:
        return "×".join(map(str, self.g.param_info[self.g.node(key)["param"]].shape))

    def param_table(self, block: str, colours: dict[Key, str]) -> str:
        """A layer's parameters as one gold table: a cell per parameter, with its shape."""
        cells = [
            (f"{k[1]}<BR/>{self.shape_of(k)}", colours.get(k, GOLD)) for k in self.members[block]
        ]
        return html_table(f"<B>{block.split(' ', 1)[1]}</B>", cells, border=1)

    def width(self, block: str) -> float:
        """Roughly how wide (inches) a block is drawn, to keep parameters clear of the grid."""
        if not block.startswith("params "):
            return 0.2 + 0.075 * max(map(len, self.label(block).split("\\n")))
        return 0.1 + 0.09 * (
            len(block) + sum(max(len(k[1]), len(self.shape_of(k))) for k in self.members[block])
        )
