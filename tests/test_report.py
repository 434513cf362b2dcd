"""`seqgraph compare` and `seqgraph report`: the table and figure of several runs, and the
report page checked in a real headless Chromium (no console errors, figures that are not
blank, no sideways scrolling at 1280 px nor on a phone)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import numpy as np
import pytest
from experiments_support import classifier_spec

from seqgraph import api
from seqgraph.cli import main
from seqgraph.experiments import compare, report
from seqgraph.experiments.runs import flatten
from seqgraph.train import run_folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny classifier runs that differ in lr and hidden size."""
    folder = tmp_path_factory.mktemp("runs")
    spec_a = classifier_spec(folder / "a", name="tiny_a")
    spec_b = classifier_spec(folder / "b", name="tiny_b", lr=0.03)
    runs = []
    for spec, out in ((spec_a, folder / "run_a"), (spec_b, folder / "run_b")):
        api.train(str(spec), out=str(out), progress=False, log=lambda line: None)
        runs.append(out)
    return runs


def test_compare_tables_final_and_best_and_the_spec_differences(two_runs, tmp_path, capsys):
    figure = tmp_path / "cmp.png"
    assert main(["compare", *map(str, two_runs), "-o", str(figure)]) == 0
    text = capsys.readouterr().out
    result = compare.compare(two_runs, figure)
    rows = {r["run"]: r for r in result["rows"]}
    for run_dir in two_runs:
        records = [r for r in run_folder.read_metrics(run_dir) if r["kind"] == "valid"]
        row = rows[run_dir.name]
        assert row["steps"] == 6
        assert row["final valid_loss"] == records[-1]["valid_loss"]
        assert row["best valid_loss"] == min(r["valid_loss"] for r in records)
        assert row["best accuracy"] == max(r["accuracy"] for r in records)
        assert row["wall_s"] > 0
    assert result["differences"]["train.lr"] == [0.01, 0.03]
    assert "data.root" in result["differences"]  # each run made its own data folder
    assert "name" not in result["differences"]
    assert "  train.lr: 0.01 | 0.03" in text and f"wrote {figure}" in text
    assert figure.stat().st_size > 10_000


def test_flatten_names_list_items_by_index():
    spec = {"model": {"layers": [{"hidden": 4}, {"hidden": 5}]}, "data": {"files": ["a", "b"]}}
    assert flatten(spec) == {
        "data.files": ["a", "b"],
        "model.layers[0].hidden": 4,
        "model.layers[1].hidden": 5,
    }


def test_compare_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_report_is_one_self_contained_page(two_runs, capsys):
    run_dir = two_runs[0]
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert capsys.readouterr().out == f"wrote {run_dir / 'report.html'}\n"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched
    assert "<script" not in page and "<link" not in page
    for heading in ("Summary", "Curves", "Spec", "Unrolled graph", "Gradient ledger"):
        assert f"<h2>{heading}</h2>" in page
    assert "<h2>Validation</h2>" in page and 'alt="confusion matrix"' in page
    assert "pattern: many_to_one" in page and "Machine and timings" in page
    for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(encoded).startswith(b"\x89PNG")


def test_a_report_that_cannot_be_written_names_the_option_to_change(two_runs, tmp_path, capsys):
    """Regression: the one line said `pass --out DIR`, an option `report` does not have."""
    out = tmp_path / "no" / "such" / "folder" / "r.html"
    assert main(["report", str(two_runs[0]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write" in err and "pass -o FILE in a folder you can write" in err
    assert "--out" not in err and err.count("\n") == 1


def test_report_says_why_a_section_is_missing(two_runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(two_runs[1], run_dir)
    for name in ("checkpoint.npz", "best.npz"):  # no model left to load
        (run_dir / name).unlink()
    page = report.write_report(run_dir).read_text()
    assert "no model to show:" in page and "no checkpoint" in page
    assert "<h2>Curves</h2>" in page  # what metrics.jsonl holds is still shown


# ---- the page in a real browser --------------------------------------------------------


def chromium_driver():
    """Headless Chromium through Selenium and the distribution's chromedriver, with the
    browser console kept; skipped (with the reason) where either is not installed, failed
    instead under SEQGRAPH_REQUIRE_BROWSER=1 (as .ci/run sets)."""
    missing = pytest.fail if os.environ.get("SEQGRAPH_REQUIRE_BROWSER") else pytest.skip
    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        missing("Chromium and chromedriver are not installed (apt-get install chromium "
                "chromium-driver; .ci/run does)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(options=options, service=service)


def not_blank(png: bytes) -> float:
    """The spread of an element screenshot's grey levels (0 for a blank region)."""
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(grey.std())


def test_report_renders_in_headless_chromium_on_desktop_and_phone(two_runs):
    path = report.write_report(two_runs[0])
    driver = chromium_driver()
    try:
        for width, mobile in ((1280, False), (390, True)):
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": mobile},
            )
            driver.get(path.resolve().as_uri())
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
            state = driver.execute_script(
                "return [document.readyState, document.documentElement.scrollWidth,"
                " window.innerWidth, getComputedStyle(document.body).fontSize]"
            )
            assert state[0] == "complete"
            assert state[1] <= state[2], f"the page scrolls sideways at {width} px"
            assert float(state[3].rstrip("px")) >= 14  # readable text on a phone too
            images = driver.find_elements("css selector", "img")
            assert len(images) >= 3  # curves, gradient ledger, confusion matrix
            for image in images:
                loaded = driver.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", image
                )
                assert loaded > 0
                assert image.size["width"] <= width
                assert not_blank(image.screenshot_as_png) > 5
            graph = driver.find_element("css selector", "figure svg")
            assert 0 < graph.size["width"] <= width
            assert not_blank(graph.screenshot_as_png) > 5
    finally:
        driver.quit()
