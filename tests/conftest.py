"""Shared pytest setup: prints the worst gradient error each check saw (see support.WORST)."""

from __future__ import annotations

import os

import pytest
import support
from hypothesis import settings

# CI runs the property tests on the same examples every time (a red run must be reproducible,
# and a rare example must not turn a landing red by chance); locally they search afresh.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter):
    if not support.WORST:
        return
    terminalreporter.section("worst gradient errors per check")
    for check, (error, where) in sorted(support.WORST.items()):
        terminalreporter.write_line(f"{check:<56} {error:.2e}  {where}")


@pytest.fixture(autouse=True)
def factors_in_gradients_at_any_size(monkeypatch):
    """Tests build tiny models: let their local factors wait in their inputs' gradients as a
    medium model's do (`local_factors.GRADIENT_REGION_MIN_BYTES`; its own test restores it)."""
    from seqgraph.plan import local_factors

    monkeypatch.setattr(local_factors, "GRADIENT_REGION_MIN_BYTES", 0)


@pytest.fixture(params=["compiled", "numpy"])
def cpu_kernels(request, monkeypatch):
    """Run a test twice: fused groups as compiled C kernels (where a C compiler is found)
    and as NumPy ufunc chains (`SEQGRAPH_CPU_KERNELS=0`), so both paths stay tested."""
    from seqgraph.plan import ckernels

    monkeypatch.setenv(ckernels.SWITCH, "1" if request.param == "compiled" else "0")
    return request.param
