"""Shared pytest setup: prints the worst gradient error each check saw (see support.WORST)."""

from __future__ import annotations

import support


def pytest_terminal_summary(terminalreporter):
    if not support.WORST:
        return
    terminalreporter.section("worst gradient errors per check")
    for check, (error, where) in sorted(support.WORST.items()):
        terminalreporter.write_line(f"{check:<56} {error:.2e}  {where}")
