"""The command line, called in-process through `cli.main(argv)`: output and exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_spec_errors import BASE, CASES, CELL, ENCODER_DECODER

from seqgraph import Model, SpecError, cli, load_spec
from seqgraph.train.loop import prepare

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.yaml"))
HEADLINE = re.compile(
    r"^(\S+): (\w+), ([\d,]+) parameters, ([\d,]+) nodes and ([\d,]+) edges "
    r"unrolled over (\d+) steps$"
)
PARAM_LINE = re.compile(r"^  (\S+)\s+\(([\d, ]+)\)$")
PLACEHOLDER_NOTE = re.compile(r"^note: vocab: auto could not be sized .*a placeholder of (\d+)$")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_there_are_example_specs():
    assert len(SPECS) >= 1


def _sized_like_check(path: Path, lines: list[str]):
    """The spec as `check` sized it: `vocab: auto` from the spec's own data when it could be
    read, else from the placeholder its note names; the cross-check then covers every spec."""
    try:
        return load_spec(path)
    except SpecError as exc:
        assert "vocab: auto" in exc.message, exc.message
    note = PLACEHOLDER_NOTE.match(lines[1])
    if note:
        size = int(note[1])
        return load_spec(path, auto={"input": size, "target": size})
    return prepare(str(path))[0]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_check_every_example_spec(path, capsys):
    assert cli.main(["check", str(path), "--steps", "3"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    match = HEADLINE.match(lines[0])
    assert match, lines[0]
    name, pattern, params, nodes, edges, steps = match.groups()
    assert pattern == yaml.safe_load(path.read_text())["model"]["pattern"]
    assert steps == "3" and _number(nodes) > 0 and _number(edges) >= _number(nodes) - 1

    # the parameter table lists every parameter; its sizes add up to the headline's count
    start = lines.index("parameters:") + 1
    stop = lines.index("first step (shape for a batch of 2):")
    shapes = {}
    for line in lines[start:stop]:
        found = PARAM_LINE.match(line)
        assert found, line
        shapes[found[1]] = tuple(int(n) for n in found[2].replace(" ", "").split(",") if n)
    assert sum(math.prod(shape) for shape in shapes.values()) == _number(params)
    assert len(lines) > stop + 1  # the first step's node shapes follow

    spec = _sized_like_check(path, lines)
    model = Model(spec, dtype="float64")
    assert model.num_params() == _number(params)
    assert {name: info.shape for name, info in model.param_info.items()} == shapes
    graph = model.unrolled(3, 3 if spec.model.feeds_back else None)
    assert graph.nx.number_of_nodes() == _number(nodes)
    assert graph.nx.number_of_edges() == _number(edges)


def test_check_steps_changes_the_unrolled_size(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    counts = []
    for steps in ("2", "4"):
        assert cli.main(["check", str(path), "--steps", steps]) == 0
        counts.append(HEADLINE.match(capsys.readouterr().out.splitlines()[0]).groups())
    (_, _, params2, nodes2, _, _), (_, _, params4, nodes4, _, _) = counts
    assert params2 == params4 == f"{Model(load_spec(path)).num_params():,}"
    assert _number(nodes4) > _number(nodes2)


def test_invalid_spec_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(BASE.replace("hidden: 3", "hiden: 3"))
    assert cli.main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err == (
        f"error: {path}:8: model.layers[0].hiden: unknown key 'hiden'; did you mean 'hidden'?\n"
    )


def test_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["check", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {missing}: <root>: file not found; check the path\n"


def test_traceback_flag_shows_the_stack(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(BASE.replace("cell: lstm", "cell: lstn"))
    assert cli.main(["--traceback", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1] == (
        f"error: {path}:8: model.layers[0].cell: unknown cell 'lstn'; did you mean 'lstm'?"
    )


def test_schema_is_valid_json_schema(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["model"]
    assert set(schema["properties"]["model"]["properties"]["pattern"]["enum"]) == {
        "one_to_one",
        "one_to_many",
        "many_to_one",
        "many_to_many",
        "encoder_decoder",
    }


def _schema_texts():
    """Every spec text the tests know: the examples, the valid bases, and the broken cases
    that plain YAML can read (python tags and non-UTF-8 bytes cannot be)."""
    texts = [(p.stem, p.read_text()) for p in SPECS]
    texts += [("base", BASE), ("cell", CELL), ("encoder_decoder", ENCODER_DECODER)]
    texts += [(case.id, case.text) for case in CASES if isinstance(case.text, str)]
    out = []
    for name, text in texts:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        out.append((name, text, data))
    return out


def test_schema_agrees_with_load_spec(capsys, tmp_path):
    """A spec the schema rejects never loads, and a spec that loads passes the schema. The
    loader's extra rejections are the semantic checks a schema cannot express."""
    assert cli.main(["schema"]) == 0
    validator = jsonschema.Draft202012Validator(json.loads(capsys.readouterr().out))
    schema_only = {
        "unknown_key",
        "unknown_top_key",
        "wrong_type",
        "negative_hidden",
        "missing_model",
        "bad_pattern",
        "not_a_mapping",
    }
    seen = set()
    for name, text, data in _schema_texts():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        try:
            load_spec(path)
            loads = True
        except SpecError as exc:
            loads = "vocab: auto" in exc.message  # sized from data at run time, not a flaw
        valid = validator.is_valid(data)
        assert valid or not loads, f"{name}: loads but the schema rejects it"
        if name in schema_only:
            assert not valid, f"{name}: the schema should reject it"
            seen.add(name)
    assert seen == schema_only
