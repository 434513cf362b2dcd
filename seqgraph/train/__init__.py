"""Training: the loop behind `seqgraph run`, and everything a run folder holds.

Owns the loop with true resume (`loop`), optimizers and schedules (`optim`), data streams
and sequence sets (`data`), held-out scores (`evaluate`), the run folder with atomic
checkpoints (`run_folder`), progress output (`progress`) and the communicator of a
data-parallel run under mpiexec (`distributed`; a no-op in one process). Applications
plug their data sources, metrics and artifacts in through a registry; training names none of
them.

Imports the runtime and the stages below it; never `inspect`, an application, the API or the
CLI.
"""
