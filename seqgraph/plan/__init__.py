"""The plan: an unrolled graph lowered to a flat list of kernels over preallocated buffers.

Owns the analysis of step classes and recurrences (`analysis`), the graph rewrites that keep
every value the same (`rewrites`, `siblings`), where each value and gradient lives (`layout`,
`liveness`), the kernels (`kernels`, `kernels_vjp`, `local_factors`, `fusion`, and
`ckernels`: compiled C loops for fused groups on the CPU; `programs`: runs of those and of
BLAS products, through NumPy's own BLAS (`blas`), as one C call; `stamps`: the backward's
compiled chains found once per step structure) and the lowering that drives them (`lower`,
`backward`). Every op fact it uses comes from the engine's
op records.

Imports the engine, the spec's types and `seqgraph.errors`; never `Model`, training,
inspection or an application.
"""
