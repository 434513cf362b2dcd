"""The search space of a sweep: a YAML file that maps spec paths to ranges, checked like a
spec (one line naming the file, the line and the fix).

    train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    model.layers[0].hidden: {choice: [32, 48, 64]}
    train.batch_size: {int: [16, 64]}
    model.encoders[0].size: {uniform: [16, 64]}   # a float; `int` for whole numbers

A path is the spec's own YAML path (as errors print it); a missing last key (or section) is
added, a list index must exist in the spec.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqgraph.errors import SpecError
from seqgraph.spec.load import load_spec
from seqgraph.spec.yaml_lines import read_yaml, validate

_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
KINDS = {
    "uniform": _PAIR,
    "log_uniform": _PAIR,
    "int": {**_PAIR, "items": {"type": "integer"}},
    "choice": {"type": "array", "minItems": 1},
}
SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": KINDS,
    },
}
_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
PLACEHOLDER_VOCAB = 100  # sizes `vocab: auto` when a sampled spec is only checked


@dataclass(frozen=True)
class Param:
    """One searched spec value: its path, how it is drawn and the arguments."""

    path: str
    kind: str
    args: list
    line: int | None

    def suggest(self, trial) -> Any:
        """Draw this value for an Optuna trial (TPE samples it by name, the path)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, self.args)
        low, high = self.args
        if self.kind == "int":
            return trial.suggest_int(self.path, low, high)
        return trial.suggest_float(self.path, low, high, log=self.kind == "log_uniform")

    def holds(self, value) -> bool:
        """Whether `value` (the hand-set spec's) is one this parameter can draw."""
        if self.kind == "choice":
            return value in self.args
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.args[0] <= value <= self.args[1]


def parts(path: str) -> list:
    """`model.layers[0].hidden` -> ['model', 'layers', 0, 'hidden']; ValueError if malformed."""
    out, at = [], 0
    for match in _PART.finditer(path):
        gap = path[at : match.start()]
        if gap not in ("", ".") or (gap == "" and at and match.group(1)):
            raise ValueError(path)
        out.append(match.group(1) if match.group(1) else int(match.group(2)))
        at = match.end()
    if at != len(path) or not out or not isinstance(out[0], str):
        raise ValueError(path)
    return out


def get(raw: dict, path: str, default=None):
    """The value at `path` in a spec dict, or `default` where a key or index is missing."""
    node = raw
    for part in parts(path):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return default
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return default
    return node


def apply(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of spec dict `raw` with each path set to its value (missing keys added);
    KeyError(path) where a list index is not in the spec or a value is not a mapping."""
    out = copy.deepcopy(raw)
    for path, value in values.items():
        node, steps = out, parts(path)
        for part, following in zip(steps, steps[1:]):
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise KeyError(path)
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise KeyError(path)
                node = node.setdefault(part, [] if isinstance(following, int) else {})
        last = steps[-1]
        if isinstance(last, int) and (not isinstance(node, list) or last >= len(node)):
            raise KeyError(path)
        if isinstance(last, str) and not isinstance(node, dict):
            raise KeyError(path)
        node[last] = value
    return out


def read_space(path: str | os.PathLike, spec_raw: dict) -> list[Param]:
    """The parameters of a space file, checked against the schema, for sane ranges and
    against the spec (each path settable, the spec valid at each range's ends)."""
    path = Path(path)
    source = str(path)
    try:
        data, lines = read_yaml(path.read_bytes(), source)
    except FileNotFoundError:
        raise SpecError("", "no such file; pass --space SPACE.yaml", source=source) from None
    validate(data, SCHEMA, lines, source)
    params = []
    for key, entry in data.items():
        ((kind, args),) = entry.items()
        param = Param(key, kind, list(args), lines.get(key))
        _check_param(param, spec_raw, source)
        params.append(param)
    return params


def _check_param(param: Param, spec_raw: dict, source: str) -> None:
    def fail(message: str):
        raise SpecError(param.path, message, param.line, source)

    try:
        parts(param.path)
    except ValueError:
        fail("not a spec path; write it as errors print them, e.g. model.layers[0].hidden")
    if param.kind != "choice":
        low, high = param.args
        if not low < high:
            fail(f"{param.kind}: [{low}, {high}] is empty; write [low, high] with low < high")
        if param.kind == "log_uniform" and low <= 0:
            fail(f"log_uniform needs a positive low end, got {low}; use uniform for 0")
    ends = param.args if param.kind == "choice" else param.args[:2]
    for value in ends:
        try:
            sampled = apply(spec_raw, {param.path: value})
        except KeyError:
            fail("the spec has no such place (a list index beyond its items?); check the path")
        try:
            auto = {"input": PLACEHOLDER_VOCAB, "target": PLACEHOLDER_VOCAB}
            load_spec(sampled, auto=auto)
        except SpecError as exc:
            fail(f"the spec is invalid with {value!r} there ({exc.path}: {exc.message})")
