"""The op table: one record per primitive (`Op`), gathered from the modules of this package.

Importing the package registers every op; each module registers its own group (`core`:
arithmetic, products, reductions and views; `loss`: lookups and losses; `image`: convolution
and pooling; `sequence`: stacking and CTC).
"""

from seqgraph.engine.ops import image, loss, sequence  # noqa: F401  (register their ops)
from seqgraph.engine.ops.core import OPS, VARIADIC, Op, get, op, unbroadcast

__all__ = ["OPS", "VARIADIC", "Op", "get", "op", "unbroadcast"]
