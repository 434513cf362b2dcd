"""tools/cross_validate.py: one run per fold of the mod10 wheel, each scored on its own
validation and test tenths, and the mean and spread over folds."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from experiments_support import classifier_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cross_validate  # noqa: E402


def test_each_fold_trains_and_tests_on_its_own_tenths(tmp_path, capsys):
    spec = classifier_spec(tmp_path)
    out = tmp_path / "cv"
    assert cross_validate.main([str(spec), "--folds", "2", "--jobs", "2", "--out", str(out)]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert [row["fold"] for row in result["folds"]] == [0, 1]
    for row in result["folds"]:
        written = yaml.safe_load((out / "specs" / f"fold{row['fold']}.yaml").read_text())
        assert written["data"]["fold"] == row["fold"] and written["data"]["split"] == "mod10"
        assert written["model"] == yaml.safe_load(spec.read_text())["model"]
        assert Path(row["run_dir"]) == out / f"fold{row['fold']}"
        kept = yaml.safe_load((Path(row["run_dir"]) / "spec.yaml").read_text())
        assert kept["data"]["fold"] == row["fold"]  # the run trained on this fold's split
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["step"] == 6
    tests = [row["test_accuracy"] for row in result["folds"]]
    assert result["test"]["mean"] == pytest.approx(statistics.fmean(tests))
    assert result["test"]["std"] == pytest.approx(statistics.stdev(tests))
    printed = capsys.readouterr().out
    assert f"test: mean {result['test']['mean']:.4f}" in printed


def test_fold_spec_names_the_run_and_keeps_the_rest():
    spec = {"name": "s", "model": {"pattern": "many_to_one"}, "data": {"source": "tsv"}}
    folded = cross_validate.fold_spec(spec, 4)
    assert folded == {
        "name": "s_fold4",
        "model": {"pattern": "many_to_one"},
        "data": {"source": "tsv", "split": "mod10", "fold": 4},
    }
    assert spec["data"] == {"source": "tsv"}  # the caller's spec is left alone


@pytest.mark.parametrize("argv", [["--folds", "11"], ["--folds", "0"], ["--jobs", "0"]])
def test_bad_counts_are_refused(tmp_path, argv, capsys):
    spec = classifier_spec(tmp_path)
    with pytest.raises(SystemExit) as info:
        cross_validate.main([str(spec), *argv])
    assert info.value.code == 2 and "--folds must be 1..10" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, says",
    [
        (None, "cannot read the spec"),
        ("a: [", "cannot read the spec"),
        ("a: 1\n", "no data section"),
    ],
    ids=["missing", "bad_yaml", "no_data"],
)
def test_a_bad_spec_is_one_line(tmp_path, capsys, text, says):
    spec = tmp_path / "spec.yaml"
    if text is not None:
        spec.write_text(text)
    with pytest.raises(SystemExit) as info:
        cross_validate.main([str(spec)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and says in err and str(spec) in err
    assert "Traceback" not in err


def test_a_fold_that_fails_stops_with_seqgraphs_line_and_code(tmp_path, capsys):
    spec = classifier_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["root"] = str(tmp_path / "nowhere")
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as info:
        cross_validate.main([str(spec), "--folds", "1", "--out", str(tmp_path / "cv")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: fold 0: seqgraph run: ")
    assert "nowhere" in err and "\n" not in err
