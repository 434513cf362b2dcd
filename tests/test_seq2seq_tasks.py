"""The two seq2seq tasks with numbers: the `dates` source (human date formats -> ISO) is
deterministic and holds out by date, and tools/length_curve.py's held-out digit strings,
scoring and per-length buckets, on hand-made outputs and on a tiny run it decodes itself."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import seqgraph
from seqgraph import cli
from seqgraph.apps import dates
from seqgraph.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import dates_table  # noqa: E402
import length_curve  # noqa: E402

# ---- dates -----------------------------------------------------------------------------------


def test_formats_write_the_issue_examples_and_the_right_weekday():
    day = dt.date(2026, 11, 26)  # a Thursday
    written = {name: write(day) for name, write in dates.FORMATS.items()}
    assert written["d_mon_yyyy"] == "26 Nov 2026"
    assert written["weekday_month_d_yyyy"] == "Thursday, November 26, 2026"
    assert written["us_mm_dd_yy"] == "11/26/26"
    assert written["yyyy_mm_dd_dots"] == "2026.11.26"
    assert written["nth_of_month_yyyy"] == "26th of November 2026"
    assert written["rfc_2822"] == "Thu, 26 Nov 2026"
    assert [dates.ordinal(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st",
    ]  # fmt: skip


def test_two_digit_years_read_back_to_the_target_under_the_posix_rule():
    # strptime's %y: 69-99 are 19xx, 00-68 are 20xx; the generator's range is exactly that
    for day in (dates.FIRST_DAY, dt.date(1999, 12, 31), dt.date(2000, 1, 1), dates.LAST_DAY):
        text = dates.FORMATS["us_mm_dd_yy"](day)
        assert dt.datetime.strptime(text, "%m/%d/%y").date() == day


def test_examples_are_deterministic_and_every_source_names_its_target():
    config = {"examples": 300}
    assert dates.pairs(config, 0) == dates.pairs(config, 0)
    assert dates.pairs(config, 0) != dates.pairs(config, 1)
    parsers = {  # the formats strptime reads in the C locale
        "d_mon_yyyy": "%d %b %Y",
        "weekday_month_d_yyyy": "%A, %B %d, %Y",
        "us_m_d_yyyy": "%m/%d/%Y",
        "dd_mm_yyyy_dots": "%d.%m.%Y",
        "rfc_2822": "%a, %d %b %Y",
        "yyyymmdd": "%Y%m%d",
        "iso": "%Y-%m-%d",
    }
    for index in range(200):
        for name, form in parsers.items():
            source, target, _ = dates.example(0, index, [name])
            assert dt.datetime.strptime(source, form).date().isoformat() == target


def test_held_out_dates_never_occur_in_training_in_any_format():
    train, valid, test = dates.pairs({"examples": 4000}, 0)
    train_days = {target for _, target, _ in train}
    valid_days, test_days = {t for _, t, _ in valid}, {t for _, t, _ in test}
    assert not train_days & test_days and not train_days & valid_days
    assert not valid_days & test_days
    share = len(test) / 4000
    assert 0.07 < share < 0.13  # test_fraction 0.1 of the days, so about 0.1 of the examples
    split = dates.day_splits({}, 0)
    assert np.bincount(split).tolist() == [
        dates.days() - 2 * round(dates.days() * 0.1),
        *[round(dates.days() * 0.1)] * 2,
    ]


def test_load_gives_char_ids_ending_with_eos_and_refuses_other_patterns():
    data = dates.load({"examples": 200}, "encoder_decoder", 0)
    assert data.labels[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert set(data.labels[4:]) <= set("0123456789-")
    assert all(len(y) == 11 and y[-1] == 2 for y in data.y + data.test_y)  # 10 characters and <eos>
    with pytest.raises(DataError, match="model.pattern: encoder_decoder"):
        dates.load({}, "many_to_one", 0)
    with pytest.raises(DataError, match="unknown format 'julian'"):
        dates.load({"formats": ["julian"]}, "encoder_decoder", 0)
    with pytest.raises(DataError, match="valid_fraction \\+ data.test_fraction = 1 leaves"):
        dates.load({"valid_fraction": 0.5, "test_fraction": 0.5}, "encoder_decoder", 0)


def test_dates_table_scores_each_format_and_a_tiny_run_end_to_end(tmp_path):
    test = [("11/26/26", "2026-11-26", "us_mm_dd_yy"), ("2026.11.26", "2026-11-26", "iso")]
    outputs = {
        "greedy": [list("2026-11-26"), list("2026-11-2")],
        "beam 5": [[], list("2026-11-26")],
    }
    table = dates_table.exact_by_format(test, outputs)
    assert table["all"] == {"pairs": 2, "greedy": 0.5, "beam 5": 0.5}
    assert table["us_mm_dd_yy"] == {"pairs": 1, "greedy": 1.0, "beam 5": 0.0}
    assert "d_mon_yyyy" not in table  # no test pair in that format
    spec = yaml.safe_load((ROOT / "specs" / "dates_attention.yaml").read_text())
    spec["model"]["layers"][0]["hidden"] = 6
    spec["model"]["attention"]["size"] = 6
    spec["data"]["examples"] = 60
    spec["train"] = {"steps": 2, "batch_size": 4, "lr": 0.01}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert dates_table.main([str(tmp_path / "run"), "--beam", "2"]) == 0
    result = json.loads((tmp_path / "run" / "dates_table.json").read_text())
    test = dates.pairs({"examples": 60}, 0)[2]
    assert result["all"]["pairs"] == len(test) > 0
    assert sum(row["pairs"] for name, row in result.items() if name != "all") == len(test)


# ---- the length curve ------------------------------------------------------------------------


def test_buckets_cover_every_length_once():
    edges = length_curve.bucket_edges(5, 40, 4)
    assert edges[0] == (5, 8) and edges[-1] == (37, 40) and len(edges) == 9
    assert length_curve.bucket_edges(5, 11, 4) == [(5, 8), (9, 11)]


def test_score_counts_eos_and_a_missing_eos_as_a_step():
    limit = 6
    assert length_curve.score_pair("321", ["3", "2", "1"], limit) == (4, 4, True)
    assert length_curve.score_pair("321", ["3", "1"], limit) == (1, 4, False)  # <eos> early
    assert length_curve.score_pair("321", ["3", "2", "1", "1"], limit) == (3, 4, False)
    # six tokens at a limit of six: decoding stopped without <eos>
    assert length_curve.score_pair("32", list("321111"), limit) == (2, 3, False)


def test_score_by_length_averages_within_each_bucket():
    pairs = [("12", "21"), ("123", "321"), ("1234", "4321"), ("12345", "54321")]
    outputs = [["2", "1"], ["3", "2", "2"], list("4321"), list("5432")]
    rows = length_curve.score_by_length(pairs, outputs, [(2, 3), (4, 5), (6, 7)], limit=9)
    assert rows[0] == {"lengths": [2, 3], "pairs": 2, "exact_match": 0.5, "token_accuracy": 6 / 7}
    assert rows[1] == {"lengths": [4, 5], "pairs": 2, "exact_match": 0.5, "token_accuracy": 9 / 11}
    assert rows[2]["pairs"] == 0 and rows[2]["exact_match"] is None


def test_held_out_pairs_drop_training_sources_and_are_deterministic():
    first = length_curve.held_out_pairs(5, 6, 50, 1, set())
    assert first == length_curve.held_out_pairs(5, 6, 50, 1, set())
    assert all(target == source[::-1] for source, target in first)
    kept = length_curve.held_out_pairs(5, 6, 50, 1, {first[0][0], first[3][0]})
    assert first[0] not in kept and first[3] not in kept and len(kept) == len(first) - 2


def test_tool_buckets_a_tiny_run_as_its_own_predictions_say(tmp_path):
    lines = [f"{s}\t{s[::-1]}" for s in ("123", "4567", "98", "1029", "555", "31")] * 6
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    spec = yaml.safe_load((ROOT / "specs" / "reverse_attention.yaml").read_text())
    spec["model"]["layers"][0]["hidden"] = 6
    spec["model"]["attention"]["size"] = 6
    spec["data"].update(valid_fraction=0, max_len=6)
    spec["train"] = {"steps": 2, "batch_size": 4, "lr": 0.01}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    data = ["--data", str(tmp_path / "train.tsv")]
    assert cli.main(["run", str(tmp_path / "s.yaml"), *data, "--out", str(run)]) == 0
    test = [("1234", "4321"), ("21", "12"), ("99", "99"), ("10293", "39201")]
    (tmp_path / "test.tsv").write_text("\n".join("\t".join(p) for p in test) + "\n")
    out = tmp_path / "curve"
    argv = ["--out", str(out), "--runs", str(run), str(run), "--test", str(tmp_path / "test.tsv")]
    assert length_curve.main([*argv, "--min", "2", "--max", "5", "--width", "2"]) == 0
    result = json.loads((out / "length_curve.json").read_text())
    outputs = [r["output"] for r in seqgraph.load(run).predict([s for s, _ in test], length=6)]
    for label in ("attention", "no attention"):
        rows = result["models"][label]
        assert [row["lengths"] for row in rows] == [[2, 3], [4, 5]]
        assert [row["pairs"] for row in rows] == [2, 2]
        short = (
            length_curve.score_pair("12", outputs[1], 6),
            length_curve.score_pair("99", outputs[2], 6),
        )
        assert rows[0]["token_accuracy"] == (short[0][0] + short[1][0]) / 6
    assert (out / "length_curve.png").stat().st_size > 0
    assert (out / "length_curve.md").read_text().startswith("| source length | pairs |")
