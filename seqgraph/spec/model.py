"""Semantic checks of the `model:` section: patterns, encoders, layers and how they connect."""

from __future__ import annotations

import difflib

from seqgraph.errors import SpecError
from seqgraph.spec.decoders import build_decoders
from seqgraph.spec.equations import SizeExpr
from seqgraph.spec.types import AttentionSpec, EncoderSpec, IOSpec, LayerSpec, ModelSpec


def _io(raw: dict, path: str, auto: int | None, loaded: bool = False) -> IOSpec:
    if raw["type"] == "images":
        if "shape" not in raw:
            raise SpecError(path, "images need `shape: [channels, height, width]`")
        channels, height, width = raw["shape"]
        return IOSpec("images", channels * height * width, tuple(raw["shape"]))
    key = "vocab" if raw["type"] == "ids" else "size"
    if key not in raw:
        example = f"{{type: {raw['type']}, {key}: 10}}"
        raise SpecError(path, f"{raw['type']} needs `{key}`: e.g. {example}")
    if raw[key] == "auto":
        if auto is None and loaded:  # the data was read and has no vocabulary to count
            raise SpecError(
                f"{path}.vocab",
                "vocab: auto takes the size of the data's vocabulary, and this data names "
                "none; give a number (e.g. vocab: 10) or, for an .npz, store the string "
                "arrays `vocab` (names of the ids of x) and `labels` (of y) in the file",
            )
        if auto is None:
            raise SpecError(
                f"{path}.vocab",
                "vocab: auto is taken from the data, which was not "
                "loaded here; give a number or use `seqgraph run`",
            )
        return IOSpec(raw["type"], auto)
    return IOSpec(raw["type"], raw[key])


def _encoders(items: list, io: IOSpec, path: str) -> tuple[EncoderSpec, ...]:
    out = []
    for i, raw in enumerate(items):
        here = f"{path}[{i}]"
        kind = raw["type"]
        if kind in ("embedding", "onehot") and (i > 0 or io.type != "ids"):
            raise SpecError(
                f"{here}.type",
                f"{kind} turns integer ids into vectors, so it must "
                "come first and the input must be `type: ids`",
            )
        if kind == "dense" and io.type == "images" and not out:
            raise SpecError(
                f"{here}.type",
                "a dense encoder reads vectors, and the input is images: put a "
                "`{type: conv, channels: N}` encoder before it",
            )
        if kind in ("embedding", "dense") and "size" not in raw:
            raise SpecError(here, f"a {kind} encoder needs `size`")
        if raw.get("word_dropout") and kind not in ("embedding", "onehot"):
            raise SpecError(
                f"{here}.word_dropout",
                "word_dropout drops whole tokens, so it belongs on the first encoder, an "
                "`embedding` or `onehot`; use `dropout` to drop single units here",
            )
        if kind == "conv":
            if io.type != "images" or any(e.type != "conv" for e in out):
                raise SpecError(
                    f"{here}.type",
                    "conv encoders read image frames: the input "
                    "must be `type: images` and convs come before other encoders",
                )
            if "channels" not in raw:
                raise SpecError(here, "a conv encoder needs `channels`")
            out.append(
                EncoderSpec(
                    kind,
                    raw["channels"],
                    raw.get("activation", "relu"),
                    raw.get("kernel", 3),
                    raw.get("pool", 2),
                    raw.get("dropout", 0.0),
                )
            )
            _image_shapes(tuple(out), io, here)
            continue
        activation = raw.get("activation", "identity")
        out.append(
            EncoderSpec(
                kind,
                raw.get("size"),
                activation,
                dropout=raw.get("dropout", 0.0),
                word_dropout=raw.get("word_dropout", 0.0),
            )
        )
    if io.type == "ids" and (not out or out[0].type not in ("embedding", "onehot")):
        raise SpecError(
            path,
            "integer ids must first pass an `embedding` or `onehot` encoder: "
            "add `- {type: embedding, size: 32}`",
        )
    return tuple(out)


def _image_shapes(encoders: tuple[EncoderSpec, ...], io: IOSpec, path: str = "") -> list:
    """(C, H, W) after each conv encoder; each must keep H and W divisible by its pool."""
    shape, out = io.shape, []
    for enc in encoders:
        if enc.type != "conv":
            break
        _, height, width = shape
        if enc.kernel % 2 == 0 or height % enc.pool or width % enc.pool:
            raise SpecError(
                path,
                f"kernel must be odd and pool ({enc.pool}) must divide the "
                f"{height}x{width} frames it pools",
            )
        shape = (enc.size, height // enc.pool, width // enc.pool)
        out.append(shape)
    return out


def encoded_size(encoders: tuple[EncoderSpec, ...], io: IOSpec) -> int:
    """The feature size after a chain of per-step encoders (conv output flattened)."""
    size = io.size
    for enc in encoders:
        if enc.type == "conv":
            channels, height, width = _image_shapes(encoders, io)[-1]
            size = channels * height * width
        else:
            size = io.size if enc.type == "onehot" else enc.size
    return size


def _layers(items: list, cells: dict, path: str) -> tuple[LayerSpec, ...]:
    out = []
    for i, raw in enumerate(items):
        here = f"{path}[{i}]"
        if raw["cell"] not in cells:
            near = difflib.get_close_matches(raw["cell"], list(cells), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(cells))}"
            raise SpecError(f"{here}.cell", f"unknown cell {raw['cell']!r}; {hint}")
        cell = cells[_layer_cell(raw, cells, here)]
        for key in raw.get("options") or {}:
            if key not in cell.options:
                raise SpecError(
                    f"{here}.options.{key}",
                    f"cell {cell.name!r} has no option "
                    f"{key!r}; its options: {', '.join(cell.options) or 'none'}",
                )
        out.append(
            LayerSpec(
                cell.name,
                raw["hidden"],
                raw.get("bidirectional", False),
                raw.get("merge", "concat"),
                raw.get("init_state", "zeros"),
                {**cell.options, **(raw.get("options") or {})},
                raw.get("direction", "forward"),
                raw.get("layer_norm", False),
                raw.get("dropout", 0.0),
                raw.get("recurrent_dropout", 0.0),
            )
        )
        if out[-1].recurrent_dropout and not reads_recurrent_dropout(cell):
            raise SpecError(
                f"{here}.recurrent_dropout",
                f"cell {cell.name!r} does not read `recurrent_dropout`: write "
                "`dropout(h, recurrent_dropout)` where its gates read the state h, as the "
                "built-in rnn, gru and lstm cells do",
            )
        if out[-1].bidirectional and out[-1].direction != "forward":
            raise SpecError(
                f"{here}.direction",
                "a bidirectional layer runs both directions; drop direction: reverse "
                "or bidirectional: true",
            )
    return tuple(out)


def _layer_cell(raw: dict, cells: dict, here: str) -> str:
    """The cell a layer runs: its own or, with `layer_norm: true`, the layer-normalised form
    its YAML names under `layer_norm_form` (rnn_layer_norm, ...)."""
    name = raw["cell"]
    if not raw.get("layer_norm", False):
        return name
    form = cells[name].layer_norm_form
    if not form:
        raise SpecError(
            f"{here}.layer_norm",
            f"cell {name!r} has no layer-normalised form (rnn, gru and lstm have one); "
            "remove layer_norm: true and write the normalisation into the cell's equations, "
            "e.g. `h = tanh(layer_norm(x @ W) * gain + bias)` (README, Cells are data: ln_rnn)",
        )
    if form not in cells:
        raise SpecError(
            f"{here}.layer_norm",
            f"cell {name!r} names layer_norm_form {form!r}, which is not a cell; "
            f"define cells.{form} or fix the name",
        )
    return form


def reads_recurrent_dropout(cell) -> bool:
    """Whether one of the cell's equations uses the layer's `recurrent_dropout` value."""
    return any(
        isinstance(value, SizeExpr) and "recurrent_dropout" in value.text
        for step in cell.steps
        for value in step.attrs.values()
    )


def build_model(raw: dict, cells: dict, auto: dict) -> ModelSpec:
    pattern = raw["pattern"]
    inp = _io(raw["input"], "model.input", auto.get("input"), "input" in auto)
    target = _io(raw["target"], "model.target", auto.get("target"), "target" in auto)
    layers = _layers(raw["layers"], cells, "model.layers")
    feeds_back = pattern in ("one_to_many", "encoder_decoder")
    encoders = _encoders(raw.get("encoders", []), inp, "model.encoders")
    feedback = ()
    if feeds_back:
        default = [{"type": "embedding", "size": layers[0].hidden}] if target.type == "ids" else []
        feedback = _encoders(
            raw.get("feedback_encoders", default), target, "model.feedback_encoders"
        )
    elif "feedback_encoders" in raw:
        raise SpecError(
            "model.feedback_encoders",
            f"only one_to_many and encoder_decoder feed outputs back, not {pattern}",
        )
    decoder = ()
    if pattern == "encoder_decoder":
        default = [
            {**layer, "bidirectional": False, "direction": "forward"} for layer in raw["layers"]
        ]
        decoder = _layers(raw.get("decoder_layers", default), cells, "model.decoder_layers")
        _check_bridge(layers, decoder, cells)
        if layers[-1].dropout:
            raise SpecError(
                f"model.layers[{len(layers) - 1}].dropout",
                "the last encoder layer hands the decoder only its final state, so dropout "
                "on its outputs would act on nothing; remove it (recurrent_dropout works)",
            )
    elif "decoder_layers" in raw:
        raise SpecError("model.decoder_layers", "decoder_layers belong to encoder_decoder only")
    causal = decoder if pattern == "encoder_decoder" else layers if feeds_back else ()
    for i, layer in enumerate(causal):
        where = "decoder_layers" if pattern == "encoder_decoder" else "layers"
        if layer.bidirectional:
            raise SpecError(
                f"model.{where}[{i}].bidirectional",
                "a layer that feeds its output "
                "back cannot see the future; set bidirectional: false",
            )
        if layer.direction == "reverse":
            raise SpecError(
                f"model.{where}[{i}].direction",
                "a layer that feeds its output back runs forward in time; "
                "remove direction: reverse",
            )
    attention = _attention(raw.get("attention"), pattern)
    readout = raw.get("readout", "linear")
    top = attention.size if attention else (decoder or layers)[-1].out_size
    decoders, top = build_decoders(raw.get("decoders", []), top, target)
    if decoders and decoders[-1].type != "dense":
        readout = "identity"  # the last decoder's image is the prediction
    elif readout == "identity" and (target.type != "vectors" or target.size != top):
        what = "the last decoder's output" if decoders else "the top layer's output"
        raise SpecError(
            "model.readout",
            f"identity readout needs vector targets of size {top} ({what}); use readout: linear",
        )
    bos = raw.get("bos", 0)
    if feeds_back and target.type == "ids" and bos >= target.size:
        raise SpecError("model.bos", f"bos id {bos} is outside the target vocab ({target.size})")
    objective = _objective(raw.get("loss", ""), pattern, target)
    pool = raw.get("pool", "last")
    if pool != "last" and pattern != "many_to_one":
        raise SpecError(
            "model.pool",
            f"pooling over time gives one vector per sequence for many_to_one; {pattern} "
            "reads every step (or a final state): remove model.pool or set it to last",
        )
    return ModelSpec(
        pattern,
        inp,
        target,
        encoders,
        layers,
        decoder,
        feedback,
        readout,
        bos,
        objective,
        attention,
        decoders,
        pool,
    )


def _attention(raw: dict | None, pattern: str):
    """`model.attention`, checked against the pattern."""
    if raw is None:
        return None
    if pattern != "encoder_decoder":
        raise SpecError(
            "model.attention",
            f"attention lets each decoder step read every encoder output; {pattern} has no "
            "encoder outputs to read (one_to_many starts from one vector); use "
            "pattern: encoder_decoder or remove model.attention",
        )
    # dot scores h_t . h_s need equal sizes, which `_check_bridge` already demands of the top
    # encoder and decoder layers (the encoder's final state starts the decoder)
    return AttentionSpec(raw["type"], raw["size"])


def _objective(loss: str, pattern: str, target: IOSpec) -> str:
    """`model.loss`, checked against the target type and the pattern."""
    needs = {"softmax_ce": "ids", "mse": "vectors", "ctc": "ids"}
    if loss and target.type != needs[loss]:
        raise SpecError(
            "model.loss", f"{loss} needs `target: {{type: {needs[loss]}}}`, not {target.type}"
        )
    if loss == "ctc" and pattern != "many_to_many":
        raise SpecError(
            "model.loss",
            f"ctc scores a label sequence against every input step: "
            f"use pattern many_to_many, not {pattern}",
        )
    if loss == "ctc" and target.size < 2:
        raise SpecError("model.target.vocab", "ctc needs the blank (id 0) and at least one label")
    return loss


def _check_bridge(encoder: tuple, decoder: tuple, cells: dict) -> None:
    """The encoder's final state starts the decoder, so their layers must line up."""
    if len(encoder) != len(decoder):
        raise SpecError(
            "model.decoder_layers",
            f"{len(decoder)} decoder layers but "
            f"{len(encoder)} encoder layers; their final states are passed one to one",
        )
    for i, (enc, dec) in enumerate(zip(encoder, decoder)):
        if cells[enc.cell].state != cells[dec.cell].state:
            raise SpecError(
                f"model.decoder_layers[{i}].cell",
                f"decoder cell {dec.cell!r} has "
                f"state {cells[dec.cell].state}, encoder cell {enc.cell!r} "
                f"{cells[enc.cell].state}; use cells with the same state",
            )
        if dec.hidden != enc.out_size:
            raise SpecError(
                f"model.decoder_layers[{i}].hidden",
                f"must be {enc.out_size} to take the encoder layer's final state",
            )
