"""`seqgraph render` through main(argv): .dot needs no Graphviz, .svg does, bad input exits 2."""

from __future__ import annotations

import shutil

import pytest

from seqgraph.cli import main

SPEC = """model:
  pattern: many_to_one
  input: {type: vectors, size: 2}
  target: {type: ids, vocab: 3}
  layers: [{cell: lstm, hidden: 4, bidirectional: true}]
"""


def test_render_dot_and_svg(tmp_path, capsys):
    spec = tmp_path / "bi.yaml"
    spec.write_text(SPEC)
    dot = tmp_path / "g.dot"
    assert main(["render", str(spec), "--steps", "3", "--lengths", "3,2", "-o", str(dot)]) == 0
    source = dot.read_text()
    assert source.count("LSTM l0.fwd") == 3 and source.count("LSTM l0.bwd") == 3
    assert main(["render", str(spec), "--fold", "-o", str(tmp_path / "f.dot")]) == 0
    assert (tmp_path / "f.dot").read_text().count("LSTM l0.fwd") == 1
    assert main(["render", str(spec), "--lengths", "3,x", "-o", str(dot)]) == 2
    assert "--lengths takes whole numbers" in capsys.readouterr().err
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    svg = tmp_path / "g.svg"
    assert main(["render", str(spec), "--grad", "-o", str(svg)]) == 0
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
