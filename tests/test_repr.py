"""What a notebook shows: one-line reprs of Spec, Model and Graph, `Graph.describe` for one
node, and the Model getters for compiled forms (`graph`, `unrolled`, `plan`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from seqgraph import Model, load_spec
from seqgraph.errors import GraphError
from seqgraph.runtime import batch as batching

RAW = {
    "name": "tiny",
    "model": {
        "pattern": "many_to_many",
        "input": {"type": "ids", "vocab": 7},
        "target": {"type": "ids", "vocab": 4},
        "encoders": [{"type": "embedding", "size": 6}],
        "layers": [
            {"cell": "lstm", "hidden": 5, "bidirectional": True},
            {"cell": "gru", "hidden": 3},
        ],
    },
    "dtype": "float64",
}


def test_spec_repr_is_one_short_line_with_name_pattern_stack_and_sizes():
    spec = load_spec(RAW)
    text = repr(spec)
    assert text == (
        "Spec('tiny': many_to_many, ids 7 -> embedding 6 -> lstm 5 bidirectional concat "
        "-> gru 3 -> ids 4; loss softmax_ce; numpy float64, seed 0)"
    )
    assert "\n" not in text and "CellSpec" not in text  # not a dump of every field
    assert repr(spec.model).startswith("ModelSpec(many_to_many: ids 7 -> embedding 6 -> lstm 5")
    assert repr(spec.model.layers[0]) == "LayerSpec(lstm 5 bidirectional concat)"
    assert repr(spec.model.input) == "IOSpec(ids 7)"
    assert repr(spec.model.encoders[0]) == "EncoderSpec(embedding 6)"


def test_cell_spec_repr_names_io_params_and_equation_count():
    text = repr(load_spec(RAW).cells["lstm"])
    assert text.startswith("CellSpec('lstm': inputs x; state h, c -> h; params W_ih (input, ")
    assert "4 equations; i,f,g,o = split(" in text


def test_decoder_layers_follow_the_encoder_in_the_stack():
    path = Path(__file__).resolve().parent.parent / "specs" / "copy_seq2seq.yaml"
    spec = load_spec(path)
    assert "gru 64 => dec gru 64 -> ids 10" in spec.model.stack
    assert repr(spec).endswith(f"numpy float32, seed 0, from {path})")


def test_model_repr_names_spec_layers_params_backend_and_engine():
    model = Model(RAW, engine="interp")
    text = repr(model)
    assert text.startswith("Model('tiny': many_to_many, ids 7 -> embedding 6 -> lstm 5 bid")
    assert f"; {model.num_params():,} params; numpy float64, engine interp)" in text


def test_graph_repr_counts_nodes_edges_steps_and_names_params():
    model = Model(RAW)
    graph = model.unrolled(4)
    text = repr(graph)
    assert text.startswith(f"Graph({graph.nx.number_of_nodes()} nodes (")
    assert f"{len(graph.params)} params, " in text
    assert f"{graph.nx.number_of_edges()} edges, steps t=0..3; params enc0.E, " in text
    assert f"({len(graph.params)} in all); loss loss/total)" in text


def test_describe_shows_op_inputs_attrs_source_shape_and_users():
    model = Model(RAW)
    batch = batching.dummy(model.spec, 2, 3)
    program, values = model.interpret(batch)
    graph = program.graph
    chunk = next(k for k in graph.order() if graph.node(k)["op"] == "chunk" and k[2] == 1)
    lines = graph.describe(chunk, values).splitlines()
    source = graph.node(chunk)["inputs"][0]
    assert lines[0].startswith(f"{chunk[0]}/{chunk[1]}@1 = chunk({source[0]}/{source[1]}@1, ")
    assert "parts=4" in lines[0]
    assert "  source: equations[" in lines[1]
    assert f"  shape: {tuple(values[chunk].shape)} float64" in lines
    assert lines[-1].startswith("  used by: ")
    param = graph.describe(graph.params["l1.W_hh"])
    assert param.splitlines()[:3] == ["l1/W_hh: param", "  param: l1.W_hh", "  shape: (3, 9)"]
    with pytest.raises(GraphError, match="no node l9/h@0"):
        graph.describe(("l9", "h", 0))


def test_graph_is_a_networkx_copy_of_the_cached_unrolled_graph():
    model = Model(RAW)
    unrolled = model.unrolled(3)
    assert model.unrolled(3) is unrolled  # cached: the graph the engines run
    graph = model.graph(steps=3)
    assert isinstance(graph, nx.MultiDiGraph)
    assert list(graph.nodes) == list(unrolled.nx.nodes)
    graph.remove_node(next(iter(graph.nodes)))  # a copy: the model's own is untouched
    assert unrolled.nx.number_of_nodes() == graph.number_of_nodes() + 1


def test_plan_getter_is_cached_and_has_a_forward_only_form():
    model = Model(RAW)
    batch = batching.dummy(model.spec, 2, 3)
    plan = model.plan(batch)
    assert model.plan(batch) is plan and plan.backward_kernels
    forward_only = model.plan(batch, grads=False)
    assert forward_only is not plan and not forward_only.backward_kernels


def test_model_shows_in_a_notebook_as_its_summary_and_parameter_table():
    model = Model(RAW, engine="interp")
    page = model._repr_html_()
    assert page.startswith("<p><code>Model(&#x27;tiny&#x27;: many_to_many")
    for name, info in model.param_info.items():
        size = int(np.prod(info.shape))
        shape = " × ".join(map(str, info.shape))
        assert f"<tr><td><code>{name}</code></td><td>{shape}</td>" in page
        assert f"<td style='text-align:right'>{size:,}</td></tr>" in page
    assert page.count("<tr>") == len(model.param_info) + 1


def test_render_without_a_file_is_a_drawing_a_notebook_shows_inline(tmp_path):
    import seqgraph

    drawing = seqgraph.render(RAW, steps=3, log=lambda line: None)
    assert repr(drawing).startswith("Drawing('tiny'; .save(")
    assert "GRU l1" in drawing.source or "gru" in drawing.source.lower()
    saved = drawing.save(tmp_path / "g.dot")
    assert saved.read_text() == drawing.source
    if shutil.which("dot") is None:
        assert drawing._repr_svg_() is None  # Jupyter falls back to the repr
    else:
        svg = drawing._repr_svg_()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "x₂" in svg
