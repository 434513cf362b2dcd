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
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import graphviz
import numpy as np

from seqgraph.engine.autodiff import Program
from seqgraph.engine.graph import Graph, Key, key_str
from seqgraph.errors import SeqgraphError
from seqgraph.inspect.render_grid import grid_positions
from seqgraph.inspect.render_scene import (
    ATTENTION,
    EDGE_ATTR,
    GRAPH_ATTR,
    GREY,
    NODE_ATTR,
    PALETTE,
    PARAM_EDGE,
    PLAIN,
    ROW,
    SPLINE_EDGES,
    STATE,
    ZERO,
    Scene,
    attr_pairs,
    html_table,
    ink_on,
    lane_colours,
    subscript,
)
from seqgraph.runtime import batch as batching

ATTENTION_FOLD = 8  # above this many encoder steps, the attention fans are drawn folded


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
        return html_table("gradient norm ‖∂L/∂value‖, log scale:", cells, border=0)


def _node_attrs(scene: Scene, block: str) -> tuple[dict[str, str], float | None]:
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


def _edge_attrs(scene: Scene, tail: str, head: str, names: list[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if tail.startswith("param"):
        attrs = attr_pairs(f"color={PARAM_EDGE} style=dashed arrowsize=0.4")
    elif names:
        attrs = {"penwidth": "2.2", "color": STATE, "label": ", ".join(names)}
        if scene.cluster(scene.members[tail][0]) == scene.cluster(scene.members[head][0]):
            back = scene.members[head][0][0].endswith(".bwd")  # only when folded
            attrs["label"] += f": t{'+' if back else '-'}1 → t"
    elif scene.is_attention(head) and not scene.is_attention(tail) and scene.t(head) is None:
        attrs = {"color": ATTENTION, "penwidth": "1.2"}  # an encoder output into the memory
        attrs.update({"label": "every hₛ"} if scene.fold else {})
    elif scene.is_attention(tail) and scene.t(tail) is None:
        attrs = {"color": ATTENTION, "penwidth": "1.6"}  # the memory read by a decoder step
        attrs.update({"label": "all s"} if scene.fold else {})
    if "full" in (scene.padding(tail), scene.padding(head)):
        attrs.update(color=GREY, style="dotted")
    return attrs


def _fold_attention(scene: Scene, edges: dict) -> dict:
    """Attention makes every decoder step read every encoder step; the picture routes that
    through one memory block H (T edges in, T' out, not T x T'). Above ATTENTION_FOLD
    encoder steps even those fan across the picture, so each fan is drawn as one edge, from
    the last encoder step and to the first decoder step, labelled with what it stands for."""
    if scene.fold or scene.x_steps <= ATTENTION_FOLD:
        return edges
    memory = [b for b in scene.members if scene.is_attention(b) and scene.t(b) is None]
    if not memory:
        return edges
    into = [k for k in edges if k[1] == memory[0] and not scene.is_attention(k[0])]
    out = [k for k in edges if k[0] == memory[0] and scene.is_attention(k[1])]
    last = f"h₀ … h{subscript(scene.x_steps - 1)} ({len(into)} edges)"
    for group, pick, label in (
        (into, max, last),
        (out, min, f"read by every attentionₜ ({len(out)} edges)"),
    ):
        if len(group) < 2:
            continue
        keep = pick(group, key=lambda k: scene.t(k[0] if group is into else k[1]))
        edges[keep][0].update(label=label, penwidth="2.4")
        for key in group:
            if key != keep:
                del edges[key]
    return edges


def _paint(scene: Scene, nodes: dict, edges: dict) -> _Scale:
    """Colour nodes, parameter cells and edges by their gradient norms; returns the scale."""
    params = {k: scene.norm([k]) for k in scene.g.params.values()} if scene.grads else {}
    norms = [n for _, n in nodes.values()] + [n for _, n in edges.values()]
    scale = _Scale(norms + list(params.values()))
    for attrs, norm in nodes.values():
        if norm is not None:
            attrs.update(fillcolor=scale.colour(norm), fontcolor=ink_on(scale.colour(norm)))
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


def _emit(dot: graphviz.Digraph, scene: Scene, nodes: dict, edges: dict, where: dict) -> None:
    """Title, nodes (pinned where `where` says; in their step cluster in the detail view), edges."""
    pattern = f" ({scene.spec.model.pattern})" if scene.spec is not None else ""
    view = "folded" if scene.fold else f"unrolled T={scene.steps}"
    attention = ", orange: attention" if scene.g.outputs.get("attention") else ""
    dot.attr(
        label=f"{dot.name}{pattern}, {view}; bold: state t-1 → t, gold: shared parameters"
        + attention
    )
    clusters: dict[str, list[str]] = defaultdict(list)
    for block, (attrs, _) in nodes.items():
        if block in where:
            attrs["pos"] = "{:.2f},{:.2f}!".format(*where[block])
        name = scene.cluster(scene.members[block][0]) if scene.detail else None
        clusters[name].append(block) if name else dot.node(block, **attrs)
    for name, blocks in clusters.items():
        padded, label = scene.padding(blocks[0]), name + (" (every t)" if scene.fold else "")
        style = {"style": "rounded", "color": lane_colours(name)[1]}
        if padded:
            label += f" (padded in {sum(n <= scene.t(blocks[0]) for n in scene.lengths)}"
            label += f"/{len(scene.lengths)})"
            full = f"style=rounded,filled fillcolor=#f7f7f7 color={GREY}"
            style.update(attr_pairs(full if padded == "full" else "style=rounded,dashed"))
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
    scene = Scene(graph, spec, detail, fold, lengths, grads)
    nodes = {block: _node_attrs(scene, block) for block in scene.members}
    edges = {}
    for (tail, head, state), (names, values) in scene.edges().items():
        norm = None if tail.startswith("param") else scene.norm(values)  # per-step dW unknown
        edges[(tail, head, state)] = (_edge_attrs(scene, tail, head, names), norm)
    edges = _fold_attention(scene, edges)
    scale = _paint(scene, nodes, edges)
    where = {} if fold else grid_positions(scene, edges)
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


class Drawing:
    """A drawn graph that a notebook shows inline (`_repr_svg_`, through Graphviz's `dot`);
    `save(path)` writes it as .svg, .png, .pdf or .dot, and `source` is its DOT text."""

    def __init__(self, digraph: graphviz.Digraph):
        self.digraph = digraph

    @property
    def source(self) -> str:
        return self.digraph.source

    def save(self, path: str | Path) -> Path:
        return render_to_file(self.digraph, path)

    def _repr_svg_(self) -> str | None:
        if shutil.which("dot") is None:  # Jupyter then shows the repr instead
            return None
        return self.digraph.pipe(format="svg").decode()

    def __repr__(self) -> str:
        return (
            f"Drawing({self.digraph.name!r}; .save('graph.svg') writes it, or show it in Jupyter)"
        )


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
        graph = model.unrolled(steps, out_steps)
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
    """One interpreter pass on `batch`, then every node's gradient."""
    program, values = model.interpret(batch)
    return program.graph, _node_grads(program, model.backend.xp, values)


def _node_grads(program: Program, xp, values: dict) -> dict[Key, Any]:
    """dL/d(node) for every node that needs one: the parameters' from `backward`, every op
    node's as `backward` completes it (its `observe` hook)."""
    grads: dict[Key, Any] = {}

    def keep(key: Key, grad, consumer) -> None:
        if consumer is None:
            grads[key] = grad

    grads.update(program.backward(xp, values, program.graph.loss, observe=keep))
    return grads
