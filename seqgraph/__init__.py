"""seqgraph: declarative recurrent networks, unrolled into explicit graphs and differentiated
in reverse mode on NumPy or CuPy."""

from seqgraph.api import Model, Predictor, load, load_run, load_spec, render
from seqgraph.engine.ops import OPS
from seqgraph.errors import (
    BackendError,
    DataError,
    GraphError,
    MissingVJPError,
    SeqgraphError,
    SpecError,
)

__version__ = "0.1.0"

__all__ = [
    "OPS",
    "BackendError",
    "DataError",
    "GraphError",
    "MissingVJPError",
    "Model",
    "Predictor",
    "SeqgraphError",
    "SpecError",
    "load",
    "load_run",
    "load_spec",
    "render",
]
