"""Unroll a spec over time into an explicit graph; evaluates nothing.

Every time step of a layer points at the same parameter nodes, so backward sums their
gradients over steps with no extra code. Padded steps are handled in the graph itself:
each state update is `where(mask_t, new, previous)`, so a padded step carries the state
through unchanged, many-to-one reads the state after the last real step (or, with
`model.pool`, the mean or max of the top outputs over the real steps: `pool_over_time`), and
a reverse direction starts from its initial state at each sequence's real end.

Dropout exists only in a training graph (`train=True`): each dropout is a `dropout` op whose
mask is a data leaf (role "dropout") the runtime fills per batch; a per-sequence mask has
t=None, so every step points at the one node, like a parameter. The evaluation graph has no
dropout nodes and the same parameters.

With `model.attention`, each decoder step also reads every encoder output through one
memory node (Luong, Pham & Manning 2015, global attention; see `Unroller.attend`).

With `model.decoders`, every step's top output (or attentional state) passes the output
decoders before the readout (`Unroller.decode`; their checks live in `spec/decoders.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seqgraph.engine import ops
from seqgraph.engine.graph import Graph, Key, ParamInfo, collector_paused
from seqgraph.errors import SpecError
from seqgraph.spec.equations import Const, SizeExpr, eval_size
from seqgraph.spec.load import CellSpec, IOSpec, LayerSpec, Spec, encoded_size

FEEDBACK_MODES = ("teacher", "scheduled", "free")


@dataclass(frozen=True)
class Memory:
    """What every decoder step attends over: the encoder's outputs (B, T, size), the source
    mask (B, T), and for additive scores their projection W_k h_s (B, T, attention size)."""

    states: Key
    mask: Key
    keys: Key | None
    size: int


MAX_PARAM_SIZE = 2**28  # 1 GiB of float32 in one parameter


class Unroller:
    """Builds the graph for one spec and one sequence length."""

    def __init__(
        self,
        spec: Spec,
        steps: int,
        out_steps: int | None,
        feedback: str,
        state_grads=False,
        train=False,
    ):
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}")
        self.spec, self.model = spec, spec.model
        self.steps, self.out_steps, self.feedback = steps, out_steps, feedback
        self.state_grads, self.train = state_grads, train
        self.widths: dict[str, dict] = {}  # scope -> `cell_widths`, for dropout inside cells
        self.step_attrs: dict[tuple, dict] = {}  # see `resolved_attrs`
        self.g = Graph()

    # ---- node helpers ------------------------------------------------------------------------

    def op(self, key: Key, op: str, inputs: tuple, source: str = "", **attrs) -> Key:
        return self.g.add(key, "op", op, inputs, attrs, source=source)

    def const(self, value) -> Key:
        """A constant node shared by every step; arrays are cast to the model dtype when run."""
        array = np.asarray(value, dtype=np.float64)
        label = repr(float(array)) if array.ndim == 0 else f"eye{array.shape[0]}"
        key = ("const", label, None)
        if key not in self.g.nodes:
            self.g.add(key, "const", attrs={"value": array})
        return key

    def param(self, scope: str, name: str, shape, init: dict, fill=None, path="") -> Key:
        key = (scope, name, None)
        if key not in self.g.nodes:
            dims = tuple(int(n) for n in shape)
            if any(n < 1 for n in dims):
                raise SpecError(path, f"parameter {scope}.{name} would have shape {dims}")
            if math.prod(dims) > MAX_PARAM_SIZE:
                raise SpecError(
                    path,
                    f"parameter {scope}.{name} would have shape {dims}, "
                    f"{math.prod(dims):,} numbers; sizes this large are a typo",
                )
            self.g.add_param(f"{scope}.{name}", key, ParamInfo(dims, init, fill))
        return key

    def data(self, scope: str, name: str, t, **role) -> Key:
        key = (scope, name, t)
        if key not in self.g.nodes:
            self.g.add_input(key, **role)
        return key

    def drop(
        self,
        key: Key,
        scope: str,
        name: str,
        t,
        p: float,
        shape: tuple,
        per_sequence=False,
        whole_vectors=False,
    ) -> Key:
        """`key` (step t) through dropout with probability p, its mask the leaf
        (scope, name.mask, t), or t=None for one mask per sequence; `shape` is one
        sequence's. `whole_vectors`: the mask keeps or drops a sequence's whole vector at
        the step (word dropout). In an evaluation graph, or with p = 0, `key` itself."""
        if not self.train or not p:
            return key
        mask_t = None if per_sequence else t
        extra = {"whole_vectors": True} if whole_vectors else {}
        mask = self.data(
            scope, f"{name}.mask", mask_t, role="dropout", p=float(p), shape=shape, **extra
        )
        return self.op((scope, name, t), "dropout", (key, mask))

    # ---- per-step encoders and the readout ---------------------------------------------------

    def encode(self, encoders, prefix: str, key: Key, io: IOSpec, t) -> Key:
        size, shape = io.size, io.shape
        for i, enc in enumerate(encoders):
            scope = f"{prefix}{i}"
            out_shape = None  # one sequence's output shape, when not (size,)
            if enc.type == "conv":
                key, shape = self.conv(scope, key, shape, enc, t)
                size, out_shape = shape[0] * shape[1] * shape[2], shape
                if i + 1 == len(encoders) or encoders[i + 1].type != "conv":
                    key = self.op((scope, "flat", t), "reshape", (key,), shape=(-1, size))
                    out_shape = None
            elif enc.type == "onehot":
                key = self.op((scope, "onehot", t), "embedding", (key, self.const(np.eye(size))))
            elif enc.type == "embedding":
                table = self.param(scope, "E", (size, enc.size), {"dist": "normal", "scale": 1.0})
                key, size = self.op((scope, "emb", t), "embedding", (key, table)), enc.size
            else:
                key = self.dense(scope, key, size, enc.size, t, enc.activation)
                size = enc.size
            if enc.word_dropout:  # a dropped token reads as zeros, the others scaled up
                key = self.drop(
                    key, scope, "word_drop", t, enc.word_dropout, (size,), whole_vectors=True
                )
            key = self.drop(key, scope, "drop", t, enc.dropout, out_shape or (size,))
        return key

    def conv(self, scope: str, key: Key, shape: tuple, enc, t) -> tuple[Key, tuple]:
        """A per-frame conv -> activation -> max-pool, sharing its kernel across steps."""
        channels, height, width = shape
        fan_in = channels * enc.kernel * enc.kernel
        init = {"dist": "uniform", "scale": 1 / math.sqrt(fan_in)}
        W = self.param(scope, "K", (enc.size, channels, enc.kernel, enc.kernel), init)
        b = self.param(scope, "b", (enc.size, 1, 1), init)
        key = self.op((scope, "conv", t), "conv2d", (key, W), padding=enc.kernel // 2)
        key = self.op((scope, "z", t), "add", (key, b))
        if enc.activation != "identity":
            key = self.op((scope, enc.activation, t), enc.activation, (key,))
        if enc.pool > 1:
            key = self.op((scope, "pool", t), "maxpool2d", (key,), size=enc.pool)
        return key, (enc.size, height // enc.pool, width // enc.pool)

    def dense(self, scope: str, key: Key, n_in: int, n_out: int, t, activation="identity"):
        init = {"dist": "uniform", "scale": 1 / math.sqrt(n_in)}
        W = self.param(scope, "W", (n_in, n_out), init)
        b = self.param(scope, "b", (n_out,), init)
        key = self.op((scope, "z", t), "add", (self.op((scope, "xW", t), "matmul", (key, W)), b))
        if activation != "identity":
            key = self.op((scope, activation, t), activation, (key,))
        return key

    def readout(self, key: Key, size: int, t) -> Key:
        """Step t's prediction: the top output through the decoders, then the readout."""
        key, size = self.decode(key, size, t)
        if self.model.readout == "identity":
            return key
        return self.dense("out", key, size, self.model.target.size, t)

    def decode(self, key: Key, size: int, t) -> tuple[Key, int]:
        """The per-step output decoders (`model.decoders`), each scope's parameters shared by
        every step; returns the output as (B, size), images flattened channel-major."""
        shape: tuple = ()  # of the current image, () while it is a vector
        for i, dec in enumerate(self.model.decoders):
            scope = f"decode{i}"
            if dec.type == "dense":
                if shape:
                    key = self.op((scope, "flat_in", t), "reshape", (key,), shape=(-1, size))
                key = self.dense(scope, key, size, dec.size, t, dec.activation)
                if dec.shape:
                    key = self.op((scope, "image", t), "reshape", (key,), shape=(-1, *dec.shape))
            else:
                key = self.upconv(scope, key, shape[0], dec, t)
            size, shape = dec.size if not dec.shape else math.prod(dec.shape), dec.shape
        if shape:
            key = self.op(("decode", "flat", t), "reshape", (key,), shape=(-1, size))
        return key, size

    def upconv(self, scope: str, key: Key, channels: int, dec, t) -> Key:
        """A deconv (transposed convolution, padding (kernel - stride) / 2, so exactly `stride`
        times larger) or upsample (nearest, then a same-size convolution) decoder, then its
        bias and activation."""
        k, stride = dec.kernel, dec.stride
        if dec.type == "deconv":
            # each output pixel sums about channels * (k / stride)**2 products
            init = {"dist": "uniform", "scale": stride / math.sqrt(channels * k * k)}
            W = self.param(scope, "K", (channels, dec.size, k, k), init)
            padding = (k - stride) // 2
            key = self.op(
                (scope, "deconv", t), "conv_transpose2d", (key, W), stride=stride, padding=padding
            )
        else:
            init = {"dist": "uniform", "scale": 1 / math.sqrt(channels * k * k)}
            W = self.param(scope, "K", (dec.size, channels, k, k), init)
            key = self.op((scope, "upsample", t), "upsample2d", (key,), size=stride)
            key = self.op((scope, "conv", t), "conv2d", (key, W), padding=k // 2)
        b = self.param(scope, "b", (dec.size, 1, 1), init)
        key = self.op((scope, "z", t), "add", (key, b))
        if dec.activation != "identity":
            key = self.op((scope, dec.activation, t), dec.activation, (key,))
        return key

    def loss(self, prediction: Key, target: Key, weight: Key, t) -> Key:
        fn = self.model.loss
        per_row = self.op(("loss", fn, t), fn, (prediction, target))
        weighted = self.op(("loss", "weighted", t), "mul", (per_row, weight))
        return self.op(("loss", "L", t), "sum", (weighted,))

    def ctc_loss(self, predictions: list) -> Key:
        """ONE ctc node over the per-step logits stacked to (B, T, C), averaged over the batch:
        targets are whole label sequences (B, S) with their own lengths, not one per step."""
        logits = self.op(("loss", "logits", None), "stack", tuple(predictions), axis=1)
        labels = self.data("y", "labels", None, role="labels")
        steps = self.data("x", "lengths", None, role="lengths")
        label_steps = self.data("y", "lengths", None, role="label_lengths")
        nll = self.op(("loss", "ctc", None), "ctc", (logits, labels, steps, label_steps))
        return self.op(("loss", "L", None), "mean", (nll,))

    # ---- cells -------------------------------------------------------------------------------

    def cell_params(self, cell: CellSpec, layer: LayerSpec, scope: str, n_in: int) -> dict:
        sizes = {"input": n_in, "hidden": layer.hidden}
        where = f"cells.{cell.name}.params"
        keys = {}
        for name, p in cell.params.items():
            shape = [eval_size(n, sizes, f"{where}.{name}.shape") for n in p.shape]
            if any(n != int(n) for n in shape):
                raise SpecError(f"{where}.{name}.shape", f"shape {shape} is not whole numbers")
            init = dict(p.init)
            if "scale" in init:
                init["scale"] = float(eval_size(init["scale"], sizes, f"{where}.{name}.init"))
            fill = None
            if p.fill and layer.options.get(p.fill["option"]) is not None:
                value = p.fill.get("value", layer.options[p.fill["option"]])
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SpecError(
                        f"model.layers.options.{p.fill['option']}",
                        f"must be a number or null, got {value!r}",
                    )
                fill = {"parts": p.fill["parts"], "index": p.fill["index"], "value": value}
            keys[name] = self.param(scope, name, shape, init, fill, f"{where}.{name}")
        return keys

    def initial_state(self, cell: CellSpec, layer: LayerSpec, scope: str, mask: Key) -> dict:
        """Each state's value before the first step: a data input (zeros unless the batch
        gives one) or, with `init_state: learned`, a (1, hidden) parameter broadcast to the
        batch as where(mask, h0, h0), so that ops that do not broadcast (concat) and
        reductions over the batch see (B, hidden) like every later state."""
        if layer.init_state == "learned":
            init, out = {"dist": "zeros"}, {}
            for v in cell.state:
                h0 = self.param(scope, f"{v}0", (1, layer.hidden), init)
                out[v] = self.op((scope, f"{v}0_batch", None), "where", (mask, h0, h0))
            return out
        return {
            v: self.data(scope, f"{v}0", None, role="state", size=layer.hidden) for v in cell.state
        }

    def cell_step(self, cell, scope, t, x: Key, state: dict, params: dict, mask: Key, sizes):
        """One application of a cell; returns (output key, new state keys)."""
        local = {cell.inputs[0]: x, **state, **params}
        widths = None
        for step in cell.steps:
            inputs = tuple(
                self.const(i.value) if isinstance(i, Const) else local[i] for i in step.inputs
            )
            attrs = self.resolved_attrs(step, sizes)
            if step.op == "dropout":
                if widths is None:  # the same for every step of this layer: derived once
                    widths = self.widths.get(scope)
                    if widths is None:
                        widths = self.widths[scope] = self.cell_widths(cell, params, sizes)
                local[step.out] = self.cell_dropout(scope, t, step, inputs[0], attrs, widths)
                continue
            local[step.out] = self.op((scope, step.out, t), step.op, inputs, step.source, **attrs)
        new = {
            v: self.op((scope, v, t), "where", (mask, local[cell.bindings[v]], state[v]))
            for v in cell.state
        }
        out = cell.output
        return (new[out] if out in new else local[cell.bindings[out]]), new

    def resolved_attrs(self, step, sizes: dict) -> dict:
        """A cell step's attrs with their size expressions evaluated (each is parsed): the
        same at every time step of a layer, so evaluated once per layer, not once per step.
        Callers pass them on as keywords, so every node still gets a dict of its own."""
        key = (id(step), tuple(sizes.items()))  # the cell's steps live as long as the spec
        if key not in self.step_attrs:
            self.step_attrs[key] = {
                k: _resolve(v, sizes, step.source) for k, v in step.attrs.items()
            }
        return self.step_attrs[key]

    def cell_dropout(self, scope: str, t, step, x: Key, attrs: dict, widths: dict) -> Key:
        """A cell's `dropout(x, p)`: one mask per sequence unless `per_step=1`."""
        p = attrs["p"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise SpecError(step.source, f"dropout's p must be in [0, 1), got {p!r}")
        if widths.get(step.out) is None:
            raise SpecError(
                step.source,
                "cannot tell the width of dropout's operand; apply dropout to the cell's "
                "input, a state, or a product or elementwise result of them",
            )
        shape, per_sequence = (widths[step.out],), not attrs.get("per_step")
        return self.drop(x, scope, step.out, t, p, shape, per_sequence)

    def cell_widths(self, cell, params: dict, sizes: dict) -> dict:
        """The last-axis width of each local value of a cell, where the ops tell it (None
        where they do not): what a dropout mask inside a cell needs for its shape."""
        widths = {cell.inputs[0]: sizes["input"], **dict.fromkeys(cell.state, sizes["hidden"])}
        for name, key in params.items():
            widths[name] = self.g.param_info[self.g.node(key)["param"]].shape[-1]
        for step in cell.steps:
            ins = [None if isinstance(i, Const) else widths.get(i) for i in step.inputs]
            known = [w for w in ins if w is not None]
            axis = step.attrs.get("axis", -1)
            if step.op == "dropout":
                width = ins[0]
            elif step.op == "chunk" and axis == -1:
                width = ins[0] // step.attrs["parts"] if ins[0] is not None else None
            elif step.op == "matmul":
                width = ins[1]
            elif step.op == "concat" and axis == -1:
                width = sum(ins) if len(known) == len(ins) else None
            elif ops.OPS[step.op].elementwise or ops.OPS[step.op].rowwise:
                width = max(known) if known else None
            else:
                width = None
            widths[step.out] = width
        return widths

    def run_direction(
        self,
        layer: LayerSpec,
        scope: str,
        xs: list,
        n_in: int,
        masks: list,
        reverse: bool,
        init: dict | None = None,
    ):
        """Unroll one direction of one layer; returns (outputs per t, final state, last output)."""
        cell = self.spec.cells[layer.cell]
        params = self.cell_params(cell, layer, scope, n_in)
        state = init if init is not None else self.initial_state(cell, layer, scope, masks[0])
        sizes = step_sizes(layer, n_in)
        outs: list = [None] * len(xs)
        last = self.const(0.0)
        for t in reversed(range(len(xs))) if reverse else range(len(xs)):
            outs[t], state = self.cell_step(cell, scope, t, xs[t], state, params, masks[t], sizes)
            last = (
                outs[t]
                if cell.output in cell.state
                else self.op((scope, "last", t), "where", (masks[t], outs[t], last))
            )
        return outs, state, (state[cell.output] if cell.output in cell.state else last)

    def merge(self, layer: LayerSpec, key: Key, a: Key, b: Key) -> Key:
        """Join the two directions of a bidirectional layer (concat or sum, per the spec)."""
        if layer.merge == "sum":
            return self.op(key, "add", (a, b))
        return self.op(key, "concat", (a, b), axis=-1)

    def run_layer(self, index: int, layer: LayerSpec, prefix: str, xs: list, n_in: int, masks):
        """A whole (possibly bidirectional) layer; returns (outputs, final states, last output)."""
        scope = f"{prefix}l{index}"
        if not layer.bidirectional:
            reverse = layer.direction == "reverse"
            return self.run_direction(layer, scope, xs, n_in, masks, reverse)
        f_outs, f_state, f_last = self.run_direction(layer, f"{scope}.fwd", xs, n_in, masks, False)
        b_outs, b_state, b_last = self.run_direction(layer, f"{scope}.bwd", xs, n_in, masks, True)
        outs = [
            self.merge(layer, (scope, "merge", t), f, b)
            for t, (f, b) in enumerate(zip(f_outs, b_outs))
        ]
        finals = {
            v: self.merge(layer, (scope, f"final_{v}", None), f_state[v], b_state[v])
            for v in f_state
        }
        return outs, finals, self.merge(layer, (scope, "last", None), f_last, b_last)

    # ---- patterns ----------------------------------------------------------------------------

    def encoder_stack(self, layers, prefix: str):
        """Inputs x_t through the per-step encoders and every layer, layer by layer."""
        m = self.model
        masks = [self.data("x", "mask", t, role="mask") for t in range(self.steps)]
        xs = [
            self.encode(m.encoders, "enc", self.data("x", "x", t, role="x"), m.input, t)
            for t in range(self.steps)
        ]
        size, finals, last = encoded_size(m.encoders, m.input), [], None
        for i, layer in enumerate(layers):
            if i > 0:  # the previous layer's outputs, dropped on their way up
                below, shape = layers[i - 1], (size,)
                xs = [
                    self.drop(x, f"{prefix}l{i - 1}", "drop", t, below.dropout, shape)
                    for t, x in enumerate(xs)
                ]
            xs, final, last = self.run_layer(i, layer, prefix, xs, size, masks)
            finals.append(final)
            size = layer.out_size
        return xs, finals, last, size

    def top_dropout(self, key: Key, t, name: str = "drop") -> Key:
        """The top layer's output on its way to the readout, through that layer's dropout."""
        layers = self.model.layers
        top = layers[-1]
        return self.drop(key, f"l{len(layers) - 1}", name, t, top.dropout, (top.out_size,))

    def pool_over_time(self, outs: list) -> Key:
        """many_to_one with `model.pool`: the top layer's outputs (B, size) reduced over each
        sequence's real steps, so a padded step neither counts nor gets a gradient.
        mean: sum_t [mask_t] h_t / sum_t [mask_t], written per step so that the plan runs
        the masking as one op over all steps and the sums as one reduction each.
        max: the steps stacked to (B, T, size), then one `masked_max` over time (its
        gradient goes to each unit's argmax step; ties share it)."""
        masks = [self.data("x", "mask", t, role="mask") for t in range(self.steps)]
        if self.model.pool == "max":
            stacked = self.op(("pool", "steps", None), "stack", tuple(outs), axis=1)
            mask = self.op(("pool", "mask", None), "stack", tuple(masks), axis=1)  # (B, T, 1)
            return self.op(("pool", "max", None), "masked_max", (stacked, mask), axis=1)
        zero, one = self.const(0.0), self.const(1.0)
        real = [
            self.op(("pool", "real", t), "where", (masks[t], h, zero)) for t, h in enumerate(outs)
        ]
        counts = [
            self.op(("pool", "count", t), "where", (m, one, zero)) for t, m in enumerate(masks)
        ]
        total = self.op(("pool", "total", None), "addn", tuple(real))
        length = self.op(("pool", "length", None), "addn", tuple(counts))  # (B, 1)
        return self.op(("pool", "mean", None), "div", (total, length))

    def feedback_stack(self, layers, prefix: str, inits: list, memory: Memory | None = None):
        """A unidirectional stack that feeds each step's prediction (or target) to the next;
        with a `memory`, each step's top output attends over it before the readout."""
        m = self.model
        cells = [self.spec.cells[layer.cell] for layer in layers]
        n_in = encoded_size(m.feedback_encoders, m.target)
        sizes = [n_in] + [layer.hidden for layer in layers[:-1]]
        params = [
            self.cell_params(c, l_, f"{prefix}l{i}", sizes[i])
            for i, (c, l_) in enumerate(zip(cells, layers))
        ]
        states = list(inits)
        previous = None
        for t in range(self.out_steps):
            feed = self.data("y", "feed", t, role="feed")
            if t > 0 and self.feedback != "teacher":
                own = (
                    previous
                    if m.target.type == "vectors"
                    else self.op(("feedback", "argmax", t), "argmax", (previous,))
                )
                if self.feedback == "free":
                    feed = own
                else:
                    coin = self.data("y", "use_model", t, role="coin")
                    feed = self.op(("feedback", "choose", t), "where", (coin, own, feed))
            x = self.encode(m.feedback_encoders, "fb", feed, m.target, t)
            mask = self.data("y", "mask", t, role="mask")
            for i, layer in enumerate(layers):
                scope = f"{prefix}l{i}"
                x, states[i] = self.cell_step(
                    cells[i], scope, t, x, states[i], params[i], mask, step_sizes(layer, sizes[i])
                )
                x = self.drop(x, scope, "drop", t, layer.dropout, (layer.out_size,))
            top = layers[-1].out_size
            if memory is not None:
                x, top = self.attend(memory, x, layers[-1].hidden, t), m.attention.size
            previous = self.readout(x, top, t)
            self.g.outputs.setdefault("predictions", []).append(previous)
            target = self.data("y", "y", t, role="y")
            weight = self.data("y", "weight", t, role="weight")
            self.g.outputs.setdefault("losses", []).append(self.loss(previous, target, weight, t))
        return states

    # ---- attention (Luong, Pham & Manning 2015, global attention) -------------------------

    def memory(self, outs: list, size: int) -> Memory:
        """The encoder's top-layer outputs stacked to (B, T, size), once for every decoder
        step, with the source mask (B, T); additive scores also project them once here."""
        masks = [self.data("x", "mask", t, role="mask") for t in range(self.steps)]
        states = self.op(("att", "memory", None), "stack", tuple(outs), axis=1)
        mask = self.op(("att", "source_mask", None), "concat", tuple(masks), axis=-1)  # (B, T)
        keys = None
        if self.model.attention.type == "additive":
            W = self._att_param("W_k", size, self.model.attention.size)
            keys = self.op(("att", "keys", None), "matmul", (states, W))
        return Memory(states, mask, keys, size)

    def _att_param(self, name: str, n_in: int, n_out: int) -> Key:
        init = {"dist": "uniform", "scale": 1 / math.sqrt(n_in)}
        return self.param("att", name, (n_in, n_out), init)

    def scores(self, memory: Memory, h: Key, n_h: int, t) -> Key:
        """score(h_t, h_s) for every source step s, (B, T): dot h_t . h_s; general
        h_t W_a h_s; additive (Luong's concat) v . tanh(W_q h_t + W_k h_s)."""
        kind, size = self.model.attention.type, self.model.attention.size
        if kind == "additive":
            q = self.op(("att", "query", t), "matmul", (h, self._att_param("W_q", n_h, size)))
            q = self.op(("att", "query3", t), "reshape", (q,), shape=(-1, 1, size))
            hidden = self.op(("att", "mix", t), "add", (memory.keys, q))
            hidden = self.op(("att", "tanh", t), "tanh", (hidden,))
            v = self._att_param("v", size, 1)
            column = self.op(("att", "scores3", t), "matmul", (hidden, v))
        else:
            q = h
            if kind == "general":
                W = self._att_param("W_a", n_h, memory.size)
                q = self.op(("att", "query", t), "matmul", (h, W))
            q = self.op(("att", "query3", t), "reshape", (q,), shape=(-1, memory.size, 1))
            column = self.op(("att", "scores3", t), "matmul", (memory.states, q))
        return self.op(("att", "scores", t), "reshape", (column,), shape=(-1, self.steps))

    def attend(self, memory: Memory, h: Key, n_h: int, t) -> Key:
        """Decoder step t reads the source: weights a_t = masked softmax of the scores (0 at
        padded source steps), context c_t = sum_s a_ts h_s, and the attentional state
        h~_t = tanh(W_c [c_t; h_t]) (Luong et al. 2015, eq. 5; no bias, as there), which the
        readout reads. The weights are an output of the graph (`outputs["attention"]`)."""
        scores = self.scores(memory, h, n_h, t)
        weights = self.op(("att", "weights", t), "masked_softmax", (scores, memory.mask))
        self.g.outputs.setdefault("attention", []).append(weights)
        row = self.op(("att", "weights3", t), "reshape", (weights,), shape=(-1, 1, self.steps))
        context = self.op(("att", "context3", t), "matmul", (row, memory.states))
        context = self.op(("att", "context", t), "reshape", (context,), shape=(-1, memory.size))
        both = self.op(("att", "joined", t), "concat", (context, h), axis=-1)
        W_c = self._att_param("W_c", memory.size + n_h, self.model.attention.size)
        mixed = self.op(("att", "mixed", t), "matmul", (both, W_c))
        return self.op(("att", "h_tilde", t), "tanh", (mixed,))

    def state_seeds(self, finals: list) -> list:
        """For recomputation in segments (`runtime/segments.py`): a term sum(s_T * G_s) per final
        state s, with G_s a data input, so backward starts each final state's gradient at the
        G_s that the later segment handed back; the plan then also differentiates the
        initial states (`Graph.state_grads`), which is what goes to the earlier segment."""
        seeds = []
        for i, (layer, final) in enumerate(zip(self.model.layers, finals)):
            for v, key in final.items():
                scope = f"l{i}"
                given = self.data(scope, f"{v}0_grad", None, role="state_grad", size=layer.hidden)
                dot = self.op(("seed", f"{scope}.{v}.dot", None), "mul", (key, given))
                seeds.append(self.op(("seed", f"{scope}.{v}", None), "sum", (dot,)))
        self.g.state_grads = True
        return seeds

    def bridge(self, layers, context: Key, size: int) -> list:
        """one_to_many: a learned tanh projection of the context starts every state."""
        inits = []
        for i, layer in enumerate(layers):
            cell = self.spec.cells[layer.cell]
            inits.append(
                {
                    v: self.dense(f"bridge.l{i}.{v}", context, size, layer.hidden, None, "tanh")
                    for v in cell.state
                }
            )
        return inits

    def build(self) -> Graph:
        m, g = self.model, self.g
        if m.pattern in ("many_to_many", "many_to_one", "one_to_one"):
            outs, finals, last, size = self.encoder_stack(m.layers, "")
            if m.pattern == "many_to_many" and m.loss == "ctc":
                g.outputs["predictions"] = [
                    self.readout(self.top_dropout(out, t), size, t) for t, out in enumerate(outs)
                ]
                g.outputs["losses"] = [self.ctc_loss(g.outputs["predictions"])]
            elif m.pattern == "many_to_many":
                for t, out in enumerate(outs):
                    pred = self.readout(self.top_dropout(out, t), size, t)
                    g.outputs.setdefault("predictions", []).append(pred)
                    target = self.data("y", "y", t, role="y")
                    weight = self.data("y", "weight", t, role="weight")
                    g.outputs.setdefault("losses", []).append(self.loss(pred, target, weight, t))
                if self.state_grads:
                    g.outputs["losses"] += self.state_seeds(finals)
            else:
                top = last if m.pool == "last" else self.pool_over_time(outs)
                pred = self.readout(self.top_dropout(top, None, "drop_last"), size, None)
                g.outputs["predictions"] = [pred]
                target = self.data("y", "y", None, role="y")
                weight = self.data("y", "weight", None, role="weight")
                g.outputs["losses"] = [self.loss(pred, target, weight, None)]
        elif m.pattern == "encoder_decoder":
            outs, finals, _, size = self.encoder_stack(m.layers, "")
            memory = self.memory(outs, size) if m.attention else None
            self.feedback_stack(m.decoder_layers, "dec.", finals, memory)
        else:  # one_to_many
            context = self.encode(
                m.encoders, "enc", self.data("ctx", "x", None, role="x"), m.input, None
            )
            inits = self.bridge(m.layers, context, encoded_size(m.encoders, m.input))
            self.feedback_stack(m.layers, "", inits)
        losses = g.outputs["losses"]
        g.loss = self.op(("loss", "total", None), "addn", tuple(losses))
        return g


def step_sizes(layer: LayerSpec, n_in: int) -> dict:
    """The names a cell's attribute expressions may use for this layer."""
    return {"input": n_in, "hidden": layer.hidden, "recurrent_dropout": layer.recurrent_dropout}


def _resolve(value, sizes: dict, path: str):
    if isinstance(value, SizeExpr):
        out = eval_size(value.text, sizes, path)
        return int(out) if float(out).is_integer() else out
    if isinstance(value, tuple):
        return tuple(_resolve(v, sizes, path) for v in value)
    return value


def compile_graph(
    spec: Spec,
    steps: int,
    out_steps: int | None = None,
    feedback: str = "teacher",
    state_grads: bool = False,
    train: bool = False,
) -> Graph:
    """Unroll `spec` over `steps` input steps (and `out_steps` decoder steps) into a Graph.
    `state_grads`: seed the final states' gradients and differentiate the initial states
    (many_to_many only; see `Unroller.state_seeds`). `train`: the training graph, with the
    spec's dropout (an evaluation graph has none)."""
    m = spec.model
    if m.pattern in ("one_to_one",):
        steps = 1
    if m.pattern == "one_to_many":
        out_steps = out_steps if out_steps is not None else steps
        steps = 0
    if m.pattern == "encoder_decoder" and out_steps is None:
        raise ValueError("encoder_decoder needs out_steps (the decoder length)")
    if steps < 0 or (m.pattern != "one_to_many" and steps < 1):
        raise ValueError(f"steps must be at least 1, got {steps}")
    with collector_paused():
        return Unroller(spec, steps, out_steps, feedback, state_grads, train).build()
