"""The checked spec as frozen dataclasses: what `load_spec` returns and the compiler reads."""

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


@dataclass(frozen=True)
class EncoderSpec:
    type: str
    size: int | None = None  # output features (channels for conv)
    activation: str = "identity"
    kernel: int = 3  # conv only
    pool: int = 2  # conv only: max-pool window after the convolution


@dataclass(frozen=True)
class LayerSpec:
    cell: str
    hidden: int
    bidirectional: bool = False
    merge: str = "concat"
    init_state: str = "zeros"
    options: dict = field(default_factory=dict, hash=False)

    @property
    def out_size(self) -> int:
        return self.hidden * 2 if self.bidirectional and self.merge == "concat" else self.hidden


@dataclass(frozen=True)
class IOSpec:
    type: str  # "ids", "vectors" or "images"
    size: int  # vocabulary size for ids, feature size for vectors, C*H*W for images
    shape: tuple = ()  # (C, H, W) for images


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

    @property
    def loss(self) -> str:
        if self.objective:
            return self.objective
        return "softmax_ce" if self.target.type == "ids" else "mse"

    @property
    def feeds_back(self) -> bool:
        return self.pattern in ("one_to_many", "encoder_decoder")


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
