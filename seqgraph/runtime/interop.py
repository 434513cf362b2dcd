"""Weight import and export in PyTorch, Keras and ONNX conventions.

seqgraph stores a recurrent layer's weights input-major (`x @ W_ih`, shape (input, G*hidden))
with gate blocks in PyTorch's order (LSTM i, f, g, o; GRU r, z, n) and two biases. The
conventions differ in orientation, gate order, bias layout and naming; each mapping below is
exact and invertible. Only the built-in cells have a counterpart elsewhere, and only where the
convention computes the same function: `gru_reset_before` is ONNX's `linear_before_reset=0`
and Keras' `reset_after=False`, `lstm_peephole` is an ONNX LSTM with `P`, a layer with
`direction: reverse` is ONNX's `direction="reverse"` and Keras' `go_backwards=True`.

Import is strict: every entry of the source must land in a parameter, every option (ONNX node
attribute, Keras layer argument) must describe the model's layer, and every weight must have
its convention's shape; anything else is a DataError naming the entry and the fix, never a
silently different function. Layer attributes that the weights cannot show (ONNX `direction`
and `linear_before_reset`, Keras `go_backwards`) are options, or entries `<scope>.<name>` of
the source; export writes them that way so a round trip needs no options, and when neither
gives one, the convention's own default holds. Parameters outside recurrent layers
(embeddings, dense encoders, readout) keep their seqgraph names in every convention.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from seqgraph.errors import DataError

CONVENTIONS = ("pytorch", "keras", "onnx")
# the family of each built-in cell, named by its ONNX operator: a variant (relu, peepholes, the
# reset gate before the product) lays out its blocks as its family does
ONNX_OP = {
    "rnn": "RNN",
    "rnn_relu": "RNN",
    "lstm": "LSTM",
    "lstm_peephole": "LSTM",
    "gru": "GRU",
    "gru_reset_before": "GRU",
}
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
# block order of each convention, as indices into seqgraph's (PyTorch's) blocks
KERAS_ORDER = {"RNN": [0], "LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2]}  # i f c o; z r h
ONNX_ORDER = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}  # i o f c; z r h
PEEPHOLE_ORDER = [0, 2, 1]  # ONNX's P is p_i, p_o, p_f; seqgraph's P is p_i, p_f, p_o
# cells a convention has no counterpart for, and why
UNMAPPED = {
    "pytorch": {
        "gru_reset_before": "PyTorch's nn.GRU applies the reset gate after the recurrent "
        "product (seqgraph's gru) and has no reset-before variant",
        "lstm_peephole": "PyTorch's nn.LSTM has no peepholes",
    },
    "keras": {"lstm_peephole": "Keras' LSTM has no peepholes"},
    "onnx": {},
}
# options each convention maps, and the recurrent ops each applies to
ONNX_ATTRIBUTES = {
    "direction": ("RNN", "GRU", "LSTM"),
    "hidden_size": ("RNN", "GRU", "LSTM"),
    "activations": ("RNN", "GRU", "LSTM"),
    "activation_alpha": ("RNN", "GRU", "LSTM"),
    "activation_beta": ("RNN", "GRU", "LSTM"),
    "clip": ("RNN", "GRU", "LSTM"),
    "layout": ("RNN", "GRU", "LSTM"),
    "linear_before_reset": ("GRU",),
    "input_forget": ("LSTM",),
}
KERAS_ARGUMENTS = {
    "go_backwards": ("RNN", "GRU", "LSTM"),
    "activation": ("RNN", "GRU", "LSTM"),
    "recurrent_activation": ("GRU", "LSTM"),
    "reset_after": ("GRU",),
}
OPTIONS = {"pytorch": {}, "keras": KERAS_ARGUMENTS, "onnx": ONNX_ATTRIBUTES}
# attributes export writes beside the weights, since the weights cannot show them
STORED = {"pytorch": (), "keras": ("go_backwards",), "onnx": ("direction", "linear_before_reset")}
DEFAULTS = {"go_backwards": False, "linear_before_reset": 0, "direction": "forward"}
ONNX_ACTIVATIONS = {
    "RNN": ["tanh"],
    "GRU": ["sigmoid", "tanh"],
    "LSTM": ["sigmoid", "tanh", "tanh"],
}


def _blocks(array: np.ndarray, order: list[int]) -> np.ndarray:
    """Reorder the gate blocks along the last axis."""
    parts = np.split(array, len(order), axis=-1)
    return np.concatenate([parts[i] for i in order], axis=-1)


def _inverse(order: list[int]) -> list[int]:
    return [order.index(i) for i in range(len(order))]


def _walk(model) -> list[tuple]:
    """(scope, layer spec, layer index, PyTorch suffix, layer scope) of every direction."""
    m = model.spec.model
    out = []
    for prefix, layers in (("", m.layers), ("dec.", m.decoder_layers)):
        for i, layer in enumerate(layers):
            directions = [(".fwd", ""), (".bwd", "_reverse")] if layer.bidirectional else [("", "")]
            for scope_suffix, torch_suffix in directions:
                base = f"{prefix}l{i}"
                out.append((f"{base}{scope_suffix}", layer, i, torch_suffix, base))
    return out


def recurrent_layers(model) -> list[tuple[str, str, int, str]]:
    """(scope, cell name, layer index, PyTorch name suffix) of every recurrent layer and
    direction, encoder then decoder: e.g. ("l0.bwd", "lstm", 0, "_reverse"). The weight
    mappings here and the ONNX export (`inspect.onnx_export`) walk the layers this way."""
    return [(scope, layer.cell, i, suffix) for scope, layer, i, suffix, _ in _walk(model)]


def _check_cells(model, convention: str) -> None:
    if convention not in CONVENTIONS:
        raise DataError(f"convention {convention!r} is unknown; use one of {CONVENTIONS}")
    for scope, layer, _, _, base in _walk(model):
        if layer.cell not in ONNX_OP:
            raise DataError(
                f"layer {scope} uses cell {layer.cell!r}, which has no {convention} "
                "counterpart; only rnn, rnn_relu, lstm, lstm_peephole, gru and "
                "gru_reset_before can be mapped"
            )
        why = UNMAPPED[convention].get(layer.cell)
        if why:
            raise DataError(
                f"layer {scope} uses cell {layer.cell!r}, which has no {convention} "
                f"counterpart: {why}; use the onnx convention"
            )
        if convention == "pytorch" and layer.direction == "reverse":
            raise DataError(
                f"layer {base} has direction: reverse, which PyTorch has only inside a "
                "bidirectional layer (weight_*_reverse); use the onnx or keras convention"
            )


# ---- options: what the other side's layer attributes say ----------------------------------


def _check_options(model, convention: str, options: dict, arrays: dict | None) -> set[str]:
    """Refuse an option, or an attribute entry of the source, that the model does not compute;
    returns the attribute entries of `arrays` it read. Export (`arrays` None) checks the
    options only; import also holds the source to the convention's defaults."""
    importing, arrays = arrays is not None, arrays or {}
    known = OPTIONS[convention]
    for name in options:
        if name not in known:
            listed = ", ".join(known) if known else "none (a state_dict says everything)"
            raise DataError(
                f"{convention} option {name!r} is not mapped, so it would be ignored; "
                f"the {convention} convention takes: {listed}"
            )
    ops = {ONNX_OP[layer.cell] for _, layer, *_ in _walk(model) if layer.cell in ONNX_OP}
    for name in options:
        if not ops & set(known[name]):
            raise DataError(
                f"{convention} option {name}={options[name]!r} belongs to "
                f"{'/'.join(known[name])} layers, and this model has none"
            )
    read: set[str] = set()
    for scope, layer, _, _, base in _walk(model):
        read |= _check_layer(convention, scope, base, layer, options, arrays, importing)
    return read


def _check_layer(convention, scope, base, layer, options, arrays, importing) -> set[str]:
    """`_check_options` for one layer direction; returns the attribute entries it read."""
    read, op = set(), ONNX_OP[layer.cell]
    for name, applies in OPTIONS[convention].items():
        stored = [k for k in dict.fromkeys((f"{scope}.{name}", f"{base}.{name}")) if k in arrays]
        given = name in options or stored
        if op not in applies or not (given or (importing and name in STORED[convention])):
            continue
        read |= set(stored)
        value, where = _attribute(name, options, arrays, stored)
        value = DEFAULTS.get(name) if where is None else value
        check = _onnx_problem if convention == "onnx" else _keras_problem
        problem = check(name, value, layer, where is not None)
        if problem:
            source = f" ({where})" if where else " (the convention's default)"
            raise DataError(
                f"{convention} {name}={value!r}{source} does not fit layer {scope} "
                f"({layer.text}): {problem}"
            )
    return read


def _attribute(name: str, options: dict, arrays: dict, stored: list) -> tuple:
    """(value, where it came from) of one attribute; (None, None) when nothing gives it."""
    values = [(_plain(arrays[k]), f"source entry {k!r}") for k in stored]
    if name in options:
        values.append((_plain(options[name]), "option"))
    if len({repr(v) for v, _ in values}) > 1:
        raise DataError(
            f"{name} is given twice with different values: "
            + ", ".join(f"{v!r} ({w})" for v, w in values)
        )
    return values[0] if values else (None, None)


def _plain(value):
    """An attribute as a Python value: a stored entry is a 0-d array, and ONNX's
    `helper.get_attribute_value` gives strings as bytes."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _onnx_problem(name: str, value, layer, given: bool) -> str | None:
    """Why an ONNX node with attribute `name`=`value` computes something else than `layer`."""
    cell, op = layer.cell, ONNX_OP[layer.cell]
    if name == "direction":
        want = "bidirectional" if layer.bidirectional else layer.direction
        if not given:
            value = "bidirectional" if layer.bidirectional else "forward"
        if value == want:
            return None
        fix = {
            "forward": "remove direction: reverse from the layer",
            "reverse": "set direction: reverse on the layer",
            "bidirectional": "set bidirectional: true on the layer",
        }.get(value, "ONNX directions are forward, reverse and bidirectional")
        return f"the layer runs {want}; {fix}"
    if name == "linear_before_reset":
        want = 0 if cell == "gru_reset_before" else 1
        if (value if given else 0) == want:
            return None
        other = "gru_reset_before" if want else "gru"
        unstated = "" if given else "the weights do not say it and ONNX's default is 0; "
        return (
            f"{unstated}its cell {cell!r} computes linear_before_reset={want}; "
            f"use cell {other}, or pass linear_before_reset={want} if the node has it"
        )
    if name == "hidden_size" and value != layer.hidden:
        return f"the layer has hidden {layer.hidden}"
    if name == "activations":
        want = ["relu"] if cell == "rnn_relu" else ONNX_ACTIVATIONS[op]
        if [str(a).lower() for a in value] not in (want, want * 2):
            return f"its cell {cell!r} uses {want}; seqgraph maps only these"
    if name in ("activation_alpha", "activation_beta") and value:
        return "the cell's activations take no alpha or beta"
    if name == "clip" and value is not None:
        return "seqgraph's cells do not clip the gates' inputs; export the node without clip"
    if name == "input_forget" and value:
        return "input_forget=1 couples the input and forget gates; seqgraph's lstm keeps both"
    if name == "layout" and value not in (0, 1):
        return "ONNX layouts are 0 and 1 (neither changes the weights)"
    return None


def _keras_problem(name: str, value, layer, given: bool) -> str | None:
    """Why a Keras layer built with argument `name`=`value` computes something else."""
    cell = layer.cell
    if name == "go_backwards":
        if layer.bidirectional:
            return None if not given else "a bidirectional layer (Keras' Bidirectional) has none"
        want = layer.direction == "reverse"
        if bool(value) == want:
            return None
        if value:
            return "set direction: reverse on the layer"
        return "the layer runs in reverse; pass go_backwards=True if the Keras layer has it"
    if name == "reset_after":
        want = cell == "gru"
        if bool(value) == want:
            return None
        other = "gru" if value else "gru_reset_before"
        when = "after" if want else "before"
        return (
            f"its cell {cell!r} applies the reset gate {when} the recurrent product; "
            f"use cell {other}"
        )
    if name == "activation":
        want = "relu" if cell == "rnn_relu" else "tanh"
        if value != want:
            return f"its cell {cell!r} uses {want}"
    if name == "recurrent_activation" and value != "sigmoid":
        return f"its cell {cell!r} uses sigmoid for the gates"
    return None


# ---- export ---------------------------------------------------------------------------------


def export_params(
    model, convention: str = "pytorch", arrays: dict | None = None, **options
) -> dict[str, np.ndarray]:
    """The model's parameters (or `arrays` keyed like them, e.g. gradients) as host arrays
    named and laid out as `convention` expects. `options` (ONNX attributes, Keras layer
    arguments) are checked against the model as on import. Exported parameters carry the
    layer attributes the weights cannot show, as 0-d entries `<scope>.<name>` (ONNX
    `linear_before_reset` of a GRU, `direction` of a reverse layer; Keras `go_backwards`)."""
    _check_cells(model, convention)
    _check_options(model, convention, options, None)
    source = model.params if arrays is None else arrays
    params = {k: model.backend.to_numpy(v) for k, v in source.items()}
    used, out = set(), {}
    for scope, layer, index, suffix, _ in _walk(model):
        names = ["W_ih", "W_hh", "b_ih", "b_hh"] + (["P"] if layer.cell == "lstm_peephole" else [])
        used |= {f"{scope}.{n}" for n in names}
        w = {n: params[f"{scope}.{n}"] for n in names}
        if convention == "pytorch":
            key = f"{'dec_' if scope.startswith('dec.') else ''}l{index}{suffix}"
            out[f"weight_ih_{key}"], out[f"weight_hh_{key}"] = w["W_ih"].T, w["W_hh"].T
            out[f"bias_ih_{key}"], out[f"bias_hh_{key}"] = w["b_ih"], w["b_hh"]
        elif convention == "keras":
            out.update(_to_keras(scope, layer.cell, w))
        else:
            out.update(_to_onnx(scope, layer.cell, w))
        if arrays is None:
            out.update(_stored(convention, scope, layer))
    out.update({k: v for k, v in params.items() if k not in used})
    return out


def _to_keras(scope: str, cell: str, w: dict) -> dict:
    order = KERAS_ORDER[ONNX_OP[cell]]
    out = {
        f"{scope}.kernel": _blocks(w["W_ih"], order),
        f"{scope}.recurrent_kernel": _blocks(w["W_hh"], order),
    }
    if cell == "gru":  # reset_after=True keeps the two biases apart
        out[f"{scope}.bias"] = np.stack([_blocks(w["b_ih"], order), _blocks(w["b_hh"], order)])
    else:
        out[f"{scope}.bias"] = _blocks(w["b_ih"] + w["b_hh"], order)
    return out


def _to_onnx(scope: str, cell: str, w: dict) -> dict:
    order = ONNX_ORDER[ONNX_OP[cell]]
    out = {
        f"{scope}.W": _blocks(w["W_ih"], order).T[None],
        f"{scope}.R": _blocks(w["W_hh"], order).T[None],
        f"{scope}.B": np.concatenate([_blocks(w["b_ih"], order), _blocks(w["b_hh"], order)])[None],
    }
    if "P" in w:
        out[f"{scope}.P"] = _blocks(w["P"], PEEPHOLE_ORDER)[None]
    return out


def _stored(convention: str, scope: str, layer) -> dict:
    """The attributes of one layer direction that its weights cannot show (see STORED)."""
    out = {}
    if convention == "onnx" and ONNX_OP[layer.cell] == "GRU":
        out[f"{scope}.linear_before_reset"] = np.array(int(layer.cell == "gru"))
    if convention == "onnx" and layer.direction == "reverse":
        out[f"{scope}.direction"] = np.array("reverse")
    if convention == "keras" and layer.direction == "reverse":
        out[f"{scope}.go_backwards"] = np.array(True)
    return out


# ---- import ---------------------------------------------------------------------------------


class _Source:
    """The arrays to import, which of them were taken, and every name that was looked up."""

    def __init__(self, arrays: dict, convention: str):
        self.arrays, self.convention = arrays, convention
        self.used: set[str] = set()
        self.wanted: list[str] = []

    def take(self, key: str, shape: tuple, optional: bool = False, hint: str = ""):
        """The entry `key`, which must have `shape`; None if missing and optional."""
        self.wanted.append(key)
        if key not in self.arrays:
            if optional:
                return None
            split = [k for k in self.arrays if re.sub(r"\.(fwd|bwd)\.", ".", k) == key]
            if split:
                raise DataError(
                    f"weights {key!r} are missing, and the source holds {split[0]!r}, a "
                    "bidirectional layer's: set bidirectional: true on the layer"
                )
            held = ", ".join(sorted(self.arrays)[:8]) or "nothing"
            raise DataError(f"weights {key!r} are missing; the source holds {held}")
        value = np.asarray(self.arrays[key])
        self.used.add(key)
        if value.shape != tuple(shape):
            raise DataError(
                f"weights {key!r} have shape {value.shape}, but the model needs "
                f"{tuple(shape)} in the {self.convention} layout{hint}"
            )
        return value

    def check_all_used(self) -> None:
        """Refuse an entry that no parameter takes: importing would drop it."""
        left = sorted(set(self.arrays) - self.used)
        if not left:
            return
        name = left[0]
        if re.search(r"_reverse$|\.bwd\.", name):
            hint = "it holds a bidirectional layer's weights: set bidirectional: true on it"
        elif name.rsplit(".", 1)[-1] in ("initial_h", "initial_c"):
            hint = "initial states are inputs, not weights: pass them as batch['state']"
        elif name.startswith("weight_hr_"):
            hint = "PyTorch's proj_size projection has no seqgraph counterpart"
        elif any(name.endswith("." + w) for w in self.wanted):
            hint = "strip the module prefix from the names"
        else:
            hint = f"this model takes {', '.join(self.wanted[:6])}" + (
                ", ..." if len(self.wanted) > 6 else ""
            )
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise DataError(
            f"weights {name!r}{more} match no parameter of this model, so importing "
            f"would drop them; {hint}"
        )


def import_params(model, source, convention: str = "pytorch", **options) -> None:
    """Set the model's parameters from a dict of arrays or an .npz in `convention`'s layout.

    Every recurrent weight the convention names must be present with its shape (ONNX's
    optional `B` and `P` default to zeros), every entry must land in a parameter and every
    option must describe the model; otherwise a DataError names the entry and the fix.
    Parameters outside recurrent layers that the source lacks keep their values."""
    _check_cells(model, convention)
    src = _Source(_read_source(source), convention)
    src.used |= _check_options(model, convention, options, src.arrays)
    new = {}
    for scope, layer, index, suffix, base in _walk(model):
        n_in = model.param_info[f"{scope}.W_ih"].shape[0]
        if convention == "pytorch":
            key = f"{'dec_' if scope.startswith('dec.') else ''}l{index}{suffix}"
            weights = _from_pytorch(src, key, layer, n_in)
        elif convention == "keras":
            weights = _from_keras(src, scope, layer, n_in)
        else:
            weights = _from_onnx(src, scope, base, layer, n_in)
        new.update({f"{scope}.{n}": v for n, v in weights.items()})
    for name in model.params:
        if name not in new and name in src.arrays:
            new[name] = src.arrays[name]
            src.used.add(name)
    src.check_all_used()
    model.set_params(new)


def _from_pytorch(src: _Source, key: str, layer, n_in: int) -> dict:
    size, hidden = GATES[ONNX_OP[layer.cell]] * layer.hidden, layer.hidden
    hint = " (PyTorch stores (gates*hidden, input) and (gates*hidden, hidden))"
    return {
        "W_ih": src.take(f"weight_ih_{key}", (size, n_in), hint=hint).T,
        "W_hh": src.take(f"weight_hh_{key}", (size, hidden), hint=hint).T,
        "b_ih": src.take(f"bias_ih_{key}", (size,)),
        "b_hh": src.take(f"bias_hh_{key}", (size,)),
    }


def _from_keras(src: _Source, scope: str, layer, n_in: int) -> dict:
    size, cell = GATES[ONNX_OP[layer.cell]] * layer.hidden, layer.cell
    back = _inverse(KERAS_ORDER[ONNX_OP[cell]])
    out = {
        "W_ih": _blocks(src.take(f"{scope}.kernel", (n_in, size)), back),
        "W_hh": _blocks(src.take(f"{scope}.recurrent_kernel", (layer.hidden, size)), back),
    }
    if cell == "gru":
        hint = "; a bias of one row is a GRU with reset_after=False: use cell gru_reset_before"
        bias = src.take(f"{scope}.bias", (2, size), hint=hint)
        out["b_ih"], out["b_hh"] = (_blocks(b, back) for b in bias)
        return out
    hint = ""
    if cell == "gru_reset_before":
        hint = "; a bias of two rows is a GRU with reset_after=True: use cell gru"
    out["b_ih"] = _blocks(src.take(f"{scope}.bias", (size,), hint=hint), back)
    out["b_hh"] = np.zeros(size)
    return out


def _from_onnx(src: _Source, scope: str, base: str, layer, n_in: int) -> dict:
    size, hidden, cell = GATES[ONNX_OP[layer.cell]] * layer.hidden, layer.hidden, layer.cell
    back = _inverse(ONNX_ORDER[ONNX_OP[cell]])

    def get(name: str, tail: tuple, optional: bool = False):
        # one direction under `scope`, or a bidirectional node's two under the layer's name
        if layer.bidirectional:
            hint = f"; ONNX's first axis counts directions: 1 in {scope}.{name}, 2 in {base}.{name}"
        else:
            hint = (
                f"; ONNX's first axis counts directions, and layer {base} runs one: "
                "set bidirectional: true on it, or pass one direction's slice"
            )
        if layer.bidirectional and f"{base}.{name}" in src.arrays:
            if f"{scope}.{name}" in src.arrays:
                raise DataError(
                    f"weights {base}.{name} and {scope}.{name} both give layer {scope}; "
                    "keep one of them"
                )
            both = src.take(f"{base}.{name}", (2, *tail), optional, hint)
            return both[0 if scope.endswith(".fwd") else 1]
        value = src.take(f"{scope}.{name}", (1, *tail), optional, hint)
        return None if value is None else value[0]

    out = {
        "W_ih": _blocks(get("W", (size, n_in)).T, back),
        "W_hh": _blocks(get("R", (size, hidden)).T, back),
    }
    bias = get("B", (2 * size,), optional=True)  # ONNX: no B means zero biases
    bias = np.zeros(2 * size) if bias is None else bias
    out["b_ih"], out["b_hh"] = _blocks(bias[:size], back), _blocks(bias[size:], back)
    if ONNX_OP[cell] == "LSTM":
        peepholes = get("P", (3 * hidden,), optional=True)  # ONNX: no P means zeros
        if cell == "lstm_peephole":
            out["P"] = (
                np.zeros(3 * hidden) if peepholes is None else _blocks(peepholes, PEEPHOLE_ORDER)
            )
        elif peepholes is not None and np.any(peepholes != 0):
            raise DataError(
                f"weights {scope}.P are LSTM peepholes, and layer {scope}'s cell 'lstm' has "
                "none, so importing would drop them; use cell lstm_peephole"
            )
    return out


def _read_source(source) -> dict:
    if isinstance(source, dict):
        return {k: np.asarray(v) for k, v in source.items()}
    path = Path(source)
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read weights ({exc})") from None
