"""The engine: what an unrolled computation is and how to run and differentiate it.

Owns the op table (`ops`: one record per primitive, with its forward, its VJP and every fact
a compiler needs), the graph (`graph`: nodes `(scope, name, t)`, parameters shared by every
step), the interpreter (`autodiff`: forward and the reverse-mode pass, the reference every
compiled form is tested against), the array backends (`backend`, `xp_extra`) and parameter
initialisers (`initializers`).

Never imports anything of seqgraph but `seqgraph.errors`: specs, plans, models and
applications are built on the engine, not the other way round.
"""
