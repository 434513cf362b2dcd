"""The op table: one record per primitive (`Op`, in `table`), gathered from the modules of this
package.

Importing the package registers every op; each module registers its own group (`core`:
arithmetic, products, reductions and views; `loss`: lookups and losses; `image`: convolution
and pooling; `norm`: square roots and layer normalisation; `sequence`: stacking and CTC;
`noise`: dropout, whose mask the runtime draws).
`arrays` and `buffers` hold the helpers they share (array API compositions; `out=` kernel
helpers the plan uses too).
"""

from seqgraph.engine.ops import core, image, loss, noise, norm, sequence  # noqa: F401  (register ops)
from seqgraph.engine.ops.table import NEGATE, OPS, VARIADIC, Op, UfuncVJP, op, unbroadcast

__all__ = ["NEGATE", "OPS", "VARIADIC", "Op", "UfuncVJP", "op", "unbroadcast"]
