"""Inspection: seeing what a model computes and what BPTT sums.

Owns the Graphviz pictures of an unrolled graph (`render`, with what is drawn in
`render_scene` and where on the grid in `render_grid`), the per-step gradient ledger
(`gradflow`) and ONNX export (`onnx_export`).

Imports the runtime and the stages below it; never training internals, an application, the
API or the CLI.
"""
