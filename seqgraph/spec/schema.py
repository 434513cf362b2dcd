"""The JSON Schema of a spec: the one source of truth for its shape.

The loader validates every spec against it, `seqgraph schema` prints it, and an editor's YAML
language server can use it to check and complete specs while they are typed. A key the code
fills in when a spec leaves it out carries that value as its `default`; `default(...)` reads
it, for the code that applies it (tests check the rest of the code agrees). The `data`
section is not written here: each data source registered in `registry` (the core formats and
every application) brings the schema of its own options, and `data_schema` joins them.
"""

from __future__ import annotations

import copy

from seqgraph.spec import registry

PATTERNS = ["one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder"]
ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity"]
INITS = ["uniform", "normal", "zeros", "ones", "xavier", "orthogonal"]

_size = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
_image_shape = {"type": "array", "items": _size, "minItems": 3, "maxItems": 3}
_size_expr = {
    "oneOf": [_size, {"type": "string", "minLength": 1, "maxLength": 200}],
    "description": "a whole number or a size expression such as 4*hidden",
}
_option = {"type": ["number", "boolean", "string", "null"]}
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
        "init": {**_init, "default": {"dist": "zeros"}},
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
        "options": {"type": "object", "additionalProperties": _option},
        "layer_norm_form": {
            "type": "string",
            "description": "the cell a layer with `layer_norm: true` runs instead of this one",
        },
        "params": {"type": "object", "additionalProperties": _param},
        "equations": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}

_dropout = {
    "type": "number",
    "minimum": 0,
    "exclusiveMaximum": 1,
    "default": 0,
    "description": "must be in [0, 1): the probability of dropping each unit in training (0: none)",
}

_encoder = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["embedding", "onehot", "dense", "conv"]},
        "size": _size,
        "activation": {
            "enum": ACTIVATIONS,
            "description": "default: relu for conv, identity for the others",
        },
        "channels": _size,
        "kernel": {"type": "integer", "minimum": 1, "maximum": 15, "default": 3},
        "pool": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
        "dropout": _dropout,  # on the encoder's output, a fresh mask each step
        "word_dropout": {
            **_dropout,
            "description": "must be in [0, 1): embedding and onehot encoders only; the "
            "probability of dropping each token's whole vector in training (0: none)",
        },
    },
}

_decoder = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {
            "enum": ["dense", "deconv", "upsample"],
            "description": "dense: W h + b; deconv: transposed convolution (stride `stride`); "
            "upsample: nearest upsampling by `stride`, then a same-size convolution",
        },
        "size": _size,
        "shape": {
            **_image_shape,
            "description": "dense only, instead of size: its output seen as an image "
            "[channels, height, width] for the deconv/upsample decoders after it",
        },
        "channels": _size,
        "activation": {"enum": ACTIVATIONS, "default": "identity"},
        "kernel": {"type": "integer", "minimum": 1, "maximum": 15},
        "stride": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
    },
}

_layer = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cell", "hidden"],
    "properties": {
        "cell": {"type": "string"},
        "hidden": _size,
        "bidirectional": {"type": "boolean", "default": False},
        "direction": {
            "enum": ["forward", "reverse"],
            "default": "forward",
            "description": "reverse: a one-direction layer that reads the sequence from its "
            "end (ONNX direction=reverse, Keras go_backwards=True)",
        },
        "merge": {"enum": ["concat", "sum"], "default": "concat"},
        "init_state": {"enum": ["zeros", "learned"], "default": "zeros"},
        "layer_norm": {
            "type": "boolean",
            "default": False,
            "description": "run the cell's layer-normalised form (Ba et al. 2016): rnn, gru "
            "and lstm have one; a user cell writes layer_norm(...) in its equations instead",
        },
        "options": {"type": "object", "additionalProperties": _option},
        # on the layer's outputs (to the next layer or the readout), a fresh mask each step
        "dropout": _dropout,
        # variational, on h_{t-1} where the gates read it: one mask per sequence, reused at
        # every step (cells whose equations read `recurrent_dropout`)
        "recurrent_dropout": _dropout,
    },
}

_io = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["ids", "vectors", "images"]},
        "vocab": {"oneOf": [_size, {"const": "auto"}]},
        "size": _size,
        "shape": {**_image_shape, "description": "images: [channels, height, width]"},
    },
    "description": "ids: integer tokens/classes (give vocab, or auto to take it from the "
    "data); vectors: floats (give size)",
}

MODEL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["pattern", "input", "target", "layers"],
    "properties": {
        "pattern": {"enum": PATTERNS},
        "input": _io,
        "target": _io,
        "encoders": {"type": "array", "items": _encoder, "default": []},
        "layers": {"type": "array", "items": _layer, "minItems": 1, "maxItems": 64},
        "decoder_layers": {"type": "array", "items": _layer, "minItems": 1, "maxItems": 64},
        "feedback_encoders": {"type": "array", "items": _encoder},
        "decoders": {
            "type": "array",
            "items": _decoder,
            "default": [],
            "description": "per-step output decoders between the top layer (or attentional "
            "state) and the readout, weights shared over time; ending in deconv/upsample, the "
            "last one writes the target itself (identity readout)",
        },
        "readout": {"enum": ["linear", "identity"], "default": "linear"},
        "pool": {
            "enum": ["last", "mean", "max"],
            "default": "last",
            "description": "many_to_one: what the readout reads of the top layer's outputs "
            "(both directions of a bidirectional one), over each sequence's real steps: "
            "last (the state after the last real step; a reverse direction's after its "
            "first), mean or max over time (Ludwig's reduce_output; Keras' "
            "return_sequences=True then GlobalAveragePooling1D / GlobalMaxPooling1D)",
        },
        "loss": {
            "enum": ["softmax_ce", "mse", "ctc"],
            "description": "default: softmax_ce for ids targets, mse for vectors; ctc: "
            "many_to_many, targets are unaligned label sequences (y_lengths), blank = id 0",
        },
        "bos": {"type": "integer", "minimum": 0, "default": 0},
        "attention": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "size"],
            "properties": {"type": {"enum": ["additive", "dot", "general"]}, "size": _size},
            "description": "encoder_decoder: global attention of Luong, Pham & Manning "
            "(2015) over the encoder's top-layer outputs, masked to each source's length; "
            "scores additive (their concat), dot or general; size: the attentional state "
            "h~ = tanh(W_c [c; h]) the readout reads (and the additive score's width)",
        },
    },
}

_number = {"type": "number"}
_count = {"type": "integer", "minimum": 1}

DEFAULT_SOURCE = "python_stdlib"  # the data a spec without `data.source` trains on
COUNT = _count  # schema fragments for the options of data sources (see `registry`)
NUMBER = _number
FRACTION = {"type": "number", "minimum": 0, "maximum": 0.9}


def data_schema() -> dict:
    """The `data` section's schema, built from the registered sources: `source` is one of
    them, and each source allows its own options only (one `if`/`then` per source; a spec
    without `source` is read as `DEFAULT_SOURCE`)."""
    known = registry.sources()
    branches = []
    for name, record in known.items():
        when = {"properties": {"source": {"const": name}}, "required": ["source"]}
        if name == DEFAULT_SOURCE:
            when = {"anyOf": [when, {"not": {"required": ["source"]}}]}
        then = {
            "title": f"data.source {name!r}",
            "properties": {"source": {"const": name}, **record.options},
            "additionalProperties": False,
        }
        branches.append({"if": when, "then": then})
    lines = [f"{name}: {record.description}" for name, record in known.items()]
    return {
        "type": "object",
        "properties": {"source": {"enum": list(known), "default": DEFAULT_SOURCE}},
        "allOf": branches,
        "description": f"`source` (default {DEFAULT_SOURCE}) picks the data; each source "
        "takes its own options. " + "; ".join(lines),
    }


TRAIN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "steps": {**_count, "default": 1000},
        "batch_size": {**_count, "default": 32},
        "seq_len": {
            **_count,
            "default": 64,
            "description": "k2 of truncated BPTT on streams: how far gradients reach back",
        },
        "stride": {
            **_count,
            "description": "k1 of truncated BPTT: steps between updates "
            "(default seq_len); the state after `stride` steps is carried over",
        },
        "segment_steps": {
            **_count,
            "description": "recompute activations in segments of this many steps "
            "(gradient checkpointing): memory for one segment instead of seq_len steps, "
            "for about one more forward pass; many_to_many, unidirectional, unpadded",
        },
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.002},
        "optimizer": {
            "type": "object",
            "additionalProperties": False,
            "default": {"name": "adam"},
            "properties": {
                "name": {
                    "enum": ["sgd", "adagrad", "rmsprop", "adam", "adamw"],
                    "default": "adam",
                    "description": "as torch.optim; adamw: Adam with decoupled weight decay "
                    "(Loshchilov & Hutter 2019)",
                },
                "momentum": {**_number, "default": 0.0},
                "nesterov": {"type": "boolean", "default": False},
                "betas": {
                    "type": "array",
                    "items": _number,
                    "minItems": 2,
                    "maxItems": 2,
                    "default": [0.9, 0.999],
                },
                "alpha": {**_number, "default": 0.99, "description": "RMSprop's decay"},
                "eps": {
                    **_number,
                    "default": 1e-8,
                    "description": "added to the root in the denominator (adagrad: default "
                    "1e-10, as torch.optim.Adagrad)",
                },
                "weight_decay": {
                    **_number,
                    "default": 0.0,
                    "description": "L2 added to the gradient; adamw: decoupled, each step "
                    "p -= lr * weight_decay * p (default 0.01, as torch.optim.AdamW)",
                },
            },
        },
        "schedule": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {
                    "enum": ["constant", "step", "exponential", "cosine"],
                    "default": "constant",
                },
                "warmup": {"type": "integer", "minimum": 0, "default": 0},
                "gamma": {**_number, "description": "default: 0.5 for step, 0.999 for exponential"},
                "every": {**_count, "default": 1000},
                "min_factor": {**_number, "default": 0.0},
            },
        },
        "clip": {
            "type": ["object", "null"],
            "description": "null turns clipping off",
            "additionalProperties": False,
            "default": {"kind": "global_norm", "max": 5.0},
            "properties": {
                "kind": {
                    "enum": ["global_norm", "per_param_norm", "value"],
                    "default": "global_norm",
                },
                "max": {"type": "number", "exclusiveMinimum": 0, "default": 5.0},
            },
        },
        "early_stopping": {
            "type": "object",
            "additionalProperties": False,
            "description": "stop after `patience` validations without improvement; "
            "RUN_DIR/best.npz keeps the best parameters (by valid_loss without this section)",
            "properties": {
                "metric": {
                    "type": "string",
                    "pattern": "^valid_[a-z0-9_]+$",
                    "default": "valid_loss",
                    "description": "a validation metric the run computes: valid_loss, "
                    "valid_accuracy (id targets), valid_<score> of the data source",
                },
                "mode": {
                    "enum": ["min", "max"],
                    "description": "default: max for accuracy, f1, bleu and match metrics, "
                    "min for the rest",
                },
                "patience": {
                    **_count,
                    "default": 5,
                    "description": "validations (train.eval_every steps apart) in a row "
                    "without improvement before training stops",
                },
                "min_delta": {
                    "type": "number",
                    "minimum": 0,
                    "default": 0.0,
                    "description": "an improvement must be larger than this",
                },
            },
        },
        "ema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["decay"],
            "examples": [{"decay": 0.999}],
            "description": "validate, keep best.npz and checkpoint an exponential moving "
            "average of the weights (Keras use_ema, torch AveragedModel): after each step "
            "averaged = decay * averaged + (1 - decay) * weights; training goes on from the "
            "raw weights",
            "properties": {
                "decay": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 1,
                    "description": "must be in (0, 1), such as 0.99 or 0.999: the weight the "
                    "average keeps each step (it spans about 1 / (1 - decay) steps)",
                },
                "start": {
                    "type": "integer",
                    "minimum": 0,
                    "default": 0,
                    "description": "averaging starts after this many steps (the weights of "
                    "step start + 1 are its first value)",
                },
            },
        },
        "scheduled_sampling": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "schedule": {
                    "enum": ["linear", "exponential", "inverse_sigmoid"],
                    "default": "inverse_sigmoid",
                },
                "k": {"type": "number", "exclusiveMinimum": 0, "default": 1000.0},
                "base": {**_number, "default": 0.999},
                "min_truth": {**_number, "default": 0.0},
            },
        },
        "log_every": {**_count, "default": 50},
        "eval_every": {**_count, "default": 250},
        "valid_batches": {**_count, "default": 20},
        "checkpoint_every": {**_count, "default": 200},
        "sample_length": {**_count, "default": 400},
        "prime": {"type": "string", "minLength": 1, "default": "\n"},
        "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.8},
        "log_to": {
            "type": "array",
            "items": {"enum": ["tensorboard", "mlflow"]},
            "uniqueItems": True,
            "description": "also write the run's scalars, spec and sample to TensorBoard "
            "(RUN_DIR/tensorboard) and/or MLflow (RUN_DIR/mlruns, or MLFLOW_TRACKING_URI); "
            "metrics.jsonl stays the record. Needs pip install 'seqgraph[track]'",
        },
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
        "backend": {"enum": ["numpy", "cupy", "strict"], "default": "numpy"},
        "dtype": {"enum": ["float32", "float64"], "default": "float32"},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "cells": {"type": "object", "additionalProperties": CELL},
        "model": MODEL,
        "data": {"type": "object"},  # filled in by `spec_schema` from the registry
        "train": TRAIN,
    },
}


def default(*keys: str):
    """The default the schema gives a key, e.g. `default("train", "batch_size")` (a copy)."""
    node = validation_schema() if keys[:1] == ("data",) else SPEC
    for key in keys:
        node = node["properties"][key]
    return copy.deepcopy(node["default"])


def spec_schema() -> dict:
    """A copy of the spec's JSON Schema (safe to modify), with the `data` section of the data
    sources registered now."""
    return copy.deepcopy(validation_schema())


def validation_schema() -> dict:
    """The spec's JSON Schema as the loader validates with it (shares parts with `SPEC`: do
    not modify it)."""
    return {**SPEC, "properties": {**SPEC["properties"], "data": data_schema()}}
