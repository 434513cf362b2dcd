"""Structure of the pictures seqgraph.inspect.render draws, read back from their DOT source."""

from __future__ import annotations

import copy
import re
import shutil

import numpy as np
import pytest

from seqgraph import Model, SeqgraphError
from seqgraph.engine.autodiff import Program
from seqgraph.inspect import render
from seqgraph.spec.unroll import compile_graph

ID = r'"((?:[^"\\]|\\.)*)"|([\w.]+)'
EDGE = re.compile(rf"^\t+(?:{ID}) -> (?:{ID})(?: \[(.*)\])?$")
NODE = re.compile(rf"^\t+(?:{ID}) \[(.*)\]$")
ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|<.*>(?= \w+=|$)|[^ ]+)')


def attrs(text: str | None) -> dict[str, str]:
    return {k: v.strip('"') for k, v in ATTR.findall(text or "")}


def parse(dot) -> tuple[dict, list, list]:
    """(node name -> attrs, [(tail, head, attrs)], cluster names) of a Digraph's source."""
    nodes, edges = {}, []
    for line in dot.source.splitlines():
        if found := EDGE.match(line):
            tail, head = found[1] or found[2], found[3] or found[4]
            edges.append((tail, head, attrs(found[5])))
        elif (found := NODE.match(line)) and (found[1] or found[2]) not in (
            "graph",
            "node",
            "edge",
        ):
            assert (found[1] or found[2]) not in nodes, f"{found[1]} drawn twice"
            nodes[found[1] or found[2]] = attrs(found[3])
    clusters = re.findall(r'subgraph "?cluster_([^"{]*)"? \{', dot.source)
    return nodes, edges, clusters


def spec(pattern="many_to_many", cell="lstm", layers=1, bidirectional=False, **extra) -> dict:
    io = {"type": "ids", "vocab": 5}
    layer = {"cell": cell, "hidden": 3, "bidirectional": bidirectional}
    model = {"pattern": pattern, "input": io, "target": io, "layers": [layer] * layers}
    model["encoders"] = [{"type": "embedding", "size": 2}]
    model.update(extra)
    return {"name": f"{cell}_{pattern}", "model": model}


def model(**kw) -> Model:
    return Model(spec(**kw), dtype="float64", seed=0)


def steps_of(nodes: dict, scope: str) -> list[int]:
    return sorted(int(n.split("@")[1]) for n in nodes if re.fullmatch(rf"{scope}@\d+", n))


def pos(node: dict) -> tuple[float, float]:
    x, y = node["pos"].rstrip("!").split(",")
    return float(x), float(y)


# ---- the unrolled (compact) view ----------------------------------------------------------------


def test_each_parameter_drawn_once_with_an_edge_to_every_step():
    nodes, edges, _ = parse(render.render_model(model(), 4))
    for scope, names in {"l0": ["W_ih", "W_hh", "b_ih", "b_hh"], "out": ["W", "b"]}.items():
        table = nodes[f"params {scope}"]["label"]
        assert all(table.count(f">{name}<") == 1 for name in names)
        assert sum(f">{names[0]}<" in n.get("label", "") for n in nodes.values()) == 1
        users = {h for t, h, _ in edges if t == f"params {scope}"}
        assert users == {f"{'l0' if scope == 'l0' else 'out'}@{t}" for t in range(4)}


def test_one_node_per_cell_step_and_layer_and_bold_state_edges():
    m = model(layers=2, cell="gru")
    nodes, edges, clusters = parse(render.render_model(m, 5))
    assert steps_of(nodes, "l0") == steps_of(nodes, "l1") == list(range(5))
    assert nodes["l1@3"]["label"] == "GRU l1\\nt=3"
    state = [(t, h, a) for t, h, a in edges if a.get("label") == "h"]
    assert {(t, h) for t, h, _ in state} >= {
        (f"l{i}@{t}", f"l{i}@{t + 1}") for i in (0, 1) for t in range(4)
    }
    assert all(float(a["penwidth"]) >= 2 for _, _, a in state)
    assert pos(nodes["l0@0"])[0] < pos(nodes["l0@1"])[0] < pos(nodes["l0@4"])[0]
    assert pos(nodes["l0@2"])[1] < pos(nodes["l1@2"])[1]  # layers stack upwards
    assert clusters == []  # compact: a cell step is one node


def test_bidirectional_layers_are_two_lanes():
    m = model(layers=2, bidirectional=True, pattern="many_to_one", readout="linear")
    nodes, edges, _ = parse(render.render_model(m, 4))
    for layer in ("l0", "l1"):
        fwd, bwd = f"{layer}.fwd", f"{layer}.bwd"
        assert steps_of(nodes, fwd) == steps_of(nodes, bwd) == [0, 1, 2, 3]
        pairs = {(t, h) for t, h, a in edges if a.get("label") == "h, c"}
        assert {(f"{fwd}@{t}", f"{fwd}@{t + 1}") for t in range(3)} <= pairs
        assert {(f"{bwd}@{t + 1}", f"{bwd}@{t}") for t in range(3)} <= pairs
        assert {pos(nodes[f"{bwd}@{t}"])[1] for t in range(4)} == {pos(nodes[f"{bwd}@0"])[1]}
        assert pos(nodes[f"{fwd}@0"])[1] < pos(nodes[f"{bwd}@0"])[1]
    # many_to_one reads the forward lane's last step and the backward lane's first
    merge = {t for t, h, _ in edges if h == "l1"}
    assert merge == {"l1.fwd@3", "l1.bwd@0"}


def test_losses_flow_into_the_total():
    nodes, edges, _ = parse(render.render_model(model(), 3))
    assert [nodes[f"loss@{t}"]["label"] for t in range(3)] == ["L₀", "L₁", "L₂"]
    assert {t for t, h, _ in edges if h == "loss"} == {"loss@0", "loss@1", "loss@2"}
    assert nodes["loss"]["label"] == "L = Σₜ Lₜ"
    assert not any("mask" in n or "weight" in n or n.startswith("const") for n in nodes)


def test_padded_steps_are_greyed():
    nodes, edges, _ = parse(render.render_model(model(), 5, lengths=[3, 2]))
    for t in range(5):
        cell, loss = nodes[f"l0@{t}"], nodes[f"loss@{t}"]
        assert (cell.get("fillcolor") == "#f2f2f2") == (t >= 3)
        assert ("(padded)" in cell["label"]) == (t >= 3)
        assert (loss.get("fillcolor") == "#f2f2f2") == (t >= 3)
        assert ("dashed" in cell["style"]) == (t == 2)  # padded in one sequence of two
    assert all(a.get("style") == "dotted" for t, h, a in edges if h == "l0@4")


def test_encoder_decoder_continues_in_time_and_passes_its_state():
    m = model(pattern="encoder_decoder", cell="gru")
    nodes, edges, _ = parse(render.render_model(m, 3, out_steps=2))
    assert steps_of(nodes, "dec.l0") == [0, 1]
    assert pos(nodes["l0@2"])[0] < pos(nodes["dec.l0@0"])[0] < pos(nodes["dec.l0@1"])[0]
    assert ("l0@2", "dec.l0@0") in {(t, h) for t, h, a in edges if a.get("label") == "h"}
    assert nodes["input y/feed@0"]["label"] == "⟨bos⟩"


def test_one_to_many_starts_from_its_bridge():
    nodes, edges, _ = parse(render.render_model(model(pattern="one_to_many", cell="rnn"), 3))
    assert steps_of(nodes, "l0") == [0, 1, 2]
    assert ("bridge.l0", "l0@0") in {(t, h) for t, h, a in edges if a.get("label") == "h"}
    assert pos(nodes["bridge.l0"])[0] < pos(nodes["l0@0"])[0]


# ---- detail and folded views --------------------------------------------------------------------


def test_detail_has_a_cluster_per_cell_step_and_every_op():
    m = model(layers=2, bidirectional=True)
    nodes, edges, clusters = parse(render.render_model(m, 3, detail=True))
    assert sorted(clusters) == sorted(
        f"l{i}.{d} t={t}" for i in (0, 1) for d in ("fwd", "bwd") for t in range(3)
    )
    assert {"σ", "tanh", "⊙", "+", "@", "split"} <= {n.get("label") for n in nodes.values()}
    hh = "param l0.fwd/W_hh"
    assert hh in nodes and sum(n.startswith(hh) for n in nodes) == 1
    users = {h.split("@")[1] for t, h, _ in edges if t == hh}
    assert users == {"0", "1", "2"}


def test_fold_draws_each_cell_once_with_a_self_loop():
    nodes, edges, clusters = parse(render.render_model(model(bidirectional=True), 4, fold=True))
    cells = [n for n, a in nodes.items() if a.get("label", "").startswith("LSTM")]
    assert sorted(cells) == ["l0.bwd@t", "l0.fwd@t"]
    loops = {t: a["label"] for t, h, a in edges if t == h}
    assert loops == {"l0.fwd@t": "h, c: t-1 → t", "l0.bwd@t": "h, c: t+1 → t"}
    assert clusters == [] and nodes["input x/x@t"]["label"] == "xₜ"


# ---- gradients ----------------------------------------------------------------------------------


def palette_index(colour: str) -> int:
    return render.PALETTE.index(colour)


def test_gradient_colours_show_vanishing_along_time():
    m = model(cell="rnn", pattern="many_to_one", encoders=[{"type": "onehot"}])
    m.set_params({"l0.W_hh": 0.1 * np.eye(3)})  # a contracting recurrence: gradients vanish
    nodes, edges, _ = parse(render.render_model(m, 6, with_grads=True))
    shades = [palette_index(nodes[f"l0@{t}"]["fillcolor"]) for t in range(6)]
    assert shades == sorted(shades) and shades[0] < shades[-1]  # paler towards t=0
    state = {t: a for t, h, a in edges if a.get("label") == "h" and t.startswith("l0@")}
    assert float(state["l0@0"]["penwidth"]) < float(state["l0@4"]["penwidth"])
    assert "gradient norm" in nodes["legend"]["label"]
    assert "|∇|" in nodes["l0@5"]["label"]


def test_colours_follow_the_gradient_norms_given():
    m = model(cell="rnn")
    graph = m.unrolled(3)
    grads = {k: np.ones((2, 3)) for k in graph.nx if k[0] == "l0" and k[1] == "h"}
    before, _, _ = parse(render.render_graph(graph, grads=grads))
    grads[("l0", "h", 1)] = grads[("l0", "h", 1)] * 1e4
    after, _, _ = parse(render.render_graph(graph, grads=grads))
    assert before["l0@1"]["fillcolor"] == before["l0@0"]["fillcolor"]
    assert after["l0@1"]["fillcolor"] != after["l0@0"]["fillcolor"]


def test_parameter_gradients_from_backward_colour_the_tables():
    m = model(cell="rnn")
    graph = m.unrolled(3)
    batch = {"x": np.zeros((2, 3), dtype=int), "y": np.ones((2, 3), dtype=int)}
    grads = {graph.params[name]: g for name, g in m.loss_and_grads(batch)[1].items()}
    nodes, _, _ = parse(render.render_graph(graph, grads=grads, spec=m.spec))
    assert any(c in nodes["params l0"]["label"] for c in render.PALETTE)


def test_the_graph_is_not_changed():
    m = model(bidirectional=True)
    graph = compile_graph(m.spec, 3)
    nodes = copy.deepcopy(dict(graph.nx.nodes(data=True)))
    edges = list(graph.nx.edges(keys=True))
    Program(graph)
    for kw in ({}, {"detail": True}, {"fold": True}, {"lengths": [2]}):
        render.render_graph(graph, spec=m.spec, **kw)
    assert list(graph.nx.edges(keys=True)) == edges
    assert {k: set(v) for k, v in graph.nx.nodes(data=True)} == {
        k: set(v) for k, v in nodes.items()
    }


# ---- files --------------------------------------------------------------------------------------


def test_dot_file_needs_no_graphviz_program(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = render.render_to_file(render.render_model(model(), 2), tmp_path / "g.dot")
    assert path.read_text(encoding="utf-8").startswith("digraph")


def test_missing_dot_program_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SeqgraphError) as error:
        render.render_to_file(render.render_model(model(), 2), tmp_path / "g.svg")
    message = str(error.value)
    assert "\n" not in message and "apt-get install graphviz" in message
    assert "brew install graphviz" in message
    with pytest.raises(SeqgraphError, match="use a .dot, .svg"):
        render.render_to_file(render.render_model(model(), 2), tmp_path / "g.jpg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
@pytest.mark.parametrize("fold", [False, True])
def test_svg_is_drawn(tmp_path, fold):
    dot = render.render_model(model(bidirectional=True), 3, fold=fold, with_grads=True)
    text = render.render_to_file(dot, tmp_path / "g.svg").read_text(encoding="utf-8")
    assert "<svg" in text and "LSTM l0.bwd" in text
