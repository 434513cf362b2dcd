"""`seqgraph report RUN_DIR`: one self-contained HTML page about a run, to read in a browser
or send to a colleague. No network: every figure is inline (PNG as a data: URI, the graph as
SVG), the page has no script, and CSS makes it readable from a phone to a desktop.

Sections: summary and final scores, the spec as run, the curves (loss and accuracy against
step and wall time), the unrolled graph, the gradient ledger heatmap of one batch, the
confusion matrix (classifiers) or a text sample (character models), the run folder's other
figures (an application's attention maps, generated images), the machine and the timings.
A section that cannot be made here (no Graphviz, the data moved) says why in one line.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
import time
from pathlib import Path

from seqgraph import api_runs
from seqgraph.errors import SeqgraphError
from seqgraph.experiments import compare
from seqgraph.experiments.runs import read_run
from seqgraph.inspect.render import render_model, render_to_file
from seqgraph.train import run_folder

GRAPH_STEPS = 3  # time steps of the drawn unrolled graph: enough to see the recurrence
SAMPLE_LENGTH = 300
OWN_FIGURES = ("loss.png", "confusion.png")  # drawn again here, not listed as the run's own

STYLE = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2127;
       max-width: 1100px; margin: 0 auto; padding: 12px 16px; }
h1 { font-size: 1.6em; margin: 0.4em 0; overflow-wrap: anywhere; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; margin-top: 1.6em; }
img, svg { max-width: 100%; height: auto; display: block; }
figure { margin: 0.5em 0; }
figcaption, .note { color: #57606a; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 8px 10px; overflow-x: auto; font-size: 13px; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.95em; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def write_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default RUN_DIR/report.html)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    path = Path(output) if output else run_dir / "report.html"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqgraph-report-") as scratch:
        sections = _sections(run, Path(scratch))
    made = time.perf_counter() - began
    page = _page(run, sections, made)
    run_folder.atomic_write(path, lambda handle: handle.write(page.encode()), "pass -o FILE")
    return path


def _sections(run, scratch: Path) -> list[tuple[str, str]]:
    model, missing = None, ""
    try:
        model = api_runs.load_run(run.run_dir)
    except SeqgraphError as exc:  # the curves and the spec still make a report
        missing = str(exc)
    guarded = lambda make: _guarded(make, missing)  # noqa: E731
    out = [("Summary", _summary(run, model))]
    out.append(("Curves", _curves(run, scratch)))
    out.append(("Spec", f"<pre>{html.escape(_spec_text(run.run_dir))}</pre>"))
    out.append(("Unrolled graph", guarded(lambda: _graph(model, scratch))))
    out.append(("Gradient ledger", guarded(lambda: _ledger(run.run_dir, scratch))))
    out.append(("Validation", guarded(lambda: _validation(run.run_dir, scratch))))
    if model is not None and model.run_facts.get("kind") == "stream":
        out.append(("Sample", guarded(lambda: _sample(run.run_dir))))
    figures = _own_figures(run.run_dir)
    if figures:
        out.append(("Figures of the run", figures))
    out.append(("Machine and timings", _machine(run)))
    return out


def _guarded(make, missing: str) -> str:
    """A section's HTML, or one line saying why it could not be made here (`missing`: why
    the run's model could not be loaded)."""
    if missing:
        return _note(f"no model to show: {missing}")
    try:
        return make()
    except (SeqgraphError, OSError) as exc:
        return _note(f"not available here: {exc}")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _png(path: Path, alt: str, caption: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'
    )


def _table(rows: list[tuple[str, object]]) -> str:
    cells = []
    for name, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        kind = ' class="num"' if isinstance(value, (int, float)) else ""
        cells.append(f"<tr><th>{html.escape(name)}</th><td{kind}>{html.escape(shown)}</td></tr>")
    return f'<div class="wide"><table>{"".join(cells)}</table></div>'


def _summary(run, model) -> str:
    rows = [("run folder", str(run.run_dir.resolve()))]
    if model is not None:
        rows.append(("model", repr(model)))
        which = model.run_facts.get("checkpoint", "last")  # best.npz where the run has one
        rows.append((f"checkpoint shown ({which})", f"step {model.run_facts.get('step')}"))
    rows += [(k, v) for k, v in run.summary().items() if v is not None]
    return _table(rows)


def _curves(run, scratch: Path) -> str:
    if not run.records:
        return _note("metrics.jsonl holds no records yet")
    path = compare.draw([run], scratch / "curves.png")
    return _png(path, "training curves", "train loss (line) and validation (dots)")


def _spec_text(run_dir: Path) -> str:
    try:
        return (run_dir / "spec.yaml").read_text()
    except OSError as exc:
        return f"(no spec.yaml: {exc.strerror})"


def _graph(model, scratch: Path) -> str:
    """The unrolled graph as inline SVG, scaled by CSS (its fixed size removed)."""
    path = render_to_file(render_model(model, GRAPH_STEPS), scratch / "graph.svg")
    svg = path.read_text()
    svg = svg[svg.index("<svg") :]  # no XML prolog or DOCTYPE inside HTML
    svg = re.sub(r'<svg width="[^"]*" height="[^"]*"', '<svg role="img"', svg, count=1)
    caption = f"unrolled over {GRAPH_STEPS} steps; parameters are shared by every step"
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _ledger(run_dir: Path, scratch: Path) -> str:
    result = api_runs.gradflow(run_dir, out=scratch / "gradflow")
    caption = (
        f"‖∂L/∂h_t‖ and per-step parameter contributions of one batch at the checkpoint; "
        f"loss {result['loss']:.4g}, global gradient norm {result['global_norm']:.4g}"
    )
    return _png(Path(result["heatmap"]), "gradient ledger heatmap", caption)


def _validation(run_dir: Path, scratch: Path) -> str:
    result = api_runs.evaluate_run(run_dir, confusion=scratch / "confusion.png")
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float))]
    parts = [_table(rows)]
    if result.get("confusion_png"):
        parts.append(_png(Path(result["confusion_png"]), "confusion matrix", "rows true"))
    return "".join(parts)


def _sample(run_dir: Path) -> str:
    text = api_runs.sample(run_dir, length=SAMPLE_LENGTH, seed=0)
    return f"<pre>{html.escape(str(text))}</pre>"


def _own_figures(run_dir: Path) -> str:
    found = sorted(p for p in run_dir.glob("*.png") if p.name not in OWN_FIGURES)
    return "".join(_png(p, p.stem, p.name) for p in found)


def _machine(run) -> str:
    try:
        facts = json.loads((run.run_dir / "machine.json").read_text())
    except (OSError, ValueError):
        facts = {"machine": "not recorded (a run folder from before machine.json)"}
    rows = list(facts.items())
    last = run.train[-1] if run.train else {}
    wall = run.summary().get("wall_s")
    if wall:
        rows.append(("wall time (s)", wall))
        rows.append(("steps per second", run.summary()["steps"] / wall))
    if "tokens_per_s" in last:
        rows.append(("tokens per second (last log)", last["tokens_per_s"]))
    return _table(rows)


def _page(run, sections: list[tuple[str, str]], made: float) -> str:
    title = html.escape(f"{run.spec.get('name', run.label)} — seqgraph run report")
    body = "".join(
        f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections
    )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>"
        f"<h1>{title}</h1>{body}"
        f'<p class="note">made by seqgraph report on {stamp} in {made:.1f} s</p>'
        "</body></html>\n"
    )
