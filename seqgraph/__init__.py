"""seqgraph: declarative recurrent networks, unrolled into explicit graphs and differentiated
in reverse mode on NumPy or CuPy."""

from .api import Model, load_spec
from .errors import (
    BackendError,
    DataError,
    GraphError,
    MissingVJPError,
    SeqgraphError,
    SpecError,
)
from .ops import OPS

__version__ = "0.1.0"

__all__ = [
    "OPS",
    "BackendError",
    "DataError",
    "GraphError",
    "MissingVJPError",
    "Model",
    "SeqgraphError",
    "SpecError",
    "load_spec",
]
