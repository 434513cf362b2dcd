"""The tools' command lines: bad values are one line with exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("value, why", [("x", "not a whole number"), ("0", "give 1 or more")])
def test_compile_scaling_refuses_a_bad_length(value, why):
    done = run_tool("compile_scaling.py", value)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert why in done.stderr


def test_compile_scaling_lowers_the_lengths_it_is_given():
    done = run_tool("compile_scaling.py", "3")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["3"] and int(rows[0][4]) > 0  # kernels


def test_gpu_check_without_cupy_is_one_line():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here: the check would run")
    except ImportError:
        pass
    done = run_tool("gpu_check.py")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "CuPy" in done.stderr


def test_plan_listings_help_writes_nothing(tmp_path):
    """`--help` was taken for the output folder (710 listings written under ./--help)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "plan_listings.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and "OUT_DIR" in done.stdout
    assert list(tmp_path.iterdir()) == []
    bad = run_tool("plan_listings.py", str(tmp_path / "out"), str(tmp_path))
    assert bad.returncode == 2 and "no seqgraph package" in bad.stderr
    assert not (tmp_path / "out").exists()
