"""Data-parallel training across processes: the communicator the loop talks to.

`mpiexec -n N seqgraph run SPEC` trains on N ranks with no flag: `communicator()` sees the
variables mpiexec sets and only then imports mpi4py; without them it returns `Single`, whose
every method is the identity, so a one-process run is the loop it always was, bit for bit.

The global batch (`train.batch_size`) is drawn on every rank from the same (seed, step) and
each rank keeps its rows (`shard`). A shard's loss is the mean over ITS sequences, so the sum
that one process on the whole batch would get is rebuilt from the shards' sums: every rank
scales its gradient by its row count, one all-reduce adds them in a flat buffer cut into
buckets, and the sum is divided by the global row count. Clipping then sees the global norm
and every rank applies the same optimizer step, so parameters stay identical; `check_agreement`
compares a hash of them across ranks and stops a run whose ranks drifted apart. Rank 0 alone
writes the run folder (`writes`); a carried text state is per rank and gathered to rank 0 for
a checkpoint, which therefore resumes on any number of ranks.

An error on one rank ends every rank (`fail_together`): the others would wait in the next
all-reduce forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import traceback
from typing import Any, NamedTuple

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import SeqgraphError

# Variables the MPI launchers set in each process they start: Open MPI's mpiexec, then
# MPICH/Intel MPI (PMI) and Slurm's srun with PMIx. Only with one of them is mpi4py imported,
# so a plain `seqgraph run` never loads an MPI library.
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
# PyTorch DDP's default bucket (bucket_cap_mb=25): big enough that each all-reduce is
# bandwidth-bound, small enough that a model of many parameters is several messages in flight.
BUCKET_BYTES = 25 * 2**20


class DistributedError(SeqgraphError):
    """The ranks of a run disagree or cannot go on together."""


class StepSums(NamedTuple):
    """One step's numbers over the global batch, the same on every rank."""

    loss: float  # the loss one process on the whole batch gives: per sequence, batch mean
    rows: int  # sequences in the global batch
    tokens: int  # target steps that add loss, over the global batch
    stop: bool  # some rank was asked to stop (Ctrl-C): all stop after this step


def under_mpi(environ=None) -> bool:
    """True in a process started by mpiexec (or srun) with more than one rank."""
    environ = os.environ if environ is None else environ
    for name in MPI_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value) > 1
    return False


def communicator(environ=None) -> Single:
    """`Mpi` under mpiexec with more than one rank, else `Single`."""
    if not under_mpi(environ):
        return Single()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            "started by mpiexec, but mpi4py is not installed; pip install 'seqgraph[mpi]' "
            "(it needs an MPI library: apt-get install openmpi-bin libopenmpi-dev)"
        ) from None
    return Mpi(MPI)


def row_range(rows: int, size: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of `rank`'s rows when `rows` are split over `size` ranks in order; the
    first `rows % size` ranks hold one more (as numpy.array_split cuts)."""
    base, extra = divmod(rows, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def fingerprint(params: dict[str, Any]) -> bytes:
    """A hash of every parameter's bytes, in name order: equal iff the ranks agree bit for
    bit (they must: they apply the same update to the same numbers)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(to_numpy(params[name])).tobytes())
    return digest.digest()


class Discarded:
    """metrics.jsonl for a rank that writes nothing: records go nowhere."""

    def write(self, record: dict) -> None:
        pass

    def read(self) -> list[dict]:
        return []


class Single:
    """One process: the whole batch, nothing to add up, and this process writes."""

    rank, size, writes = 0, 1, True

    def fail_together(self):
        return contextlib.nullcontext()

    def use_local_gpu(self, backend: str | None) -> None:
        pass

    def shard(self, batch: dict) -> dict:
        return batch

    def sum_step(
        self, loss: float, grads: dict, rows: int, tokens: int, stop: bool
    ) -> tuple[dict, StepSums]:
        return grads, StepSums(loss, rows, tokens, stop)

    def share(self, value):
        """Rank 0's `value` on every rank."""
        return value

    def own_rows(self, carry: dict) -> dict:
        """This rank's rows of a state carried for the whole global batch."""
        return carry

    def gather_rows(self, carry: dict) -> dict:
        """The whole batch's carried state on rank 0 (rows in rank order); {} elsewhere."""
        return carry

    def check_agreement(self, params: dict, step: int) -> None:
        pass


class Mpi(Single):
    """Ranks of MPI_COMM_WORLD (mpi4py); gradients are summed with MPI's all-reduce, or NCCL's
    for CuPy arrays when CuPy has it."""

    def __init__(self, mpi):
        self.mpi = mpi
        self.comm = mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.writes = self.rank == 0
        self.buffer: GradientBuffer | None = None

    @contextlib.contextmanager
    def fail_together(self):
        """An error on this rank: print it (naming the rank) and abort the whole job, since
        the other ranks would otherwise wait for this one in the next collective forever."""
        try:
            yield
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt and bugs end the job too
            if not isinstance(exc, (SeqgraphError, OSError)):
                traceback.print_exc()
            message = exc if isinstance(exc, SeqgraphError) else f"{type(exc).__name__}: {exc}"
            print(f"error: rank {self.rank} of {self.size}: {message}", file=sys.stderr)
            sys.stderr.flush()
            self.comm.Abort(2)

    def use_local_gpu(self, backend: str | None) -> None:
        """With CuPy, rank k of a machine uses its GPU k (mod the GPUs it has): one per rank."""
        if backend != "cupy":
            return
        local = next((os.environ[v] for v in LOCAL_RANK_VARIABLES if v in os.environ), "0")
        import cupy

        cupy.cuda.Device(int(local) % cupy.cuda.runtime.getDeviceCount()).use()

    def shard(self, batch: dict) -> dict:
        rows = len(batch["y"])
        lo, hi = row_range(rows, self.size, self.rank)
        out = {
            key: value[lo:hi] if isinstance(value, np.ndarray) and len(value) == rows else value
            for key, value in batch.items()
        }
        if "dropout" in batch:  # draw the whole batch's masks, keep these rows (runtime.masks)
            out["dropout"] = {**batch["dropout"], "row_offset": lo, "global_rows": rows}
        return out

    def sum_step(
        self, loss: float, grads: dict, rows: int, tokens: int, stop: bool
    ) -> tuple[dict, StepSums]:
        if self.buffer is None:
            self.buffer = GradientBuffer(grads, self.comm, self.mpi)
        extras = np.array([loss * rows, rows, tokens, float(stop)], dtype=np.float64)
        summed, extras = self.buffer.all_reduce(grads, rows, extras)
        loss_sum, total_rows, total_tokens, stops = extras
        sums = StepSums(loss_sum / total_rows, int(total_rows), int(total_tokens), stops > 0)
        return {name: g / sums.rows for name, g in summed.items()}, sums

    def share(self, value):
        return self.comm.bcast(value, root=0)

    def own_rows(self, carry: dict) -> dict:
        out = {}
        for name, value in carry.items():
            lo, hi = row_range(len(value), self.size, self.rank)
            out[name] = value[lo:hi]
        return out

    def gather_rows(self, carry: dict) -> dict:
        pieces = self.comm.gather({k: to_numpy(v) for k, v in carry.items()}, root=0)
        if not self.writes:
            return {}
        names = next((list(p) for p in pieces if p), [])
        return {name: np.concatenate([p[name] for p in pieces if p]) for name in names}

    def check_agreement(self, params: dict, step: int) -> None:
        hashes = self.comm.allgather(fingerprint(params))
        differ = [rank for rank, h in enumerate(hashes) if h != hashes[0]]
        if differ:
            raise DistributedError(
                f"the parameters of ranks {differ} differ from rank 0's at step {step}: the "
                "ranks no longer train one model. Check that every machine runs the same "
                "seqgraph, NumPy and BLAS and reads the same data file; resume from the last "
                "checkpoint with --resume"
            )


class GradientBuffer:
    """Every gradient in one flat buffer (names in sorted order), cut into buckets of about
    BUCKET_BYTES that are all-reduced as non-blocking messages in flight together.

    The plan hands over all gradients at the end of its backward pass, so the buckets overlap
    each other, not the backward pass."""

    def __init__(self, grads: dict, comm, mpi):
        self.comm, self.mpi = comm, mpi
        self.names = sorted(grads)
        first = grads[self.names[0]]
        self.xp = _namespace_of(first)
        self.shapes = {name: tuple(grads[name].shape) for name in self.names}
        sizes = [int(np.prod(self.shapes[name])) for name in self.names]
        self.offsets = dict(zip(self.names, np.cumsum([0] + sizes[:-1]).tolist()))
        self.flat = self.xp.zeros(sum(sizes), dtype=first.dtype)
        per_bucket = max(1, BUCKET_BYTES // self.flat.itemsize)
        self.buckets = [
            (lo, min(lo + per_bucket, self.flat.size))
            for lo in range(0, self.flat.size, per_bucket)
        ]
        self.nccl = _nccl_sum(comm, self.flat) if self.xp is not np else None

    def all_reduce(self, grads: dict, rows: int, extras: np.ndarray) -> tuple[dict, np.ndarray]:
        """(sum over ranks of rows * grads, sum over ranks of `extras`)."""
        for name in self.names:
            lo = self.offsets[name]
            view = self.flat[lo : lo + grads[name].size].reshape(self.shapes[name])
            self.xp.multiply(grads[name], rows, out=view)
        sum_op = self.mpi.SUM
        requests = [self.comm.Iallreduce(self.mpi.IN_PLACE, extras, op=sum_op)]
        if self.nccl is not None:
            self.nccl(self.flat)
        else:
            host = self.flat if self.xp is np else to_numpy(self.flat)
            for lo, hi in self.buckets:
                requests.append(self.comm.Iallreduce(self.mpi.IN_PLACE, host[lo:hi], op=sum_op))
        self.mpi.Request.Waitall(requests)
        if self.xp is not np and self.nccl is None:
            self.flat[...] = self.xp.asarray(host)
        summed = {
            name: self.flat[self.offsets[name] : self.offsets[name] + int(np.prod(shape))]
            .reshape(shape)
            .copy()
            for name, shape in self.shapes.items()
        }
        return summed, extras


def _namespace_of(array):
    """numpy for host arrays; cupy for device arrays (the only other kind a run trains on)."""
    if isinstance(array, np.ndarray):
        return np
    import cupy

    return cupy


def _nccl_sum(comm, flat):
    """An in-place NCCL all-reduce of `flat` (a CuPy array), or None where CuPy has no NCCL
    (then the buffer goes through host memory and MPI). Untested here: no GPU on this
    machine; it is the documented cupy.cuda.nccl API, with the unique id sent by MPI."""
    import cupy

    if not getattr(cupy.cuda, "nccl_enabled", False):  # a CuPy built without NCCL
        return None
    from cupy.cuda import nccl

    unique_id = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
    peers = nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())
    kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    kind = kinds[np.dtype(flat.dtype)]

    def all_reduce(buffer) -> None:
        stream = cupy.cuda.get_current_stream()
        peers.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, kind, nccl.NCCL_SUM, stream.ptr
        )
        stream.synchronize()

    return all_reduce
