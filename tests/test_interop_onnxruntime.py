"""Weights imported in the ONNX convention compute what ONNX computes with them:
- one ONNX node (LSTM/GRU/RNN with the given attributes, random weights) run by onnxruntime
  on ragged sequences, against a seqgraph model of the matching spec given the same weights
  and attributes (as a converter passes them);
- ONNX's own operator test cases (its reference outputs, initial states, sequence lengths,
  layout 1);
- the other way: the ONNX export of the new cells and of a reverse layer runs in onnxruntime,
  and a NumPy Keras GRU (both reset_after) reads the Keras export."""

from __future__ import annotations

import numpy as np
import pytest

from seqgraph import DataError, Model
from seqgraph.inspect.onnx_export import export_onnx

onnx = pytest.importorskip("onnx", reason="the operator checks build ONNX graphs")
ort = pytest.importorskip("onnxruntime", reason="the operator checks run onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

STEPS, BATCH, INPUT, HIDDEN = 6, 3, 4, 5
LENGTHS = np.array([6, 2, 4])
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

# (ONNX op, node attributes, whether the node gets B / P, seqgraph layer)
CASES = {
    "lstm": ("LSTM", {}, "B", {"cell": "lstm"}),
    "lstm_no_bias": ("LSTM", {}, "", {"cell": "lstm"}),
    "lstm_reverse": (
        "LSTM",
        {"direction": "reverse"},
        "B",
        {"cell": "lstm", "direction": "reverse"},
    ),
    "lstm_bidirectional": (
        "LSTM",
        {"direction": "bidirectional"},
        "B",
        {"cell": "lstm", "bidirectional": True},
    ),
    "lstm_peephole": ("LSTM", {}, "BP", {"cell": "lstm_peephole"}),
    "lstm_peephole_reverse": (
        "LSTM",
        {"direction": "reverse"},
        "BP",
        {"cell": "lstm_peephole", "direction": "reverse"},
    ),
    "lstm_peephole_bidirectional": (
        "LSTM",
        {"direction": "bidirectional"},
        "P",
        {"cell": "lstm_peephole", "bidirectional": True},
    ),
    # linear_before_reset left out: ONNX's default 0, the reset-before GRU
    "gru_default": ("GRU", {}, "B", {"cell": "gru_reset_before"}),
    "gru_reset_before_reverse": (
        "GRU",
        {"linear_before_reset": 0, "direction": "reverse"},
        "B",
        {"cell": "gru_reset_before", "direction": "reverse"},
    ),
    "gru_reset_before_bidirectional": (
        "GRU",
        {"direction": "bidirectional"},
        "B",
        {"cell": "gru_reset_before", "bidirectional": True},
    ),
    "gru_linear_before_reset": ("GRU", {"linear_before_reset": 1}, "B", {"cell": "gru"}),
    "gru_reverse": (
        "GRU",
        {"linear_before_reset": 1, "direction": "reverse"},
        "",
        {"cell": "gru", "direction": "reverse"},
    ),
    "rnn": ("RNN", {}, "B", {"cell": "rnn"}),
    "rnn_reverse": ("RNN", {"direction": "reverse"}, "B", {"cell": "rnn", "direction": "reverse"}),
    "rnn_relu": ("RNN", {"activations": ["Relu"]}, "B", {"cell": "rnn_relu"}),
}


def onnx_weights(op: str, attrs: dict, optional: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    size = GATES[op] * HIDDEN

    def draw(*shape):
        return rng.uniform(-0.6, 0.6, (directions, *shape)).astype(np.float32)

    weights = {"W": draw(size, INPUT), "R": draw(size, HIDDEN)}
    if "B" in optional:
        weights["B"] = draw(2 * size)
    if "P" in optional:
        weights["P"] = draw(3 * HIDDEN)
    return weights


def run_onnx_node(op: str, attrs: dict, weights: dict, x: np.ndarray) -> tuple:
    """(Y as (T, D, B, H), Y_h as (D, B, H)) from onnxruntime running one `op` node."""
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    given = {
        "W": weights["W"],
        "R": weights["R"],
        "sequence_lens": LENGTHS.astype(np.int32),
        **{k: weights[k] for k in ("B", "P") if k in weights},
    }
    inputs = [n if n == "X" or n in given else "" for n in names[: 8 if op == "LSTM" else 6]]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(op, inputs, ["Y", "Y_h"], hidden_size=HIDDEN, **attrs)
    directions = weights["W"].shape[0]
    graph = helper.make_graph(
        [node],
        "one_node",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [
            helper.make_tensor_value_info(
                "Y", TensorProto.FLOAT, [STEPS, directions, BATCH, HIDDEN]
            ),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [directions, BATCH, HIDDEN]),
        ],
        [numpy_helper.from_array(v, k) for k, v in given.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {"X": x}))


def one_layer_spec(layer: dict, input_size: int = INPUT) -> dict:
    bidirectional = layer.get("bidirectional", False)
    return {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "vectors", "size": input_size},
            "target": {"type": "vectors", "size": HIDDEN * (2 if bidirectional else 1)},
            "readout": "identity",
            "layers": [{"hidden": HIDDEN, **layer}],
        }
    }


def seqgraph_outputs(model: Model, x: np.ndarray, directions: int) -> tuple:
    """The model's (Y, Y_h) laid out as ONNX's, for comparing on real steps."""
    out = model.forward({"x": np.transpose(x, (1, 0, 2)), "lengths": LENGTHS})
    y = np.asarray(out["predictions"]).reshape(BATCH, STEPS, directions, HIDDEN)
    return np.transpose(y, (1, 2, 0, 3)), out["state"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_onnxruntime_operator(case, dtype):
    op, attrs, optional, layer = CASES[case]
    weights = onnx_weights(op, attrs, optional)
    x = np.random.default_rng(1).normal(size=(STEPS, BATCH, INPUT)).astype(np.float32)
    y, y_h = run_onnx_node(op, attrs, weights, x)
    model = Model(one_layer_spec(layer), dtype=dtype, seed=3)
    model.import_params({f"l0.{k}": v for k, v in weights.items()}, "onnx", **attrs)
    directions = y.shape[1]
    ours, state = seqgraph_outputs(model, x, directions)
    real = np.arange(STEPS)[:, None] < LENGTHS[None, :]  # (T, B)
    error = np.abs(ours - y).max(axis=(1, 3))[real].max()
    if directions == 1:
        error = max(error, np.abs(np.asarray(state["l0.h0"]) - y_h[0]).max())
    assert error < 1e-6, f"{case} {dtype}: {error:.2e}"


def export_spec(layer: dict) -> dict:
    return {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": 9},
            "target": {"type": "ids", "vocab": 4},
            "encoders": [{"type": "embedding", "size": 5}],
            "layers": [{"hidden": 6, **layer}, {"cell": "lstm", "hidden": 3}],
        }
    }


EXPORTED = [
    {"cell": "gru_reset_before"},
    {"cell": "gru_reset_before", "bidirectional": True},
    {"cell": "lstm_peephole"},
    {"cell": "lstm_peephole", "bidirectional": True, "merge": "sum"},
    {"cell": "gru", "direction": "reverse"},
    {"cell": "lstm_peephole", "direction": "reverse"},
]


@pytest.mark.parametrize("layer", EXPORTED, ids=lambda layer: "-".join(map(str, layer.values())))
def test_onnx_export_of_new_options_runs_in_onnxruntime(tmp_path, layer):
    model = Model(export_spec(layer), dtype="float32", seed=4)
    path = export_onnx(model, tmp_path / "model.onnx")
    x = np.random.default_rng(0).integers(0, 9, (3, 6))
    ours = np.asarray(model.forward({"x": x, "lengths": LENGTHS})["predictions"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x, "lengths": LENGTHS.astype(np.int32)})[0]
    real = np.arange(6)[None, :] < LENGTHS[:, None]
    np.testing.assert_allclose(theirs[real], ours[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", EXPORTED, ids=lambda layer: "-".join(map(str, layer.values())))
def test_onnx_round_trip_of_new_options_needs_no_options(layer):
    source = Model(export_spec(layer), dtype="float64", seed=1)
    exported = source.export_params("onnx")
    target = Model(export_spec(layer), dtype="float64", seed=2)
    target.import_params(exported, "onnx")
    for name, value in source.params.items():
        np.testing.assert_array_equal(target.params[name], value, err_msg=name)


def keras_gru(x, kernel, recurrent, bias, reset_after: bool, go_backwards=False):
    """Keras' GRU forward (keras/src/layers/rnn/gru.py, GRUCell.call), written from its
    equations in NumPy: gates z, r, h; h = z*h + (1-z)*hh. Returns the final state."""
    hidden = recurrent.shape[0]
    h = np.zeros((x.shape[0], hidden))
    input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after else (bias, 0 * bias)
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    for t in steps:
        xz, xr, xh = np.split(x[:, t] @ kernel + input_bias, 3, axis=-1)
        rk_z, rk_r, rk_h = np.split(recurrent, 3, axis=-1)
        rb_z, rb_r, rb_h = np.split(recurrent_bias, 3, axis=-1)
        z = 1 / (1 + np.exp(-(xz + h @ rk_z + rb_z)))
        r = 1 / (1 + np.exp(-(xr + h @ rk_r + rb_r)))
        if reset_after:
            hh = np.tanh(xh + r * (h @ rk_h + rb_h))
        else:
            hh = np.tanh(xh + (r * h) @ rk_h)
        h = z * h + (1 - z) * hh
    return h


@pytest.mark.parametrize("cell", ["gru", "gru_reset_before"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_keras_gru_export_matches_keras_equations(cell, direction):
    spec = one_layer_spec({"cell": cell, "direction": direction}, input_size=3)
    model = Model(spec, dtype="float64", seed=5)
    weights = model.export_params("keras")
    x = np.random.default_rng(2).normal(size=(2, 4, 3))
    final = model.forward({"x": x})["state"]["l0.h0"]
    theirs = keras_gru(
        x,
        weights["l0.kernel"],
        weights["l0.recurrent_kernel"],
        weights["l0.bias"],
        reset_after=cell == "gru",
        go_backwards=direction == "reverse",
    )
    np.testing.assert_allclose(np.asarray(final), theirs, rtol=1e-12, atol=1e-12)
    assert weights["l0.bias"].shape == ((2, 3 * HIDDEN) if cell == "gru" else (3 * HIDDEN,))
    again = Model(spec, dtype="float64", seed=6)
    again.import_params(weights, "keras", reset_after=cell == "gru")
    np.testing.assert_allclose(
        np.asarray(again.forward({"x": x})["state"]["l0.h0"]), theirs, rtol=1e-12, atol=1e-12
    )


def test_pytorch_refuses_what_it_cannot_express():
    for layer, match in [
        ({"cell": "gru_reset_before"}, "nn.GRU applies the reset gate after"),
        ({"cell": "lstm_peephole"}, "nn.LSTM has no peepholes"),
        ({"cell": "lstm", "direction": "reverse"}, "only inside a bidirectional layer"),
    ]:
        model = Model(one_layer_spec(layer))
        with pytest.raises(DataError, match=match):
            model.export_params("pytorch")
        with pytest.raises(DataError, match=match):
            model.import_params({}, "pytorch")
    with pytest.raises(DataError, match="Keras' LSTM has no peepholes"):
        Model(one_layer_spec({"cell": "lstm_peephole"})).export_params("keras")


def _onnx_node_cases() -> dict:
    """ONNX's own test cases of the recurrent operators (onnx.backend.test.case.node), by
    name: the node, its inputs and the outputs ONNX's reference implementation expects."""
    import importlib
    import warnings

    from onnx.backend.test.case import node as cases_module

    # importing an operator's module registers its cases; collect_testcases() would build
    # every operator's (seconds), so it is only the fallback
    for op in ("gru", "lstm", "rnn"):
        importlib.import_module(f"onnx.backend.test.case.node.{op}")
    cases = getattr(cases_module, "_NodeTestCases", None)
    if not cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # other operators' cases warn while built
            cases = cases_module.collect_testcases()
    out = {}
    for case in cases:
        node = case.model.graph.node[0]
        if node.op_type in GATES and case.data_sets:
            out.setdefault(case.name, (node, *case.data_sets[0]))
    return out


ONNX_CASES = _onnx_node_cases()


def _layer_for(node, inputs: dict, attrs: dict) -> dict:
    """The seqgraph layer that computes the ONNX node."""
    op = node.op_type
    text = {k: v.decode() for k, v in attrs.items() if isinstance(v, bytes)}
    text["activations"] = [a.decode() for a in attrs.get("activations", [b"Tanh"])]
    if op == "GRU":
        cell = "gru" if attrs.get("linear_before_reset", 0) else "gru_reset_before"
    elif op == "LSTM":
        cell = "lstm_peephole" if "P" in inputs else "lstm"
    else:
        cell = "rnn_relu" if text["activations"][0].lower() == "relu" else "rnn"
    direction = text.get("direction", "forward")
    layer = {"cell": cell, "hidden": attrs["hidden_size"]}
    if direction == "bidirectional":
        layer["bidirectional"] = True
    elif direction == "reverse":
        layer["direction"] = "reverse"
    return layer


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_import_matches_onnx_reference_test_cases(name):
    node, given, expected = ONNX_CASES[name]
    inputs = {n: np.asarray(v) for n, v in zip(node.input, given) if n}
    # as a converter reads them (strings come as bytes), passed to import unchanged
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = inputs["X"] if attrs.get("layout", 0) else np.transpose(inputs["X"], (1, 0, 2))
    batch, steps, size = x.shape
    layer = _layer_for(node, inputs, attrs)
    spec = one_layer_spec(layer, input_size=size)
    spec["model"]["target"]["size"] = attrs["hidden_size"] * (2 if "bidirectional" in layer else 1)
    spec["model"]["layers"][0]["hidden"] = attrs["hidden_size"]
    model = Model(spec, dtype="float64")
    weights = {f"l0.{k}": v for k, v in inputs.items() if k in ("W", "R", "B", "P")}
    model.import_params(weights, "onnx", **attrs)
    lengths = inputs.get("sequence_lens", np.full(batch, steps)).astype(np.int64)
    state = {}
    for onnx_name, var in (("initial_h", "h0"), ("initial_c", "c0")):
        if onnx_name in inputs:  # initial states are data: batch["state"]
            for d, scope in enumerate(["l0.fwd", "l0.bwd"] if "bidirectional" in layer else ["l0"]):
                state[f"{scope}.{var}"] = inputs[onnx_name][d]
    out = model.forward({"x": x, "lengths": lengths, "state": state})
    directions = 2 if "bidirectional" in layer else 1
    hidden = attrs["hidden_size"]
    y = np.asarray(out["predictions"]).reshape(batch, steps, directions, hidden)
    ours = {"Y": np.transpose(y, (1, 2, 0, 3))}
    for onnx_name, var in (("Y_h", "h0"), ("Y_c", "c0")):
        scopes = ["l0.fwd", "l0.bwd"] if directions == 2 else ["l0"]
        if all(f"{s}.{var}" in out["state"] for s in scopes):
            ours[onnx_name] = np.stack([np.asarray(out["state"][f"{s}.{var}"]) for s in scopes])
    real = np.arange(steps)[:, None] < lengths[None, :]
    for onnx_name, want in zip([n for n in node.output if n], expected):
        got = ours[onnx_name]
        if onnx_name == "Y":
            if attrs.get("layout", 0):
                want = np.transpose(want, (2, 1, 0, 3))  # (B, T, D, H) -> (T, D, B, H)
            got, want = (
                np.transpose(got, (0, 2, 1, 3))[real],
                np.transpose(want, (0, 2, 1, 3))[real],
            )
        elif attrs.get("layout", 0):
            want = np.transpose(want, (1, 0, 2))  # (B, D, H) -> (D, B, H)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{name} {onnx_name}")
