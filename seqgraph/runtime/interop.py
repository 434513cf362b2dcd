"""Weight import and export in PyTorch, Keras and ONNX conventions.

seqgraph stores a recurrent layer's weights input-major (`x @ W_ih`, shape (input, G*hidden))
with gate blocks in PyTorch's order (LSTM i, f, g, o; GRU r, z, n) and two biases. The
conventions differ in orientation, gate order, bias layout and naming; each mapping below is
exact and invertible. Only the built-in cells have a counterpart elsewhere: any other cell,
or an equation variant such as a GRU with the reset gate before the product (Keras
`reset_after=False`, ONNX `linear_before_reset=0`), is refused, never silently mis-mapped.
Parameters outside recurrent layers (embeddings, dense encoders, readout) keep their
seqgraph names in every convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqgraph.errors import DataError

CONVENTIONS = ("pytorch", "keras", "onnx")
GATES = {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
# block order of each convention, as indices into seqgraph's (PyTorch's) blocks
KERAS_ORDER = {"rnn": [0], "rnn_relu": [0], "lstm": [0, 1, 2, 3], "gru": [1, 0, 2]}  # z r h
ONNX_ORDER = {"rnn": [0], "rnn_relu": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}  # iofc, zrh


def _blocks(array: np.ndarray, order: list[int]) -> np.ndarray:
    """Reorder the gate blocks along the last axis."""
    parts = np.split(array, len(order), axis=-1)
    return np.concatenate([parts[i] for i in order], axis=-1)


def _inverse(order: list[int]) -> list[int]:
    return [order.index(i) for i in range(len(order))]


def recurrent_layers(model) -> list[tuple[str, str, int, str]]:
    """(scope, cell name, layer index, PyTorch name suffix) of every recurrent layer and
    direction, encoder then decoder: e.g. ("l0.bwd", "lstm", 0, "_reverse"). The weight
    mappings here and the ONNX export (`inspect.onnx_export`) walk the layers this way."""
    m = model.spec.model
    out = []
    for prefix, layers in (("", m.layers), ("dec.", m.decoder_layers)):
        for i, layer in enumerate(layers):
            directions = [(".fwd", ""), (".bwd", "_reverse")] if layer.bidirectional else [("", "")]
            for scope_suffix, torch_suffix in directions:
                out.append((f"{prefix}l{i}{scope_suffix}", layer.cell, i, torch_suffix))
    return out


def _check_cells(model, convention: str, options: dict) -> None:
    for scope, cell, _, _ in recurrent_layers(model):
        if cell not in GATES:
            raise DataError(
                f"layer {scope} uses cell {cell!r}, which has no {convention} "
                "counterpart; only rnn, rnn_relu, lstm and gru can be mapped"
            )
        if cell == "gru" and convention == "keras" and not options.get("reset_after", True):
            raise DataError(
                "Keras GRU with reset_after=False applies the reset gate before "
                "the recurrent product; seqgraph's gru (PyTorch's equations) "
                "applies it after, so the weights would compute another function"
            )
        if cell == "gru" and convention == "onnx" and not options.get("linear_before_reset", 1):
            raise DataError(
                "ONNX GRU with linear_before_reset=0 differs from seqgraph's gru "
                "(linear_before_reset=1, PyTorch's equations); refusing to map it"
            )


def export_params(
    model, convention: str = "pytorch", arrays: dict | None = None, **options
) -> dict[str, np.ndarray]:
    """The model's parameters (or `arrays` keyed like them, e.g. gradients) as host arrays
    named and laid out as `convention` expects."""
    if convention not in CONVENTIONS:
        raise DataError(f"convention {convention!r} is unknown; use one of {CONVENTIONS}")
    _check_cells(model, convention, options)
    source = model.params if arrays is None else arrays
    params = {k: model.backend.to_numpy(v) for k, v in source.items()}
    used, out = set(), {}
    for scope, cell, index, suffix in recurrent_layers(model):
        W_ih, W_hh = params[f"{scope}.W_ih"], params[f"{scope}.W_hh"]
        b_ih, b_hh = params[f"{scope}.b_ih"], params[f"{scope}.b_hh"]
        used |= {f"{scope}.{n}" for n in ("W_ih", "W_hh", "b_ih", "b_hh")}
        tag = "dec_" if scope.startswith("dec.") else ""
        if convention == "pytorch":
            key = f"{tag}l{index}{suffix}"
            out.update(
                {
                    f"weight_ih_{key}": W_ih.T,
                    f"weight_hh_{key}": W_hh.T,
                    f"bias_ih_{key}": b_ih,
                    f"bias_hh_{key}": b_hh,
                }
            )
        elif convention == "keras":
            order = KERAS_ORDER[cell]
            key = scope
            out[f"{key}.kernel"] = _blocks(W_ih, order)
            out[f"{key}.recurrent_kernel"] = _blocks(W_hh, order)
            if cell == "gru":
                out[f"{key}.bias"] = np.stack([_blocks(b_ih, order), _blocks(b_hh, order)])
            else:
                out[f"{key}.bias"] = _blocks(b_ih + b_hh, order)
        else:
            order = ONNX_ORDER[cell]
            key = scope
            out[f"{key}.W"] = _blocks(W_ih, order).T[None]
            out[f"{key}.R"] = _blocks(W_hh, order).T[None]
            out[f"{key}.B"] = np.concatenate([_blocks(b_ih, order), _blocks(b_hh, order)])[None]
    out.update({k: v for k, v in params.items() if k not in used})
    return out


def import_params(model, source, convention: str = "pytorch", **options) -> None:
    """Set the model's parameters from a dict of arrays or an .npz in `convention`'s layout.

    Every recurrent weight the convention names must be present with the right shape; a
    missing or misshapen one is an error naming it."""
    if convention not in CONVENTIONS:
        raise DataError(f"convention {convention!r} is unknown; use one of {CONVENTIONS}")
    _check_cells(model, convention, options)
    arrays = _read_source(source)
    new = {}
    for scope, cell, index, suffix in recurrent_layers(model):
        tag = "dec_" if scope.startswith("dec.") else ""
        if convention == "pytorch":
            key = f"{tag}l{index}{suffix}"
            new[f"{scope}.W_ih"] = _need(arrays, f"weight_ih_{key}").T
            new[f"{scope}.W_hh"] = _need(arrays, f"weight_hh_{key}").T
            new[f"{scope}.b_ih"] = _need(arrays, f"bias_ih_{key}")
            new[f"{scope}.b_hh"] = _need(arrays, f"bias_hh_{key}")
        elif convention == "keras":
            back = _inverse(KERAS_ORDER[cell])
            new[f"{scope}.W_ih"] = _blocks(_need(arrays, f"{scope}.kernel"), back)
            new[f"{scope}.W_hh"] = _blocks(_need(arrays, f"{scope}.recurrent_kernel"), back)
            bias = _need(arrays, f"{scope}.bias")
            if cell == "gru":
                new[f"{scope}.b_ih"], new[f"{scope}.b_hh"] = (_blocks(b, back) for b in bias)
            else:
                new[f"{scope}.b_ih"] = _blocks(bias, back)
                new[f"{scope}.b_hh"] = np.zeros_like(bias)
        else:
            back = _inverse(ONNX_ORDER[cell])
            new[f"{scope}.W_ih"] = _blocks(_need(arrays, f"{scope}.W")[0].T, back)
            new[f"{scope}.W_hh"] = _blocks(_need(arrays, f"{scope}.R")[0].T, back)
            b_ih, b_hh = np.split(_need(arrays, f"{scope}.B")[0], 2)
            new[f"{scope}.b_ih"], new[f"{scope}.b_hh"] = _blocks(b_ih, back), _blocks(b_hh, back)
    for name in model.params:
        if name not in new and name in arrays:
            new[name] = arrays[name]
    model.set_params(new)


def _read_source(source) -> dict:
    if isinstance(source, dict):
        return {k: np.asarray(v) for k, v in source.items()}
    path = Path(source)
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read weights ({exc})") from None


def _need(arrays: dict, name: str) -> np.ndarray:
    if name not in arrays:
        raise DataError(
            f"weights {name!r} are missing; the source holds {', '.join(sorted(arrays)[:8])}"
        )
    return np.asarray(arrays[name])
