"""YAML with line numbers, and the schema pass: the first half of loading a spec.

YAML is read with the safe loader only; Python tags, alias bombs (more than `MAX_YAML_NODES`
nodes once aliases are expanded) and nesting deeper than `MAX_YAML_DEPTH` levels are refused.
PyYAML's composer recurses once per level, so the depth is checked as each node is composed,
before a 10,000-level document can exhaust Python's stack. Every error is a `SpecError`
carrying the YAML path and line.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import jsonschema
import yaml

from seqgraph.errors import SpecError

MAX_YAML_BYTES = 10_000_000  # a spec is a few kB; /dev/zero is not one
TOO_LARGE = f"larger than {MAX_YAML_BYTES // 10**6} MB; a spec is a small text file"
MAX_YAML_NODES = 200_000  # refuses billion-laughs style alias bombs before they expand
MAX_YAML_DEPTH = 60  # levels of mappings and lists; a real spec uses fewer than 10
PLAIN_TAGS = (
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
)


def _short(path: str, keep: int = 40) -> str:
    """A YAML path 60 levels deep, cut to its start: `description[0][0][0]...`."""
    return path if len(path) <= keep else path[:keep] + "..."


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a document nested deeper than MAX_YAML_DEPTH while composing
    it (PyYAML's composer recurses once per level)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.path: list[str] = []  # the YAML path of the node being composed

    def compose_node(self, parent, index):
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            part = f".{index.value}" if any(self.path) else str(index.value)
        elif isinstance(parent, yaml.SequenceNode) and isinstance(index, int):
            part = f"[{index}]"
        else:
            part = ""  # a mapping key, or the document itself
        self.path.append(part)
        try:
            if len(self.path) > MAX_YAML_DEPTH:  # the document's root is level 1
                raise SpecError(
                    _short("".join(self.path)),
                    f"nested deeper than {MAX_YAML_DEPTH} levels; a spec needs far fewer",
                    self.peek_event().start_mark.line + 1,
                    self.source,
                )
            return super().compose_node(parent, index)
        finally:
            self.path.pop()


def read_yaml(text: str | bytes, source: str = "spec") -> tuple[Any, dict[str, int]]:
    """Parse YAML safely; returns (data, {yaml path: line}). Python tags and alias bombs fail."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            raise SpecError(
                "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8", line, source
            ) from None
    if len(text) > MAX_YAML_BYTES:
        raise SpecError("", TOO_LARGE, source=source)
    if not text.strip():
        raise SpecError(
            "", "the file is empty; a spec needs at least a `model:` section", source=source
        )
    loader = None
    try:
        loader = _Loader(text, source)
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
        raise SpecError(path, f"more than {MAX_YAML_NODES} YAML nodes (alias bomb?)", source=source)
    if depth > MAX_YAML_DEPTH:
        raise SpecError(
            _short(path),
            f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded (an alias "
            "inside its own anchor?)",
            node.start_mark.line + 1,
            source,
        )
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in PLAIN_TAGS:
        raise SpecError(
            path,
            f"the tag {node.tag} is not allowed; specs hold plain data only",
            node.start_mark.line + 1,
            source,
        )
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    path, "mapping keys must be plain words", key_node.start_mark.line + 1, source
                )
            key = str(loader.construct_object(key_node))
            child = f"{path}.{key}" if path else key
            if key in out:  # PyYAML would silently keep the last one
                raise SpecError(
                    child,
                    f"duplicate key {key!r}; it is already set on line {lines[child]}",
                    key_node.start_mark.line + 1,
                    source,
                )
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
        raise SpecError(
            path,
            f"the tag {node.tag} is not allowed; specs hold plain data only",
            node.start_mark.line + 1,
            source,
        ) from None


# ---- schema pass -----------------------------------------------------------------------------


def _path_of(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# JSON Schema counts 1.0 as an integer; a size, a count or a step written 1.0 would then pass
# the schema and fail later with a TypeError deep in the engine (found by the fuzz test), so
# "integer" here means a whole number written without a fraction.
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


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
            owner = error.schema.get("title")  # a data source: name it and all its keys
            if owner:
                hint = f"it takes {', '.join(allowed)}" + (
                    f"; did you mean {near[0]!r}?" if near else ""
                )
                return SpecError(
                    child,
                    f"unknown key {key!r} for {owner}; {hint}",
                    lines.get(child, line),
                    source,
                )
            return SpecError(child, f"unknown key {key!r}; {hint}", lines.get(child, line), source)
    if error.validator == "required":
        return SpecError(path, f"missing required key: {error.message.split(' ')[0]}", line, source)
    if error.validator == "enum":
        options = ", ".join(map(str, error.validator_value))
        return SpecError(path, f"got {error.instance!r}; expected one of: {options}", line, source)
    if error.validator == "type":
        message = f"got {error.instance!r}; expected {error.validator_value}"
        if error.schema.get("examples"):  # a section with one form: show it
            message += f"; write it as {_flow(error.schema['examples'][0])}"
        return SpecError(path, message, line, source)
    bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    if error.validator in bounds and "description" in error.schema:  # what the range means
        return SpecError(path, f"{error.message}; {error.schema['description']}", line, source)
    return SpecError(path, error.message, line, source)


def _flow(value) -> str:
    """`value` as one line of YAML flow style: `{decay: 0.999}`."""
    return yaml.safe_dump(value, default_flow_style=True).strip()


def validate(data, schema_dict, lines, source) -> None:
    validator = StrictValidator(schema_dict)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise _schema_error(error, lines, source)


def with_line(exc: SpecError, lines, source) -> SpecError:
    """Fill in the line of the nearest enclosing YAML path that has one."""
    if exc.line is not None and exc.source:
        return exc
    path, line = exc.path, exc.line
    while line is None and path:
        line = lines.get(path)
        parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        path = parent if parent != path else ""
    return SpecError(exc.path, exc.message, line, exc.source or source)
