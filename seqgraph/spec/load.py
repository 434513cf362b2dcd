"""YAML -> frozen dataclasses: a schema pass (`schema`, `yaml_lines`), then semantic checks
of the cells (here) and of the model section (`spec.model`).

Every error is a `SpecError` naming the YAML path (`model.layers[1].hidden`), the line, what
was expected and, for unknown keys, the nearest valid key.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from seqgraph.errors import SpecError
from seqgraph.spec import equations, schema
from seqgraph.spec.model import build_model, encoded_size
from seqgraph.spec.types import (
    CellSpec,
    DecoderSpec,
    EncoderSpec,
    IOSpec,
    LayerSpec,
    ModelSpec,
    ParamSpec,
    Spec,
)
from seqgraph.spec.yaml_lines import MAX_YAML_BYTES, TOO_LARGE, read_yaml, validate, with_line

__all__ = [
    "CellSpec",
    "DecoderSpec",
    "EncoderSpec",
    "IOSpec",
    "LayerSpec",
    "ModelSpec",
    "ParamSpec",
    "Spec",
    "builtin_cells",
    "encoded_size",
    "load_spec",
    "parse_cell",
    "read_yaml",
]


PARAM_INIT = schema.CELL["properties"]["params"]["additionalProperties"]["properties"]["init"][
    "default"
]

# ---- cells -----------------------------------------------------------------------------------


def parse_cell(name: str, raw: dict, path: str, lines=None, source: str = "") -> CellSpec:
    """Validate one cell definition and lower its equations to steps."""
    lines = lines or {}
    try:
        if path == "":
            validate(raw, schema.CELL, lines, source)
        params = {}
        for pname, praw in raw["params"].items():
            params[pname] = ParamSpec(
                tuple(praw["shape"]), praw.get("init", dict(PARAM_INIT)), praw.get("fill")
            )
        inputs, state = tuple(raw["inputs"]), tuple(raw["state"])
        known = set(inputs) | set(state) | set(params)
        clash = (set(inputs) & set(state)) | ((set(inputs) | set(state)) & set(params))
        if clash:
            raise SpecError(
                path, f"name(s) {sorted(clash)} declared twice among inputs, state and params"
            )
        eq_path = f"{path}.equations" if path else "equations"
        steps, bindings = equations.lower(list(raw["equations"]), known, list(state), eq_path)
        _check_cell_bindings(name, raw, path, steps, bindings, params, state)
    except SpecError as exc:
        raise with_line(exc, lines, source) from None
    return CellSpec(
        name,
        inputs,
        state,
        raw["output"],
        dict(raw.get("options") or {}),
        params,
        tuple(raw["equations"]),
        tuple(steps),
        bindings,
        raw.get("doc", ""),
        raw.get("layer_norm_form", ""),
    )


def _check_cell_bindings(name, raw, path, steps, bindings, params, state) -> None:
    prefix = f"{path}." if path else ""
    if raw["output"] not in bindings:
        raise SpecError(
            f"{prefix}output",
            f"output {raw['output']!r} is not defined by the equations, inputs or state",
        )
    for var in state:
        if bindings[var] == var:
            raise SpecError(
                f"{prefix}equations",
                f"state {var!r} is never assigned; add an equation `{var} = ...`",
            )
    used = {i for s in steps for i in s.inputs if isinstance(i, str)}
    for pname in params:
        if pname not in used:
            raise SpecError(
                f"{prefix}params.{pname}",
                f"parameter {pname!r} of cell {name!r} is never used by the equations",
            )
    for pname, param in params.items():
        fill = param.fill
        if fill and fill["option"] not in (raw.get("options") or {}):
            raise SpecError(
                f"{prefix}params.{pname}.fill.option",
                f"unknown option {fill['option']!r}; declare it under options",
            )


@functools.cache
def builtin_cells() -> dict[str, CellSpec]:
    """The standard cells shipped as YAML inside the package (seqgraph/spec/cells/*.yaml)."""
    cells = {}
    for entry in resources.files("seqgraph.spec").joinpath("cells").iterdir():
        if entry.name.endswith(".yaml"):
            data, lines = read_yaml(entry.read_text(encoding="utf-8"), entry.name)
            cells[data["name"]] = parse_cell(data["name"], data, "", lines, entry.name)
    return cells


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
        raise SpecError(
            "", f"a spec is a YAML path, YAML text or a dict, not a {type(source).__name__}"
        )
    else:
        text = None
        if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source):
            path = Path(source)
            name = str(path)
            text = _read_spec_file(path, name)
        data, lines = read_yaml(text if text is not None else source, name)
    if not isinstance(data, dict):
        raise SpecError(
            "",
            f"a spec is a mapping with a `model:` section, got {_a(type(data).__name__)}",
            1,
            name,
        )
    validate(data, schema.validation_schema(), lines, name)
    try:
        cells = dict(builtin_cells())
        for cname, craw in (data.get("cells") or {}).items():
            cells[cname] = parse_cell(cname, craw, f"cells.{cname}", lines, name)
        sizes = auto(data) if callable(auto) else (auto or {})
        model = build_model(data["model"], cells, sizes)
    except SpecError as exc:
        raise with_line(exc, lines, name) from None
    return Spec(
        data.get("name", Path(name).stem),
        model,
        cells,
        data.get("backend", schema.default("backend")),
        data.get("dtype", schema.default("dtype")),
        data.get("seed", schema.default("seed")),
        dict(data.get("data") or {}),
        dict(data.get("train") or {}),
        data,
        name,
        lines,
    )


def _read_spec_file(path: Path, name: str) -> bytes:
    """The bytes of a spec file, at most MAX_YAML_BYTES of them (not /dev/zero's all)."""
    if path.is_dir():
        raise SpecError(
            "",
            "is a folder; give a YAML spec file (a run folder keeps its spec in spec.yaml)",
            source=name,
        )
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("", "file not found; check the path", source=name) from None
    except OSError as exc:
        raise SpecError("", f"cannot read: {exc.strerror}", source=name) from None
    if len(text) > MAX_YAML_BYTES:
        raise SpecError("", TOO_LARGE, source=name)
    return text


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
