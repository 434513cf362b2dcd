"""The spec: a user's YAML, checked, and unrolled into the engine's graph.

Owns reading YAML with line numbers (`yaml_lines`), the JSON Schema (`schema`), the checked
spec as frozen dataclasses (`types`, built by `load` and `model`), the cell equation language
(`equations`), the standard cells (`cells/*.yaml`, data, not code) and unrolling over time
(`unroll`).

Imports only the engine and `seqgraph.errors`; never a plan, a `Model`, training or an
application.
"""
