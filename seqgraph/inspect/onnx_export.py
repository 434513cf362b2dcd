"""Export a trained model of standard cells as a runnable ONNX graph (needs the `onnx` package).

Each recurrent layer becomes one ONNX RNN/GRU/LSTM node (weights converted by `interop`),
embeddings become Gather, dense encoders, dense output decoders and the readout MatMul + Add
(deconv and upsample decoders are refused); `model.pool` mean and max become a mask from the
lengths, Where, and ReduceSum / Div or ReduceMax over time. Inputs: `x` ((B, T)
int64 ids or (B, T, F) floats) and `lengths` ((B,) int32); output `predictions`, (B, T, C)
for many_to_many or (B, C) for many_to_one, equal to `Model.forward`'s on real steps. The
file is float32, which is what onnxruntime's CPU recurrent kernels accept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.errors import DataError
from seqgraph.runtime.interop import ONNX_OP, export_params, recurrent_layers

OPSET = 17
ACTIVATION = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}
FLOAT, INT64 = 1, 7  # onnx.TensorProto's element types (onnx itself is imported lazily)


def _check_exportable(model) -> None:
    m = model.spec.model
    if m.pattern not in ("many_to_many", "many_to_one"):
        raise DataError(
            f"ONNX export supports many_to_many and many_to_one models, not {m.pattern}"
        )
    for i, enc in enumerate(m.encoders):
        if enc.type not in ("embedding", "onehot", "dense"):  # what `_encoders` writes
            raise DataError(
                f"model.encoders[{i}] is a {enc.type} encoder, which ONNX export does not "
                "write (only embedding, onehot and dense encoders); export the weights "
                "instead (--to onnx_weights, pytorch or keras)"
            )
    for i, dec in enumerate(m.decoders):
        if dec.type != "dense":  # dense decoders export as MatMul + Add, like the readout
            raise DataError(
                f"model.decoders[{i}] is a {dec.type} decoder, which ONNX export does not "
                "write (only dense decoders); export a model whose decoders are all dense"
            )
    for i, layer in enumerate(m.layers):
        if layer.layer_norm:  # ONNX's RNN/GRU/LSTM operators have no normalisation inside
            raise DataError(
                f"model.layers[{i}] has layer_norm: true, which ONNX's RNN, GRU and LSTM "
                "operators have no form of; train without layer_norm to export to ONNX"
            )
        if layer.init_state == "learned":
            raise DataError(
                f"model.layers[{i}] has a learned initial state, which ONNX export "
                "does not support; use init_state: zeros"
            )


class _Builder:
    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(self.dtype)
        self.inits.append(self.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def multi(self, op: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        self.count += 1
        outs = [f"{op.lower()}_{self.count}_{i}" for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, **attrs))
        return outs


def _encoders(b: _Builder, model, params: dict, x: str) -> str:
    m = model.spec.model
    for i, enc in enumerate(m.encoders):
        if enc.type == "embedding":
            x = b.node("Gather", [b.const(f"enc{i}.E", params[f"enc{i}.E"]), x])
        elif enc.type == "onehot":
            x = b.node("Gather", [b.const(f"enc{i}.eye", np.eye(m.input.size)), x])
        else:
            x = _dense(b, params, f"enc{i}", x, enc.activation)
    return x


def _dense(b: _Builder, params: dict, scope: str, x: str, activation: str = "identity") -> str:
    x = b.node(
        "Add",
        [
            b.node("MatMul", [x, b.const(f"{scope}.W", params[f"{scope}.W"])]),
            b.const(f"{scope}.b", params[f"{scope}.b"]),
        ],
    )
    return b.node(ACTIVATION[activation], [x]) if activation != "identity" else x


def _layer(b: _Builder, model, onnx_w: dict, index: int, layer, x: str, lengths: str):
    """One ONNX recurrent node; returns (Y as (T, B, out), Y_h as (B, out))."""
    scopes = [
        s for s, _, i, _ in recurrent_layers(model) if i == index and not s.startswith("dec.")
    ]
    kinds = "WRBP" if layer.cell == "lstm_peephole" else "WRB"
    stack = {k: np.concatenate([onnx_w[f"{s}.{k}"] for s in scopes]) for k in kinds}
    names = [b.const(f"l{index}.{k}", stack[k]) for k in kinds]
    attrs = {
        "hidden_size": layer.hidden,
        "direction": "bidirectional" if layer.bidirectional else layer.direction,
    }
    if layer.cell in ("rnn", "rnn_relu"):
        act = "Relu" if layer.cell == "rnn_relu" else "Tanh"
        attrs["activations"] = [act] * (2 if layer.bidirectional else 1)
    if ONNX_OP[layer.cell] == "GRU":
        attrs["linear_before_reset"] = int(layer.cell == "gru")
    inputs = [x] + names[:3] + [lengths]
    if layer.cell == "lstm_peephole":  # P comes after initial_h and initial_c, left out
        inputs += ["", "", names[3]]
    op = ONNX_OP[layer.cell]
    outs = b.multi(op, inputs, 3 if op == "LSTM" else 2, **attrs)
    y, y_h = outs[0], outs[1]  # (T, D, B, H) and (D, B, H)
    if not layer.bidirectional:
        return b.node("Squeeze", [y, b.const(f"axis1_{index}", np.array([1]))]), b.node(
            "Squeeze", [y_h, b.const(f"axis0_{index}", np.array([0]))]
        )
    if layer.merge == "sum":
        return (
            b.node("ReduceSum", [y, b.const(f"d1_{index}", np.array([1]))], keepdims=0),
            b.node("ReduceSum", [y_h, b.const(f"d0_{index}", np.array([0]))], keepdims=0),
        )
    width = 2 * layer.hidden
    y = b.node(
        "Reshape",
        [
            b.node("Transpose", [y], perm=[0, 2, 1, 3]),
            b.const(f"shape_y{index}", np.array([0, 0, width])),
        ],
    )
    y_h = b.node(
        "Reshape",
        [
            b.node("Transpose", [y_h], perm=[1, 0, 2]),
            b.const(f"shape_h{index}", np.array([0, width])),
        ],
    )
    return y, y_h


def _pool_over_time(b: _Builder, y: str, lengths: str, pool: str) -> str:
    """`model.pool` mean or max of the top layer's outputs y (T, B, out) over each
    sequence's real steps, (B, out): a (T, B, 1) mask from the lengths keeps padded steps out
    (as `masked_max` and the masked mean of `spec.unroll` do)."""
    steps = b.node("Gather", [b.node("Shape", [y]), b.const("time_axis", np.array(0))])
    t = b.node("Range", [b.const("zero_i64", np.array(0)), steps, b.const("one_i64", np.array(1))])
    n = b.node("Cast", [lengths], to=INT64)  # as Range gives
    real = b.node(
        "Less",
        [
            b.node("Unsqueeze", [t, b.const("axes_1", np.array([1]))]),
            b.node("Unsqueeze", [n, b.const("axes_0", np.array([0]))]),
        ],
    )
    real = b.node("Unsqueeze", [real, b.const("axes_2", np.array([2]))])  # (T, B, 1)
    if pool == "max":
        kept = b.node("Where", [real, y, b.const("minus_inf", np.array(-np.inf))])
        return b.node("ReduceMax", [kept], axes=[0], keepdims=0)
    kept = b.node("Where", [real, y, b.const("zero_f", np.array(0.0))])
    total = b.node("ReduceSum", [kept, b.const("axes_time", np.array([0]))], keepdims=0)
    count = b.node("Cast", [b.node("Unsqueeze", [n, b.const("axes_1b", np.array([1]))])], to=FLOAT)
    return b.node("Div", [total, count])


def export_onnx(model, path: str | Path) -> Path:
    """Write `model` as an ONNX file at `path`; returns the path."""
    _check_exportable(model)  # first: a model ONNX cannot express needs no onnx package
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise DataError("ONNX export needs the onnx package: pip install onnx") from None
    m = model.spec.model
    # float32 always: onnxruntime's CPU RNN/GRU/LSTM kernels are registered for float only
    dtype, elem = np.float32, TensorProto.FLOAT
    params = {k: model.backend.to_numpy(v) for k, v in model.params.items()}
    onnx_w = export_params(model, "onnx")
    b = _Builder(helper, numpy_helper, dtype)
    if m.input.type == "ids":
        x_info = helper.make_tensor_value_info("x", TensorProto.INT64, ["B", "T"])
        x = b.node("Transpose", ["x"], perm=[1, 0])
    else:
        x_info = helper.make_tensor_value_info("x", elem, ["B", "T", m.input.size])
        x = b.node("Transpose", ["x"], perm=[1, 0, 2])
    x = _encoders(b, model, params, x)
    lengths_info = helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"])
    last = None
    for i, layer in enumerate(m.layers):
        x, last = _layer(b, model, onnx_w, i, layer, x, "lengths")
    if m.pattern == "many_to_many":
        top = b.node("Transpose", [x], perm=[1, 0, 2])
        out_shape = ["B", "T", m.target.size]
    else:
        top = last if m.pool == "last" else _pool_over_time(b, x, "lengths", m.pool)
        out_shape = ["B", m.target.size]
    for i, dec in enumerate(m.decoders):
        top = _dense(b, params, f"decode{i}", top, dec.activation)
    out = _dense(b, params, "out", top) if m.readout == "linear" else top
    b.nodes.append(helper.make_node("Identity", [out], ["predictions"]))
    graph = helper.make_graph(
        b.nodes,
        model.spec.name,
        [x_info, lengths_info],
        [helper.make_tensor_value_info("predictions", elem, out_shape)],
        b.inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="seqgraph"
    )
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, str(path))
    return path
