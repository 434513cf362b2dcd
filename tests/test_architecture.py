"""The dependency rule of seqgraph's packages, read from the source with `ast`.

Stages, bottom to top (a module may import its own stage and the stages below it):

    errors < engine < spec < plan < runtime < train | inspect < apps < api_runs < predict
        < api | serve < cli

`api` and `serve` (the HTTP server over predict) also stand side by side, and `experiments`
(sweeps, compare, report) beside `predict`.
`train` and `inspect` stand side by side and never import each other. Every import counts,
also one inside a function: a deferred import still ties the two modules together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "seqgraph"

RANK = {
    "errors": 0,
    "engine": 1,
    "spec": 2,
    "plan": 3,
    "runtime": 4,
    "train": 5,
    "inspect": 5,
    "apps": 6,
    "api_runs": 7,
    "predict": 8,  # reads run folders through api_runs; api re-exports it
    "experiments": 8,  # sweeps, compare, report: over train.loop, api_runs and inspect
    "api": 9,
    "serve": 9,  # HTTP over predict (seqgraph[serve]); cli starts it; api never imports it
    "cli": 10,
    "__main__": 11,
    "__init__": 11,
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The seqgraph modules `path` imports (`from seqgraph.x import y` names module
    seqgraph.x.y when that is a module, else seqgraph.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; write `from seqgraph... import`")
            base = node.module or ""
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    files = {module_name(path, package): path for path in package.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        for target in imported_modules(path, set(files)):
            if target != name and not name.startswith(target + "."):  # a package's own __init__
                graph.add_edge(name, target)
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(graph: nx.DiGraph) -> list[str]:
    found = []
    for source, target in graph.edges:
        a, b = stage(source), stage(target)
        if a == b:
            continue
        if RANK[b] >= RANK[a]:
            found.append(f"{source} imports {target}: {a} may not import {b}")
    for cycle in nx.simple_cycles(graph):
        found.append("import cycle: " + " -> ".join(cycle + cycle[:1]))
    return found


def test_every_stage_is_ranked():
    assert {stage(m) for m in import_graph().nodes} <= set(RANK)


def test_imports_only_go_down_and_close_no_cycle():
    assert violations(import_graph()) == []


def test_engine_imports_nothing_of_seqgraph_but_errors():
    graph = import_graph()
    outside = {
        (m, t)
        for m, t in graph.edges
        if stage(m) == "engine" and stage(t) not in ("engine", "errors")
    }
    assert outside == set()


def names_an_app(path: Path) -> bool:
    """Whether a module's strings name an application module (`seqgraph.apps.<name>`, as an
    import by name would); the entry-point group `seqgraph.apps` itself is no application."""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.search(r"seqgraph\.apps\.\w", node.value)
        for node in ast.walk(tree)
    )


def test_nothing_below_apps_names_an_app():
    below = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if RANK[stage(module_name(path))] < RANK["apps"] and names_an_app(path)
    ]
    assert below == []


def private_imports(package: Path = PACKAGE) -> list[str]:
    """`from seqgraph.x import _name`: a module reaching into another's private names (the
    sign of one idea split over two files)."""
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqgraph"):
                found += [
                    f"{module_name(path, package)} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    return sorted(found)


def test_no_module_imports_another_ones_private_names():
    assert private_imports() == []


def write_package(root: Path, modules: dict[str, str]) -> Path:
    for name, source in modules.items():
        path = root / "seqgraph" / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "seqgraph"


def test_the_rule_catches_an_upward_import_and_a_cycle(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__": "",
            "errors": "",
            "engine.__init__": "",
            "engine.graph": "from seqgraph.errors import x\n",
            "engine.ops": "def f():\n    from seqgraph.train.loop import run\n",
            "train.__init__": "",
            "train.loop": "from seqgraph.train import data\n",
            "train.data": "import seqgraph.train.loop\n",
            "inspect.__init__": "",
            "inspect.render": "from seqgraph.train import loop\n",
        },
    )
    found = violations(import_graph(package))
    assert "seqgraph.engine.ops imports seqgraph.train.loop: engine may not import train" in found
    assert (
        "seqgraph.inspect.render imports seqgraph.train.loop: inspect may not import train" in found
    )
    assert any(v.startswith("import cycle:") and "seqgraph.train.data" in v for v in found)
    assert not any("engine.graph" in v for v in found)  # errors is below everything
    assert len(found) == 3
