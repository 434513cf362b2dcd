"""The checked spec as frozen dataclasses: what `load_spec` returns and the compiler reads.

Their reprs are one line each, what a notebook needs (name, pattern, layer stack, sizes),
not a dump of every field; the fields themselves are all public."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple  # ints or size expressions
    init: dict
    fill: dict | None = None


@dataclass(frozen=True)
class CellSpec:
    name: str
    inputs: tuple[str, ...]
    state: tuple[str, ...]
    output: str
    options: dict
    params: dict[str, ParamSpec]
    equations: tuple[str, ...]
    steps: tuple  # lowered equations.Step list
    bindings: dict  # final local name of every equation name
    doc: str = ""
    layer_norm_form: str = ""  # the cell `layer_norm: true` selects ("": none)

    def __repr__(self) -> str:
        io = f"inputs {', '.join(self.inputs)}; state {', '.join(self.state)} -> {self.output}"
        params = ", ".join(f"{n} ({', '.join(map(str, p.shape))})" for n, p in self.params.items())
        count = f"{len(self.equations)} equation" + ("s" if len(self.equations) != 1 else "")
        doc = f"; {self.doc}" if self.doc else ""
        return f"CellSpec({self.name!r}: {io}; params {params}; {count}{doc})"


@dataclass(frozen=True)
class EncoderSpec:
    type: str
    size: int | None = None  # output features (channels for conv)
    activation: str = "identity"
    kernel: int = 3  # conv only
    pool: int = 2  # conv only: max-pool window after the convolution
    dropout: float = 0.0  # on the output, in training
    # embedding/onehot only: each token's whole vector dropped with this probability in
    # training (Iyyer et al. 2015's word dropout), before `dropout` drops single units
    word_dropout: float = 0.0

    def __repr__(self) -> str:
        return f"EncoderSpec({self.text})"

    @property
    def text(self) -> str:
        """Short form: "embedding 32", "dense 16 tanh", "conv 8 k3 pool2 relu"."""
        parts = [self.type] + ([str(self.size)] if self.size is not None else [])
        if self.type == "conv":
            parts += [f"k{self.kernel}", f"pool{self.pool}"]
        parts += [self.activation] if self.activation != "identity" else []
        return " ".join(parts + ([f"dropout {self.dropout:g}"] if self.dropout else []))


@dataclass(frozen=True)
class DecoderSpec:
    """One per-step output decoder (`model.decoders[i]`), applied at every step with weights
    shared over time between the top layer and the readout."""

    type: str  # "dense", "deconv" or "upsample"
    size: int  # output features (dense) or channels (deconv, upsample)
    activation: str = "identity"
    shape: tuple = ()  # (C, H, W) of an image decoder's output, or of a dense one given `shape`
    kernel: int = 0  # deconv, upsample
    stride: int = 1  # deconv: the transposed convolution's stride; upsample: its factor

    @property
    def image(self) -> bool:
        """Whether its output is an image (C, H, W) rather than a vector."""
        return bool(self.shape)

    def __repr__(self) -> str:
        return f"DecoderSpec({self.text})"

    @property
    def text(self) -> str:
        """Short form: "dense 128 relu", "dense 8x4x4", "deconv 1 k4 s2 sigmoid"."""
        parts = [self.type, _dims(self.shape) if self.type == "dense" and self.shape else ""]
        parts[1] = parts[1] or str(self.size)
        if self.type != "dense":
            parts += [f"k{self.kernel}", f"s{self.stride}"]
        return " ".join(parts + ([self.activation] if self.activation != "identity" else []))


@dataclass(frozen=True)
class LayerSpec:
    cell: str
    hidden: int
    bidirectional: bool = False
    merge: str = "concat"
    init_state: str = "zeros"
    options: dict = field(default_factory=dict, hash=False)
    direction: str = "forward"  # "reverse": one direction, last step first
    layer_norm: bool = False  # as written; `cell` is then the layer-normalised form it selected
    dropout: float = 0.0  # on the outputs, in training
    recurrent_dropout: float = 0.0  # variational, on h_{t-1} as the gates read it

    @property
    def out_size(self) -> int:
        return self.hidden * 2 if self.bidirectional and self.merge == "concat" else self.hidden

    def __repr__(self) -> str:
        return f"LayerSpec({self.text})"

    @property
    def text(self) -> str:
        """Short form: "lstm 64", "gru 32 bidirectional concat", options that are set."""
        parts = [self.cell, str(self.hidden)]
        if self.bidirectional:
            parts += ["bidirectional", self.merge]
        if self.direction != "forward":
            parts.append(self.direction)
        if self.init_state != "zeros":
            parts.append(f"init_state {self.init_state}")
        parts += [f"{k}={v}" for k, v in self.options.items() if v is not None]
        if self.dropout:
            parts.append(f"dropout {self.dropout:g}")
        if self.recurrent_dropout:
            parts.append(f"recurrent_dropout {self.recurrent_dropout:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class IOSpec:
    type: str  # "ids", "vectors" or "images"
    size: int  # vocabulary size for ids, feature size for vectors, C*H*W for images
    shape: tuple = ()  # (C, H, W) for images

    def __repr__(self) -> str:
        return f"IOSpec({self.text})"

    @property
    def text(self) -> str:
        """Short form: "ids 65", "vectors 1", "images 3x32x32"."""
        return f"{self.type} {_dims(self.shape) if self.shape else self.size}"


@dataclass(frozen=True)
class AttentionSpec:
    """`model.attention`: the score (additive, dot or general) and the size of the attentional
    state h~ that the readout reads (also the width of the additive score's hidden layer)."""

    type: str
    size: int

    @property
    def text(self) -> str:
        return f"{self.type} attention {self.size}"


@dataclass(frozen=True)
class ModelSpec:
    pattern: str
    input: IOSpec
    target: IOSpec
    encoders: tuple[EncoderSpec, ...]
    layers: tuple[LayerSpec, ...]
    decoder_layers: tuple[LayerSpec, ...]
    feedback_encoders: tuple[EncoderSpec, ...]
    readout: str
    bos: int
    objective: str = ""  # `model.loss` as written; "" picks the target type's default
    attention: AttentionSpec | None = None  # encoder_decoder only
    decoders: tuple[DecoderSpec, ...] = ()  # per-step output decoders before the readout
    pool: str = "last"  # many_to_one: last, or mean / max of the top outputs over time

    @property
    def loss(self) -> str:
        if self.objective:
            return self.objective
        return "softmax_ce" if self.target.type == "ids" else "mse"

    @property
    def feeds_back(self) -> bool:
        return self.pattern in ("one_to_many", "encoder_decoder")

    @property
    def stack(self) -> str:
        """Input to target in one line: "ids 65 -> embedding 32 -> lstm 128 -> ids 65"; a
        decoder's layers follow "=> dec", feedback encoders are left out."""
        parts = [self.input.text] + [e.text for e in self.encoders]
        parts += [layer.text for layer in self.layers]
        if self.decoder_layers:
            decoder = [layer.text for layer in self.decoder_layers]
            decoder += [self.attention.text] if self.attention else []
            parts.append("=> dec " + " -> ".join(decoder))
        parts += [f"{self.pool} over time"] if self.pool != "last" else []
        parts += [d.text for d in self.decoders]
        readout = "" if self.readout == "linear" else f" ({self.readout} readout)"
        return " -> ".join(parts + [self.target.text]).replace("-> =>", "=>") + readout

    def __repr__(self) -> str:
        return f"ModelSpec({self.pattern}: {self.stack}; loss {self.loss})"


@dataclass(frozen=True)
class Spec:
    name: str
    model: ModelSpec
    cells: dict[str, CellSpec]
    backend: str
    dtype: str
    seed: int
    data: dict
    train: dict
    raw: dict = field(hash=False, repr=False)
    source: str = ""
    lines: dict = field(default_factory=dict, hash=False, repr=False)  # YAML path -> line

    def __repr__(self) -> str:
        # load_spec names a dict or YAML text "spec"; only a file is worth showing
        where = f", from {self.source}" if self.source not in ("", "spec") else ""
        return (
            f"Spec({self.name!r}: {self.model.pattern}, {self.model.stack}; "
            f"loss {self.model.loss}; "
            f"{self.backend} {self.dtype}, seed {self.seed}{where})"
        )


def _dims(shape: tuple) -> str:
    """(3, 32, 32) -> "3x32x32"; size expressions print as written."""
    return "x".join(map(str, shape))
