"""Line counts per module and per function, against the style guide's budget.

    python tools/loc.py [PATH ...]     (default: seqgraph/)

Modules over ~400 lines and functions over ~40 lines are flagged with `!`. Exit status 0
always: the budget is a guide, not a gate.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MODULE_BUDGET = 400
FUNCTION_BUDGET = 40


def functions(tree: ast.AST):
    """(qualified name, line count) of every function and method, nested ones included."""
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child.end_lineno - child.lineno + 1
                stack.append((child, name + "."))
            else:
                stack.append((child, prefix))


def report(paths: list[Path]) -> list[str]:
    lines, total = [], 0
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    for file in files:
        text = file.read_text(encoding="utf-8")
        count = len(text.splitlines())
        total += count
        mark = "!" if count > MODULE_BUDGET else " "
        lines.append(f"{mark} {count:5d}  {file}")
        for name, size in sorted(functions(ast.parse(text)), key=lambda x: -x[1]):
            if size > FUNCTION_BUDGET:
                lines.append(f"! {size:5d}      {name}()")
    lines.append(f"  {total:5d}  total")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args] or [Path(__file__).resolve().parents[1] / "seqgraph"]
    print("\n".join(report(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
