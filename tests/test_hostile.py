"""The hostile-input corpus (tests/hostile/*.yaml): specs a careless or hostile user could
write. Each must be refused by `check` (and `render`, `run`) with one line on stderr that
names the file, exit code 2, and never a Python traceback (RecursionError, OverflowError...).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_spec_errors import BASE, CELL

from seqgraph import SpecError, cli
from seqgraph.spec import equations, yaml_lines

HOSTILE = sorted((Path(__file__).resolve().parent / "hostile").glob("*.yaml"))
RENDERED = (
    "billion_laughs",
    "deep_flow_list",
    "deep_block",
    "sum_3000_terms",
    "overflow_size",
    "nan_size",
    "non_utf8",
)
PWNED = Path("/tmp/pwned")  # what the dunder and Python-tag specs would create if they ran


def refused_in_one_line(capsys, path: Path) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(path) in err, err
    return err


def test_the_corpus_covers_each_kind():
    names = {path.stem for path in HOSTILE}
    for kind in (
        "billion_laughs",
        "recursive_alias",
        "deep_flow_list",
        "deep_block",
        "sum_3000_terms",
        "nested_calls",
        "overflow_size",
        "nan_size",
        "huge_hidden",
        "huge_int_size",
        "non_utf8",
        "tabs",
        "empty",
        "list_not_mapping",
        "unknown_op",
        "dunder_attribute",
        "dunder_import",
        "python_tag",
    ):
        assert kind in names, kind
    assert (Path(__file__).parent / "hostile" / "non_utf8.yaml").read_bytes().find(b"\xff") > 0


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.stem)
def test_check_refuses_each_hostile_spec(path, capsys):
    PWNED.unlink(missing_ok=True)
    start = time.perf_counter()
    assert cli.main(["check", str(path)]) == 2
    refused_in_one_line(capsys, path)
    assert time.perf_counter() - start < 30  # an alias bomb is bounded, not expanded
    assert not PWNED.exists()


@pytest.mark.parametrize("name", RENDERED)
def test_render_refuses_hostile_specs(name, tmp_path, capsys):
    path = Path(__file__).resolve().parent / "hostile" / f"{name}.yaml"
    dot = tmp_path / "graph.dot"
    assert cli.main(["render", str(path), "-o", str(dot)]) == 2
    refused_in_one_line(capsys, path)
    assert not dot.exists()


@pytest.mark.parametrize("name", ["deep_flow_list", "sum_3000_terms", "nan_size"])
def test_run_refuses_hostile_specs_before_writing(name, tmp_path, capsys):
    path = Path(__file__).resolve().parent / "hostile" / f"{name}.yaml"
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out)]) == 2
    refused_in_one_line(capsys, path)
    assert not out.exists()


def test_messages_say_what_to_do(capsys):
    folder = Path(__file__).resolve().parent / "hostile"
    expected = {
        "deep_flow_list": f"nested deeper than {yaml_lines.MAX_YAML_DEPTH} levels",
        "deep_block": "description.a.a",
        "billion_laughs": "alias bomb",
        "sum_3000_terms": f"at most {equations.MAX_OPERATORS} are allowed",
        "nested_calls": f"deeper than {equations.MAX_NESTING} levels",
        "overflow_size": "'hidden*1e400' is inf (overflow); it must be a finite positive integer",
        "nan_size": "'1e400-1e400' is nan (overflow); it must be a finite positive integer",
        "tabs": "indent with spaces, not tabs",
        "non_utf8": "save the file as UTF-8",
        "list_not_mapping": "got a list",
        "scalar_not_mapping": "got an int",
    }
    for name, says in expected.items():
        assert cli.main(["check", str(folder / f"{name}.yaml")]) == 2
        err = refused_in_one_line(capsys, folder / f"{name}.yaml")
        assert says in err, (name, err)


def test_overflow_names_the_spec_path_and_line(capsys):
    path = Path(__file__).resolve().parent / "hostile" / "overflow_size.yaml"
    assert cli.main(["check", str(path)]) == 2
    err = refused_in_one_line(capsys, path)
    assert f"{path}:7: cells.mine.params.W.shape: size expression" in err


# ---- the limits stop what is hostile, not what is merely large --------------------------------


def _with_equation(tmp_path, equation: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(CELL.replace("h = tanh(x @ W + h @ U)", equation))
    return path


def test_an_equation_at_the_limits_still_checks(tmp_path, capsys):
    terms = " + ".join(["x @ W"] * (equations.MAX_OPERATORS // 2 - 1))
    path = _with_equation(tmp_path, f"h = tanh({terms} + h @ U)")
    assert cli.main(["check", str(path), "--steps", "2"]) == 0
    depth = equations.MAX_NESTING - 1
    path = _with_equation(tmp_path, "h = " + "tanh(" * depth + "x @ W + h @ U" + ")" * depth)
    assert cli.main(["check", str(path), "--steps", "2"]) == 0
    assert capsys.readouterr().err == ""


def test_one_operator_too_many_is_refused(tmp_path, capsys):
    terms = " + ".join(["x @ W"] * (equations.MAX_OPERATORS // 2))
    path = _with_equation(tmp_path, f"h = tanh({terms} + h @ U)")
    assert cli.main(["check", str(path)]) == 2
    assert f"{equations.MAX_OPERATORS + 1} operators" in refused_in_one_line(capsys, path)


def test_yaml_at_the_depth_limit_still_loads(tmp_path, capsys):
    levels = yaml_lines.MAX_YAML_DEPTH - 1  # the root mapping is level 1
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + "description: " + "[" * levels + "]" * levels + "\n")
    assert cli.main(["check", str(path), "--steps", "2"]) == 2  # the schema wants a string
    err = refused_in_one_line(capsys, path)
    assert "description: got" in err and "expected string" in err
    path.write_text(BASE + "description: " + "[" * (levels + 1) + "]" * (levels + 1) + "\n")
    assert cli.main(["check", str(path), "--steps", "2"]) == 2
    assert "nested deeper" in refused_in_one_line(capsys, path)


@pytest.mark.parametrize("text", ["hidden*1e400", "1e400-1e400", "-1e400", "sqrt(1e400)"])
def test_size_expressions_that_are_not_finite_are_refused(text):
    with pytest.raises(SpecError) as caught:
        equations.eval_size(text, {"hidden": 3, "input": 2}, "cells.c.params.W.shape")
    assert caught.value.path == "cells.c.params.W.shape"
    assert "must be a finite positive integer" in caught.value.message


def test_finite_size_expressions_still_evaluate():
    assert equations.eval_size("4*hidden", {"hidden": 3}) == 12
    assert equations.eval_size("1/sqrt(hidden)", {"hidden": 4}) == 0.5


@pytest.mark.parametrize("kind", ["folder", "dev_zero", "too_large", "missing"])
def test_spec_paths_that_are_not_spec_files(kind, tmp_path, capsys):
    path = {
        "folder": tmp_path,
        "dev_zero": Path("/dev/zero"),  # endless: read no more than a spec can hold
        "too_large": tmp_path / "large.yaml",
        "missing": tmp_path / "absent.yaml",
    }[kind]
    if kind == "dev_zero" and not path.exists():
        pytest.skip("no /dev/zero here")
    if kind == "too_large":
        path.write_text(BASE + "description: '" + "x" * yaml_lines.MAX_YAML_BYTES + "'\n")
    assert cli.main(["check", str(path)]) == 2
    err = refused_in_one_line(capsys, path)
    says = {
        "folder": "is a folder; give a YAML spec file (a run folder keeps its spec in spec.yaml)",
        "dev_zero": yaml_lines.TOO_LARGE,
        "too_large": yaml_lines.TOO_LARGE,
        "missing": "file not found; check the path",
    }[kind]
    assert says in err
