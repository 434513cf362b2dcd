"""YAML -> frozen dataclasses: a schema pass (`schema.py`), then semantic checks.

Every error is a `SpecError` naming the YAML path (`model.layers[1].hidden`), the line, what
was expected and, for unknown keys, the nearest valid key.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import equations, schema
from .errors import SpecError

MAX_YAML_NODES = 200_000  # refuses billion-laughs style alias bombs before they expand
MAX_YAML_DEPTH = 60
PLAIN_TAGS = (yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
              yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG)


# ---- dataclasses -----------------------------------------------------------------------------


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

    @property
    def loss(self) -> str:
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


# ---- YAML with line numbers ------------------------------------------------------------------


def read_yaml(text: str | bytes, source: str = "spec") -> tuple[Any, dict[str, int]]:
    """Parse YAML safely; returns (data, {yaml path: line}). Python tags and alias bombs fail."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            raise SpecError("", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8",
                            line, source) from None
    if not text.strip():
        raise SpecError("", "the file is empty; a spec needs at least a `model:` section",
                        source=source)
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError("", "the file holds no YAML document", source=source)
        lines: dict[str, int] = {}
        data = _convert(loader, node, "", lines, [0], 0, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        bad = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = "; indent with spaces, not tabs" if "\t" in bad else ""
        raise SpecError("", f"invalid YAML: {problem}{hint}", line, source) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _convert(loader, node, path, lines, count, depth, source):
    count[0] += 1
    if count[0] > MAX_YAML_NODES:
        raise SpecError(path, f"more than {MAX_YAML_NODES} YAML nodes (alias bomb?)",
                        source=source)
    if depth > MAX_YAML_DEPTH:
        raise SpecError(path, f"nested deeper than {MAX_YAML_DEPTH} levels", source=source)
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in PLAIN_TAGS:
        raise SpecError(path, f"the tag {node.tag} is not allowed; specs hold plain data only",
                        node.start_mark.line + 1, source)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(path, "mapping keys must be plain words",
                                key_node.start_mark.line + 1, source)
            key = str(loader.construct_object(key_node))
            child = f"{path}.{key}" if path else key
            if key in out:  # PyYAML would silently keep the last one
                raise SpecError(child, f"duplicate key {key!r}; it is already set on line "
                                f"{lines[child]}", key_node.start_mark.line + 1, source)
            lines[child] = key_node.start_mark.line + 1  # errors about a key point at the key
            out[key] = _convert(loader, value_node, child, lines, count, depth + 1, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(loader, item, f"{path}[{i}]", lines, count, depth + 1, source)
            for i, item in enumerate(node.value)
        ]
    try:
        return loader.construct_object(node)
    except yaml.constructor.ConstructorError:
        raise SpecError(path, f"the tag {node.tag} is not allowed; specs hold plain data only",
                        node.start_mark.line + 1, source) from None


# ---- schema pass -----------------------------------------------------------------------------


def _path_of(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(error: jsonschema.ValidationError, lines, source) -> SpecError:
    path = _path_of(error.absolute_path)
    line = lines.get(path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra and allowed:
            key = extra[0]
            child = f"{path}.{key}" if path else key
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(allowed)}"
            return SpecError(child, f"unknown key {key!r}; {hint}", lines.get(child, line), source)
    if error.validator == "required":
        return SpecError(path, f"missing required key: {error.message.split(' ')[0]}", line, source)
    if error.validator == "enum":
        options = ", ".join(map(str, error.validator_value))
        return SpecError(path, f"got {error.instance!r}; expected one of: {options}", line, source)
    if error.validator == "type":
        return SpecError(path, f"got {error.instance!r}; expected {error.validator_value}", line,
                         source)
    return SpecError(path, error.message, line, source)


def _validate(data, schema_dict, lines, source) -> None:
    validator = jsonschema.Draft202012Validator(schema_dict)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise _schema_error(error, lines, source)


# ---- cells -----------------------------------------------------------------------------------


def parse_cell(name: str, raw: dict, path: str, lines=None, source: str = "") -> CellSpec:
    """Validate one cell definition and lower its equations to steps."""
    lines = lines or {}
    try:
        if path == "":
            _validate(raw, schema.CELL, lines, source)
        params = {}
        for pname, praw in raw["params"].items():
            params[pname] = ParamSpec(tuple(praw["shape"]), praw.get("init", {"dist": "zeros"}),
                                      praw.get("fill"))
        inputs, state = tuple(raw["inputs"]), tuple(raw["state"])
        known = set(inputs) | set(state) | set(params)
        clash = (set(inputs) & set(state)) | ((set(inputs) | set(state)) & set(params))
        if clash:
            raise SpecError(path, f"name(s) {sorted(clash)} declared twice among inputs, state "
                                  "and params")
        eq_path = f"{path}.equations" if path else "equations"
        steps, bindings = equations.lower(list(raw["equations"]), known, list(state), eq_path)
        _check_cell_bindings(name, raw, path, steps, bindings, params, state)
    except SpecError as exc:
        raise _with_line(exc, lines, source) from None
    return CellSpec(name, inputs, state, raw["output"], dict(raw.get("options") or {}), params,
                    tuple(raw["equations"]), tuple(steps), bindings, raw.get("doc", ""))


def _check_cell_bindings(name, raw, path, steps, bindings, params, state) -> None:
    prefix = f"{path}." if path else ""
    if raw["output"] not in bindings:
        raise SpecError(f"{prefix}output", f"output {raw['output']!r} is not defined by the "
                                           "equations, inputs or state")
    for var in state:
        if bindings[var] == var:
            raise SpecError(f"{prefix}equations", f"state {var!r} is never assigned; add an "
                                                  f"equation `{var} = ...`")
    used = {i for s in steps for i in s.inputs if isinstance(i, str)}
    for pname in params:
        if pname not in used:
            raise SpecError(f"{prefix}params.{pname}", f"parameter {pname!r} of cell {name!r} is "
                                                       "never used by the equations")
    for pname, param in params.items():
        fill = param.fill
        if fill and fill["option"] not in (raw.get("options") or {}):
            raise SpecError(f"{prefix}params.{pname}.fill.option",
                            f"unknown option {fill['option']!r}; declare it under options")


@functools.cache
def builtin_cells() -> dict[str, CellSpec]:
    """The standard cells shipped as YAML inside the package (seqgraph/cells/*.yaml)."""
    cells = {}
    for entry in resources.files("seqgraph").joinpath("cells").iterdir():
        if entry.name.endswith(".yaml"):
            data, lines = read_yaml(entry.read_text(encoding="utf-8"), entry.name)
            cells[data["name"]] = parse_cell(data["name"], data, "", lines, entry.name)
    return cells


def _with_line(exc: SpecError, lines, source) -> SpecError:
    """Fill in the line of the nearest enclosing YAML path that has one."""
    if exc.line is not None and exc.source:
        return exc
    path, line = exc.path, exc.line
    while line is None and path:
        line = lines.get(path)
        parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        path = parent if parent != path else ""
    return SpecError(exc.path, exc.message, line, exc.source or source)


# ---- model section ---------------------------------------------------------------------------


def _io(raw: dict, path: str, auto: int | None) -> IOSpec:
    if raw["type"] == "images":
        if "shape" not in raw:
            raise SpecError(path, "images need `shape: [channels, height, width]`")
        channels, height, width = raw["shape"]
        return IOSpec("images", channels * height * width, tuple(raw["shape"]))
    key = "vocab" if raw["type"] == "ids" else "size"
    if key not in raw:
        raise SpecError(path, f"{raw['type']} needs `{key}`: e.g. {{type: {raw['type']}, {key}: 10}}")
    if raw[key] == "auto":
        if auto is None:
            raise SpecError(f"{path}.vocab", "vocab: auto is taken from the data, which was not "
                                             "loaded here; give a number or use `seqgraph run`")
        return IOSpec(raw["type"], auto)
    return IOSpec(raw["type"], raw[key])


def _encoders(items: list, io: IOSpec, path: str) -> tuple[EncoderSpec, ...]:
    out = []
    for i, raw in enumerate(items):
        here = f"{path}[{i}]"
        kind = raw["type"]
        if kind in ("embedding", "onehot") and (i > 0 or io.type != "ids"):
            raise SpecError(f"{here}.type", f"{kind} turns integer ids into vectors, so it must "
                                            "come first and the input must be `type: ids`")
        if kind in ("embedding", "dense") and "size" not in raw:
            raise SpecError(here, f"a {kind} encoder needs `size`")
        if kind == "conv":
            if io.type != "images" or any(e.type != "conv" for e in out):
                raise SpecError(f"{here}.type", "conv encoders read image frames: the input "
                                "must be `type: images` and convs come before other encoders")
            if "channels" not in raw:
                raise SpecError(here, "a conv encoder needs `channels`")
            out.append(EncoderSpec(kind, raw["channels"], raw.get("activation", "relu"),
                                   raw.get("kernel", 3), raw.get("pool", 2)))
            _image_shapes(tuple(out), io, here)
            continue
        out.append(EncoderSpec(kind, raw.get("size"), raw.get("activation", "identity")))
    if io.type == "ids" and (not out or out[0].type not in ("embedding", "onehot")):
        raise SpecError(path, "integer ids must first pass an `embedding` or `onehot` encoder: "
                              "add `- {type: embedding, size: 32}`")
    return tuple(out)


def _image_shapes(encoders: tuple[EncoderSpec, ...], io: IOSpec, path: str = "") -> list:
    """(C, H, W) after each conv encoder; each must keep H and W divisible by its pool."""
    shape, out = io.shape, []
    for enc in encoders:
        if enc.type != "conv":
            break
        _, height, width = shape
        if enc.kernel % 2 == 0 or height % enc.pool or width % enc.pool:
            raise SpecError(path, f"kernel must be odd and pool ({enc.pool}) must divide the "
                                  f"{height}x{width} frames it pools")
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
        cell = cells[raw["cell"]]
        for key in raw.get("options") or {}:
            if key not in cell.options:
                raise SpecError(f"{here}.options.{key}", f"cell {cell.name!r} has no option "
                                f"{key!r}; its options: {', '.join(cell.options) or 'none'}")
        out.append(LayerSpec(raw["cell"], raw["hidden"], raw.get("bidirectional", False),
                             raw.get("merge", "concat"), raw.get("init_state", "zeros"),
                             {**cell.options, **(raw.get("options") or {})}))
    return tuple(out)


def _model(raw: dict, cells: dict, auto: dict) -> ModelSpec:
    pattern = raw["pattern"]
    inp = _io(raw["input"], "model.input", auto.get("input"))
    target = _io(raw["target"], "model.target", auto.get("target"))
    layers = _layers(raw["layers"], cells, "model.layers")
    feeds_back = pattern in ("one_to_many", "encoder_decoder")
    encoders = _encoders(raw.get("encoders", []), inp, "model.encoders")
    feedback = ()
    if feeds_back:
        default = [{"type": "embedding", "size": layers[0].hidden}] if target.type == "ids" else []
        feedback = _encoders(raw.get("feedback_encoders", default), target,
                             "model.feedback_encoders")
    elif "feedback_encoders" in raw:
        raise SpecError("model.feedback_encoders", f"only one_to_many and encoder_decoder feed "
                                                   f"outputs back, not {pattern}")
    decoder = ()
    if pattern == "encoder_decoder":
        default = [{**layer, "bidirectional": False} for layer in raw["layers"]]
        decoder = _layers(raw.get("decoder_layers", default), cells, "model.decoder_layers")
        _check_bridge(layers, decoder, cells)
    elif "decoder_layers" in raw:
        raise SpecError("model.decoder_layers", "decoder_layers belong to encoder_decoder only")
    causal = decoder if pattern == "encoder_decoder" else layers if feeds_back else ()
    for i, layer in enumerate(causal):
        if layer.bidirectional:
            where = "decoder_layers" if pattern == "encoder_decoder" else "layers"
            raise SpecError(f"model.{where}[{i}].bidirectional", "a layer that feeds its output "
                            "back cannot see the future; set bidirectional: false")
    readout = raw.get("readout", "linear")
    top = (decoder or layers)[-1].out_size
    if readout == "identity" and (target.type != "vectors" or target.size != top):
        raise SpecError("model.readout", f"identity readout needs vector targets of size {top} "
                                         "(the top layer's output); use readout: linear")
    bos = raw.get("bos", 0)
    if feeds_back and target.type == "ids" and bos >= target.size:
        raise SpecError("model.bos", f"bos id {bos} is outside the target vocab ({target.size})")
    return ModelSpec(pattern, inp, target, encoders, layers, decoder, feedback, readout, bos)


def _check_bridge(encoder: tuple, decoder: tuple, cells: dict) -> None:
    """The encoder's final state starts the decoder, so their layers must line up."""
    if len(encoder) != len(decoder):
        raise SpecError("model.decoder_layers", f"{len(decoder)} decoder layers but "
                        f"{len(encoder)} encoder layers; their final states are passed one to one")
    for i, (enc, dec) in enumerate(zip(encoder, decoder)):
        if cells[enc.cell].state != cells[dec.cell].state:
            raise SpecError(f"model.decoder_layers[{i}].cell", f"decoder cell {dec.cell!r} has "
                            f"state {cells[dec.cell].state}, encoder cell {enc.cell!r} "
                            f"{cells[enc.cell].state}; use cells with the same state")
        if dec.hidden != enc.out_size:
            raise SpecError(f"model.decoder_layers[{i}].hidden", f"must be {enc.out_size} to take "
                            "the encoder layer's final state")


# ---- entry point -----------------------------------------------------------------------------


def load_spec(source: str | os.PathLike | dict | bytes, auto=None) -> Spec:
    """Read and check a spec from a YAML path, YAML text (str with a newline, or bytes) or a
    dict; raises SpecError.

    `auto` gives the sizes that `vocab: auto` stands for, {"input": n, "target": m}, or is a
    function of the validated spec dict that returns them (e.g. by loading its data).
    """
    name = "spec"
    if isinstance(source, dict):
        data, lines = source, {}
    elif isinstance(source, bytes):
        data, lines = read_yaml(source, name)
    elif not isinstance(source, (str, os.PathLike)):
        raise SpecError("", f"a spec is a YAML path, YAML text or a dict, not a "
                            f"{type(source).__name__}")
    else:
        text = None
        if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source):
            path = Path(source)
            name = str(path)
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                raise SpecError("", "file not found; check the path", source=name) from None
            except OSError as exc:
                raise SpecError("", f"cannot read: {exc.strerror}", source=name) from None
        data, lines = read_yaml(text if text is not None else source, name)
    if not isinstance(data, dict):
        raise SpecError("", f"a spec is a mapping with a `model:` section, got a "
                            f"{type(data).__name__}", 1, name)
    _validate(data, schema.SPEC, lines, name)
    try:
        cells = dict(builtin_cells())
        for cname, craw in (data.get("cells") or {}).items():
            cells[cname] = parse_cell(cname, craw, f"cells.{cname}", lines, name)
        sizes = auto(data) if callable(auto) else (auto or {})
        model = _model(data["model"], cells, sizes)
    except SpecError as exc:
        raise _with_line(exc, lines, name) from None
    return Spec(data.get("name", Path(name).stem), model, cells, data.get("backend", "numpy"),
                data.get("dtype", "float32"), data.get("seed", 0), dict(data.get("data") or {}),
                dict(data.get("train") or {}), data, name, lines)
