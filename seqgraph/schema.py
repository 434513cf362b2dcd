"""The JSON Schema of a spec: the one source of truth for its shape.

The loader validates every spec against it, `seqgraph schema` prints it, and an editor's YAML
language server can use it to check and complete specs while they are typed.
"""

from __future__ import annotations

import copy

PATTERNS = ["one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder"]
ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity"]
INITS = ["uniform", "normal", "zeros", "ones", "xavier", "orthogonal"]

_size = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
_size_expr = {
    "oneOf": [_size, {"type": "string", "minLength": 1, "maxLength": 200}],
    "description": "a whole number or a size expression such as 4*hidden",
}
_name_list = {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"}}

_init = {
    "type": "object",
    "additionalProperties": False,
    "required": ["dist"],
    "properties": {
        "dist": {"enum": INITS},
        "scale": {"oneOf": [{"type": "number"}, {"type": "string"}]},
    },
    "description": "uniform: U(-scale, scale); normal: N(0, scale^2); xavier: Glorot uniform",
}

_param = {
    "type": "object",
    "additionalProperties": False,
    "required": ["shape"],
    "properties": {
        "shape": {"type": "array", "items": _size_expr, "minItems": 1, "maxItems": 4},
        "init": _init,
        "fill": {
            "type": "object",
            "additionalProperties": False,
            "required": ["parts", "index", "option"],
            "properties": {
                "parts": _size,
                "index": {"type": "integer", "minimum": 0},
                "option": {"type": "string"},
                "value": {"type": "number"},
            },
            "description": "when the option is set, fill one of `parts` equal slices with it",
        },
    },
}

CELL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["inputs", "state", "output", "params", "equations"],
    "properties": {
        "name": {"type": "string"},
        "doc": {"type": "string"},
        "inputs": {**_name_list, "minItems": 1, "maxItems": 1},
        "state": {**_name_list, "minItems": 1},
        "output": {"type": "string"},
        "options": {"type": "object"},
        "params": {"type": "object", "additionalProperties": _param},
        "equations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}

_encoder = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["embedding", "onehot", "dense"]},
        "size": _size,
        "activation": {"enum": ACTIVATIONS},
    },
}

_layer = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cell", "hidden"],
    "properties": {
        "cell": {"type": "string"},
        "hidden": _size,
        "bidirectional": {"type": "boolean"},
        "merge": {"enum": ["concat", "sum"]},
        "init_state": {"enum": ["zeros", "learned"]},
        "options": {"type": "object"},
    },
}

_io = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["ids", "vectors"]},
        "vocab": _size,
        "size": _size,
    },
    "description": "ids: integer tokens/classes (give vocab); vectors: floats (give size)",
}

MODEL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["pattern", "input", "target", "layers"],
    "properties": {
        "pattern": {"enum": PATTERNS},
        "input": _io,
        "target": _io,
        "encoders": {"type": "array", "items": _encoder},
        "layers": {"type": "array", "items": _layer, "minItems": 1, "maxItems": 64},
        "decoder_layers": {"type": "array", "items": _layer, "minItems": 1, "maxItems": 64},
        "feedback_encoders": {"type": "array", "items": _encoder},
        "readout": {"enum": ["linear", "identity"]},
        "bos": {"type": "integer", "minimum": 0},
    },
}

SPEC = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "seqgraph spec",
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "backend": {"enum": ["numpy", "cupy", "strict"]},
        "dtype": {"enum": ["float32", "float64"]},
        "seed": {"type": "integer", "minimum": 0},
        "cells": {"type": "object", "additionalProperties": CELL},
        "model": MODEL,
        "data": {"type": "object"},
        "train": {"type": "object"},
    },
}


def spec_schema() -> dict:
    """A copy of the spec's JSON Schema (safe to modify)."""
    return copy.deepcopy(SPEC)
