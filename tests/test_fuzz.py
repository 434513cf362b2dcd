"""Hostile specs: random mutations of valid specs must end in a SpecError with a YAML path and
a message, never another exception. SEQGRAPH_FUZZ_EXAMPLES raises the example count."""

from __future__ import annotations

import copy
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqgraph import Model, SpecError, load_spec

EXAMPLES = int(os.environ.get("SEQGRAPH_FUZZ_EXAMPLES", "60"))
CASES = {"total": 0, "spec_errors": 0, "valid": 0}

BASES = [
    {
        "model": {
            "pattern": "many_to_many",
            "input": {"type": "ids", "vocab": 7},
            "target": {"type": "ids", "vocab": 7},
            "encoders": [{"type": "embedding", "size": 4}],
            "layers": [{"cell": "lstm", "hidden": 5, "options": {"forget_bias": 1.0}}],
        },
        "train": {"steps": 3, "lr": 0.01},
    },
    {
        "cells": {
            "mine": {
                "inputs": ["x"],
                "state": ["h"],
                "output": "h",
                "params": {
                    "W": {
                        "shape": ["input", "2*hidden"],
                        "init": {"dist": "uniform", "scale": "1/sqrt(hidden)"},
                    },
                    "U": {"shape": ["hidden", "hidden"]},
                },
                "equations": ["a, b = split(x @ W, 2)", "h = sigmoid(a) * h + tanh(b + h @ U)"],
            }
        },
        "model": {
            "pattern": "many_to_one",
            "input": {"type": "vectors", "size": 3},
            "target": {"type": "ids", "vocab": 2},
            "layers": [{"cell": "mine", "hidden": 4, "bidirectional": True}],
        },
    },
    {
        "model": {
            "pattern": "encoder_decoder",
            "input": {"type": "ids", "vocab": 5},
            "target": {"type": "ids", "vocab": 6},
            "bos": 1,
            "encoders": [{"type": "onehot"}],
            "layers": [{"cell": "gru", "hidden": 4}, {"cell": "gru", "hidden": 4}],
        }
    },
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "lstm",
            "gru",
            "rnn",
            "auto",
            "hidden",
            "-1",
            "4*hidden",
            "1/0",
            "sqrt(-1)",
            "__import__('os')",
            "x.T",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
equations = st.one_of(
    st.sampled_from(
        [
            "h = __import__('os').system('true')",
            "h = x.T",
            "h = h[0]",
            "h = lambda: 1",
            "h = eval('x')",
            "h = unknown(x)",
            "h = tanh(x, h, h)",
            "h = x @ W",
            "h = h ** 2",
            "h = _secret",
            "h = tanh(x @ W",
            "x = h",
            "h = sum(x, axis=h)",
            "a, b = split(x, 3)",
            "h = (x := h)",
            "h = 'str'",
            "h = tanh(h @ U) + tanh(x @ W)",
            "h = concat(h, h) @ U",
            "",
        ]
    ),
    st.text(max_size=30),
)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, prefix + (i,))


def mutate(data, path, action, value):
    data = copy.deepcopy(data)
    if not path:
        return value if action == "replace" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    elif action == "typo" and isinstance(last, str):
        parent[last[::-1] or "_"] = parent.pop(last)
    elif action == "extra" and isinstance(parent[last], dict):
        parent[last]["unknown_key"] = value
    return data


def text_mutation(text: str, kind: str, position: int, noise: bytes) -> bytes:
    raw = text.encode()
    position %= max(len(raw), 1)
    if kind == "tab":
        return raw[:position] + b"\t" + raw[position:]
    if kind == "truncate":
        return raw[:position]
    if kind == "bytes":
        return raw[:position] + noise + raw[position:]
    if kind == "tag":
        return b"model: !!python/object/apply:os.system ['true']\n" + raw
    if kind == "bomb":
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        lines += [
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}] * 9".replace(" * 9", "")
            for i in range(0)
        ]
        bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        for i in range(1, 9):
            prev, name = f"l{i - 1}" if i > 1 else "a", f"l{i}"
            bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]\n"
        return bomb.encode() + raw
    return raw


def attempt(source) -> None:
    """load + build must succeed or raise SpecError carrying a path and a message."""
    CASES["total"] += 1
    try:
        spec = load_spec(source)
        if sum(1 for _ in paths(spec.raw)) < 200:
            Model(spec, dtype="float64")
        CASES["valid"] += 1
    except SpecError as exc:
        assert isinstance(exc.path, str) and exc.message, exc
        assert "\n" not in str(exc).strip(), str(exc)
        CASES["spec_errors"] += 1


def counted(prop, valid_too: bool = False) -> dict:
    """Run a property's examples; what they ended in. Real assertions on the counts: the
    examples ran, every one ended in a build or a SpecError, and (given enough of them)
    some were refused, so that the mutations reach the loader's checks at all."""
    before = dict(CASES)
    prop()
    ran = {key: CASES[key] - before[key] for key in CASES}
    assert ran["total"] >= 1 and ran["total"] == ran["valid"] + ran["spec_errors"], ran
    if ran["total"] >= 20:
        assert ran["spec_errors"] >= 1, ran
        if valid_too:
            assert ran["valid"] >= 1, ran
    return ran


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    base=st.sampled_from(range(len(BASES))),
    data=st.data(),
    action=st.sampled_from(["delete", "replace", "typo", "extra"]),
    value=values,
)
def structural_mutation(base, data, action, value):
    spec = BASES[base]
    path = data.draw(st.sampled_from(list(paths(spec))))
    attempt(mutate(spec, path, action, value))


def test_structural_mutations_end_in_spec_errors():
    counted(structural_mutation, valid_too=True)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(equation=equations, index=st.integers(0, 1))
def equation_mutation(equation, index):
    spec = copy.deepcopy(BASES[1])
    spec["cells"]["mine"]["equations"][index] = equation
    attempt(spec)


def test_equation_mutations_end_in_spec_errors():
    counted(equation_mutation)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    base=st.sampled_from(range(len(BASES))),
    kind=st.sampled_from(["tab", "truncate", "bytes", "tag", "bomb"]),
    position=st.integers(0, 10**6),
    noise=st.binary(min_size=1, max_size=4),
)
def text_mutation_case(base, kind, position, noise):
    text = yaml.safe_dump(BASES[base], sort_keys=False)
    attempt(text_mutation(text, kind, position, noise))


def test_text_mutations_end_in_spec_errors():
    counted(text_mutation_case)


def test_known_hostile_inputs_are_refused():
    for source in (
        b"",
        b"\xff\xfe",
        b"model: !!python/object/apply:os.system ['true']\n",
        text_mutation("x: 1\n", "bomb", 0, b""),
    ):
        try:
            load_spec(source)
        except SpecError as exc:
            assert exc.message
        else:
            raise AssertionError(f"{source[:40]!r} was accepted")
    # the bases the mutations start from are valid: a refused mutation is the mutation's doing
    for base in BASES:
        before = dict(CASES)
        attempt(copy.deepcopy(base))
        assert CASES["valid"] == before["valid"] + 1, base
