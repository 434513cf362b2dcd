"""The runtime: a spec with parameters on a backend, fed with batches.

Owns `Model` (`model`), turning a user's batch into the graph's data nodes (`batch`) and
drawing dropout masks from (seed, step, node) (`masks`), running batches through a compiled
plan (`runner`), gradient checkpointing over segments (`segments`), sampling from a trained
model (`generate`), whether a model fits in memory (`memory`) and weight conventions of other
frameworks (`interop`: PyTorch, Keras and ONNX layouts of the same numbers).

Imports the engine, the spec and the plan; never training, inspection or an application.
"""
