"""Step programs: a run of a plan's compiled kernels and BLAS products as one foreign call.

After the lowering, a recurrent step on NumPy is a product (`np.dot(h, W, out=z)`), a
compiled group or chain (`ckernels.py`), another product...: one Python call each, about 300
for a training step of the small LSTM benchmark, and at small sizes the calls cost as much
as the work (np.dot's own overhead is about 1 us). Here each run of two or more such kernels
in a kernel list becomes one kernel: a block of int64 words, 16 per instruction, that one C
loop (`EXECUTOR`) walks, calling each compiled kernel through its address with its argument
block, each product as the `cblas_sgemm`/`cblas_dgemm` (one row: `gemv`) call of NumPy's own
BLAS (`blas.py`) with the arguments `np.dot` passes, and each sum of rows (`np.add`, a bias
to each row) as a loop. Plan buffers never move, so the block is made once.

Two things make a step's products faster than np.dot's:
- Packed weights. OpenBLAS copies the whole weight matrix into its panels on every call,
  which at a recurrent step's sizes (32 x 128 by 128 x 512) costs about what the
  multiply-adds do. A product by a weight that the run makes twice or more (`_packed`) packs
  the weight on its first use into panels of 32 (float64: 16) columns, and every use runs
  the executor's own AVX-512 loop over them: each element the fused multiply-adds of its
  row and column in k order; np.dot's bits where OpenBLAS's kernel sums the same way (its
  SkylakeX kernels up to K = 256), the last bits apart elsewhere (README: Speed). Without
  AVX-512 the instruction is NumPy's gemm call.
- Threads of the executor's own. While a plan runs (`threads_shared`), NumPy's BLAS is set
  to one thread and its thread count is lent to the programs, which split each packed
  product by panels, and each larger BLAS product by rows or columns (one-thread BLAS calls
  on each share), and each larger compiled group or chain by rows, over threads that
  spin while a program runs. The number of threads changes no bit of a packed product or
  a compiled loop; a BLAS share may round apart from the whole call in the last bits
  (OpenBLAS picks its kernel by size).

On the 2-core development machine (`tools/bench.py`, README: Speed) the small LSTM's
training step took 4.68 -> 3.15 ms, the medium one's 58.5 -> 46.5 ms (352 GFLOP/s, 76 % of
the GEMM peak), before and after in the same rounds.

`SEQGRAPH_CPU_PROGRAMS=0` leaves every kernel its own call; `SEQGRAPH_CPU_POOL=0` keeps the
programs but neither packs nor lends threads (NumPy's BLAS threads as they are). Compiled
kernels off, NumPy's BLAS not found (`blas.find`) or CuPy: nothing changes.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

import numpy as np

from seqgraph.plan import blas, ckernels
from seqgraph.plan.program_source import EXECUTOR

SWITCH = "SEQGRAPH_CPU_PROGRAMS"
POOL_SWITCH = "SEQGRAPH_CPU_POOL"  # "0": no packed products, no threads of the programs' own
WIDTH = 16  # int64 words per instruction: kind, then the kernel's or the product's
# an instruction's kind
KERNEL, SGEMM, DGEMM, SGEMV, DGEMV, SADD, DADD, SPACKED, DPACKED, HALVES = range(10)
ROW_MAJOR, COL_MAJOR, NO_TRANS, TRANS = 101, 102, 111, 112  # CBLAS's enums
# a program with this much product work (~50 us) releases the GIL while it runs, as NumPy
# does around BLAS; a shorter one keeps it: releasing costs 0.6 us a call, and a tiny
# model's step makes about 14 of them in 66 us
RELEASE_GIL_FLOPS = 1e7
# a packed product with this much work (~5 us on one core) is split by panels over the
# threads that `threads_shared` lends a program; a smaller one runs on the calling thread
SHARED_FLOPS = 1e6
# a BLAS product from this much (~20 us): each share is a BLAS call of its own, with its
# own packing and overhead (tiny's 25 x 65 by 65 x 400 input projection lost by a split);
# by rows where it is taller than wide, else by columns (each call packs the smaller share)
SHARED_BLAS_FLOPS = 4e6
SPLIT_COLUMNS, SPLIT_ROWS = 1, 2
# a compiled group or chain that reads and writes this many values (elements times
# operands) runs its rows in two halves, one on a lent thread: the small LSTM's gate loop
# (32 x 128 elements, 12 operands, about 7 us on one core) is split, the long one's
# (16 x 64) is not (about 1 us: the hand-over would cost half of what it saves)
SHARED_VALUES = 32768
# the threads a program may use now: set by `threads_shared`, read by the executor
POOL_THREADS = np.zeros(1, np.int64)


def enabled() -> bool:
    """Programs are wanted (the switch) and possible (compiled kernels, NumPy's BLAS)."""
    return os.environ.get(SWITCH, "1") != "0" and ckernels.enabled() and blas.find() is not None


def pool_enabled() -> bool:
    """Packed products and the programs' own threads are wanted (`POOL_SWITCH`)."""
    return os.environ.get(POOL_SWITCH, "1") != "0"


class threads_shared:  # noqa: N801 - a context manager, named as one reads it
    """While a plan runs: NumPy's BLAS to one thread, and its thread count lent to the
    programs instead, which split their products over threads of their own (`EXECUTOR`).
    OpenBLAS's threads spin for about 0.1 s after each call they share, without yielding
    the core; a program's thread beside one waits out the scheduler's time slices (small
    LSTM steps of 40 to 56 ms instead of 3.4 with both pools at work), so only one may.
    Nested (a plan run within a training run), the outer one keeps them."""

    def __enter__(self):
        self.lent = 0
        wanted = not POOL_THREADS[0] and pool_enabled()
        counts = _thread_counts() if wanted else None
        if counts is not None:
            get, set_threads = counts
            threads = get()
            if threads > 1:
                set_threads(1)
                POOL_THREADS[0] = self.lent = threads
        return self

    def __exit__(self, *_):
        if self.lent:
            POOL_THREADS[0] = 0
            _thread_counts()[1](self.lent)


def borrow(kernels: list) -> bool:
    """Whether a kernel list has a program with work to share over threads: only such a
    list is worth `threads_shared` (about 3 us, 5 % of a tiny model's step)."""
    return any(getattr(k, "shares", False) for k in kernels)


@lru_cache(maxsize=1)
def _thread_counts() -> tuple | None:
    """(get, set) of NumPy's BLAS thread count as Python callables, or None."""
    found = blas.find()
    if found is None or not found.set_threads:
        return None
    get = ctypes.CFUNCTYPE(ctypes.c_int)(found.threads)
    return get, ctypes.CFUNCTYPE(None, ctypes.c_int)(found.set_threads)


def link(kernels: list, weights: list = ()) -> list:
    """`kernels` with every run of two or more kernels that `instruction` expresses made
    one program (a kernel that keeps the run's kernels, as `program.kernels`); the others
    as they are. `weights`: arrays that hold the same values through a run once a kernel
    has written them (the parameters, backward's W^T copies); a product by one of them
    that the run makes twice or more is packed (`_packed`)."""
    if len(kernels) < 2 or not enabled():
        return list(kernels)
    out, run, words, flops = [], [], [], 0
    linker = _Linker(weights)
    for kernel in [*kernels, None]:
        step = None if kernel is None else linker.instruction(kernel)
        if step is not None:
            run.append(kernel)
            words += step
            flops += _flops(step)
            continue
        if len(run) > 1:
            words, packed = _packed(words) if pool_enabled() else (words, [])
            # where the executor reads how many threads it may use, if it has work to share
            pool = POOL_THREADS.ctypes.data if _shares(words) else 0
            block = np.array([len(run), pool, *words], np.int64)
            # NumPy lets other Python threads run while BLAS works; a long program does too
            long = flops >= RELEASE_GIL_FLOPS
            program = ckernels.function_kernel(EXECUTOR, block, release_gil=long)
            if program is None:  # the executor could not be built: each kernel on its own
                return list(kernels)
            program.kernels = run  # they hold the buffers the words point into
            program.packed, program.shares = packed, bool(pool)
            program.halves = linker.halves  # this run's: the words point into them
            out.append(program)
        else:
            out += run
        run, words, flops, linker.halves = [], [], 0, []
        if kernel is not None:
            out.append(kernel)
    return out


def _packed(words: list) -> tuple[list, list]:
    """A run's words with each product by a weight that the run makes twice or more (a
    recurrent step's) turned into a packed product (`EXECUTOR`: kinds SPACKED, DPACKED),
    the first of them packing the weight, and the packed buffers (aligned for the C loop's
    loads). 32 x 128 by 128 x 512 (the small LSTM's step) took 16.8 us on one thread, np.dot
    18.6 on two and 26.3 on one; split over two threads, about 9 us."""
    uses: dict = {}
    for n, kind in enumerate(words[::WIDTH]):  # a program has 100,000 words at T = 10,000
        if kind == SGEMM or kind == DGEMM:
            key = _weight_product(words, n * WIDTH)
            if key is not None:
                uses.setdefault(key, []).append(n * WIDTH)
    uses = {key: ats for key, ats in uses.items() if len(ats) > 1}
    buffers, words = [], list(words) if uses else words
    for (kind, b, ldb, tb, K, N), ats in uses.items():
        single = kind == SGEMM
        lanes = 32 if single else 16
        dtype = np.float32 if single else np.float64
        packed = _aligned(-(-N // lanes) * lanes * K, dtype)
        buffers.append(packed)
        for n, at in enumerate(ats):
            _, gemm, _, _, M, _, _, a, lda, _, _, c, ldc = words[at : at + 13]
            kind_packed, first = (SPACKED if single else DPACKED), int(n == 0)
            step = _words(kind_packed, gemm, packed.ctypes.data, a, lda, b, ldb, tb, c, ldc)
            step[10:15] = [M, N, K, first, int(2 * M * N * K >= SHARED_FLOPS)]
            words[at : at + WIDTH] = step
    return words, buffers


LOOPS = ("seqgraph_group_", "seqgraph_chain_")  # the compiled loops over rows (`ckernels`)


def _row_halves(pointer) -> tuple | None:
    """The argument blocks of a compiled group's or chain's (`LOOPS`) first and second half
    of its rows, where it has enough work to share (`SHARED_VALUES`) and two rows or more;
    None otherwise. Each row runs the same code in a half as in the whole (rows are the
    loops' outer loop), so its values are the same bits; and the halves write apart: what a
    group or chain writes has the loop's whole shape, one row of it per row (a chain reads
    a buffer it writes only as the very same view: `ckernels.chains`). The block is rows,
    cols, then (address, row stride in elements) per operand, the operands in
    `pointer.buffers`."""
    block, arrays = getattr(pointer, "_arr", None), getattr(pointer, "buffers", None)
    if block is None or arrays is None or len(block) != 2 + 2 * len(arrays):
        return None
    rows, cols = block[:2].tolist()
    if rows < 2 or rows * cols * len(arrays) < SHARED_VALUES:
        return None
    addresses = [a.ctypes.data for a in arrays]
    if list(block[2::2]) != addresses:
        return None
    first, second = block.copy(), block.copy()
    first[0] = half = rows // 2
    second[0] = rows - half
    second[2::2] += half * block[3::2] * np.array([a.itemsize for a in arrays], np.int64)
    return first, second


def _shares(words: list) -> bool:
    """Whether a run has a packed product, a BLAS product worth splitting or a compiled
    loop in halves."""
    kinds = words[::WIDTH]
    if HALVES in kinds:
        return True
    packed = [at for at, kind in enumerate(kinds) if kind in (SPACKED, DPACKED)]
    return any(words[at * WIDTH + 14] for at in packed) or any(
        words[at * WIDTH + 13] for at, kind in enumerate(kinds) if kind in (SGEMM, DGEMM)
    )


def _weight_product(words: list, at: int) -> tuple | None:
    """(kind, B's address, ldb, its transpose flag, K, N) of the gemm at words[at] if its
    right operand is a weight and its left one rows (`a` unit-stride along K), else None."""
    if not words[at + WIDTH - 1] or words[at + 2] != NO_TRANS or words[at + 4] < 2:
        return None
    kind, _, _, tb, _, N, K, _, _, b, ldb = words[at : at + 11]
    return kind, b, ldb, tb, K, N


def _aligned(size: int, dtype) -> np.ndarray:
    """A zeroed array of `size` elements starting on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(size + 64 // itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // itemsize
    return raw[skip : skip + size]


def instruction(kernel) -> list | None:
    """The WIDTH words that run a plan kernel in a program, or None if it is not one a
    program runs: a compiled kernel (`ckernels.is_compiled`: a C function of one argument
    block), a product `np.dot(a, b, out=c)` that NumPy hands to gemm or gemv, or a sum
    `np.add(a, b, out=c)` of rows (a bias added to each)."""
    return _Linker().instruction(kernel)


class _Linker:
    """`instruction` over one kernel list, with what every step repeats asked once: the
    address of each compiled function, and the layout of each weight matrix (the same array
    in every step's product). Ids are stable while the list holds the kernels."""

    def __init__(self, weights: list = ()):
        self.functions: dict = {}  # id(ctypes function) -> its address
        self.loops: dict = {}  # id(ctypes function) -> whether it is a group's or chain's
        # id(b) -> (b, its address, its gemm layout, C-, F-ordered, whether it is a weight)
        self.weights: dict = {}
        self.weight_ranges = [_extent(w) for w in weights if isinstance(w, np.ndarray)]
        self.halves: list = []  # the argument blocks of `_row_halves`, for the run at hand
        self.split = pool_enabled()

    def instruction(self, kernel) -> list | None:
        func = getattr(kernel, "func", None)
        if isinstance(func, ctypes._CFuncPtr):  # `ckernels.is_compiled`
            address = self.functions.get(id(func))
            if address is None:
                address = self.functions[id(func)] = ctypes.cast(func, ctypes.c_void_p).value
                self.loops[id(func)] = func.__name__.startswith(LOOPS)
            pointer = kernel.args[0]
            halves = _row_halves(pointer) if self.split and self.loops[id(func)] else None
            if halves is None:
                return _words(KERNEL, address, pointer.value)
            self.halves += halves  # `link` hands them to the run's program
            return _words(HALVES, address, pointer.value, *(h.ctypes.data for h in halves))
        if (func is np.dot or func is np.add) and len(kernel.args) == 2:
            out = kernel.keywords.get("out")
            if not isinstance(out, np.ndarray) or len(kernel.keywords) != 1:
                return None
            a, b = kernel.args
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                return None
            if not (a.dtype == b.dtype == out.dtype) or a.dtype not in (np.float32, np.float64):
                return None
            return self.product(a, b, out) if func is np.dot else _sum(a, b, out)
        return None

    def product(self, a, b, out) -> list | None:
        """The BLAS call `np.dot` makes for 2-D operands
        (numpy/_core/src/common/cblasfuncs.c): gemm, row-major, each matrix passed as it is
        where its rows are unit-stride, else transposed where its columns are, alpha 1,
        beta 0, where every dimension is at least 2; gemv with the matrix transposed where
        `a` is one row. None where NumPy goes another way (a column, a copy, syrk for the
        same data transposed) or `out` overlaps an operand."""
        if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or not out.flags.c_contiguous:
            return None
        (M, K), (K2, N) = a.shape, b.shape
        if K != K2 or out.shape != (M, N) or min(K, N) < 2:
            return None
        if np.shares_memory(a, b) or np.shares_memory(a, out) or np.shares_memory(b, out):
            return None
        weight = self.weights.get(id(b))
        if weight is None:
            flags, (lo, hi) = b.flags, _extent(b)
            is_weight = any(start <= lo and hi <= end for start, end in self.weight_ranges)
            layout = _blas_layout(b)
            weight = (b, b.ctypes.data, layout, flags.c_contiguous, flags.f_contiguous, is_weight)
            self.weights[id(b)] = weight
        _, w, (tb, ldb), c_ordered, f_ordered, is_weight = weight
        found, single = blas.find(), a.dtype == np.float32
        if M == 1:  # `a` is a row: gemv, the matrix C- or F-contiguous as NumPy makes it
            if c_ordered:
                order, lda = ROW_MAJOR, N
            elif f_ordered:
                order, lda = COL_MAJOR, K
            else:
                return None
            kind, gemv = (SGEMV, found.sgemv) if single else (DGEMV, found.dgemv)
            step = a.strides[1] // a.itemsize
            if step * a.itemsize != a.strides[1] or step <= 0:
                return None
            x, y = a.ctypes.data, out.ctypes.data
            return _words(kind, gemv, order, TRANS, K, N, w, lda, x, step, y)
        ta, lda = _blas_layout(a)
        if ta is None or tb is None:
            return None
        kind, gemm = (SGEMM, found.sgemm) if single else (DGEMM, found.dgemm)
        step = _words(kind, gemm, ta, tb, M, N, K, a.ctypes.data, lda, w, ldb, out.ctypes.data, N)
        if 2 * M * N * K >= SHARED_BLAS_FLOPS and max(M, N) >= 64:  # split over the threads
            step[13] = SPLIT_ROWS if M > N else SPLIT_COLUMNS
        step[WIDTH - 1] = int(is_weight)  # for `_packed`; the executor never reads it
        return step


def _flops(words: list) -> int:
    """The multiply-adds, twice, of a product instruction; 0 for any other."""
    if words[0] in (SGEMM, DGEMM):
        return 2 * words[4] * words[5] * words[6]
    return 2 * words[4] * words[5] if words[0] in (SGEMV, DGEMV) else 0


def _words(*words) -> list:
    return [*words] + [0] * (WIDTH - len(words))


def _sum(a, b, out) -> list | None:
    """out = a + b over rows: `a` and `out` of one shape, `b` of that shape too or one row
    (a bias) added to each; in place (`out` the very view of `a`) or apart. IEEE addition
    rounds the same in any order, so the values are NumPy's."""
    if b.ndim < a.ndim:
        a, b = b, a  # the bias second: the sum is the same
    if a.ndim != b.ndim and b.ndim != 1:
        a, b = b, a
    rows_a, rows_out = _rows(a), _rows(out)
    if rows_a is None or rows_out is None or a.shape != out.shape:
        return None
    if b.ndim == 1 and b.shape[0] == a.shape[-1] and b.strides[0] == b.itemsize:
        rows_b = (rows_a[0], rows_a[1], 0)
    elif b.shape == a.shape:
        rows_b = _rows(b)
    else:
        return None
    if rows_b is None or _overlaps(out, a) or _overlaps(out, b):
        return None
    (rows, cols, la), lb, lo = rows_a, rows_b[2], rows_out[2]
    kind = SADD if a.dtype == np.float32 else DADD
    return _words(kind, rows, cols, a.ctypes.data, la, b.ctypes.data, lb, out.ctypes.data, lo)


def _rows(x: np.ndarray) -> tuple | None:
    """(rows, cols, row stride in elements) of an array seen as rows of its last axis, each
    unit-stride, rows evenly spaced; None if it is not."""
    if x.ndim == 0 or x.strides[-1] != x.itemsize:
        return None
    cols = x.shape[-1]
    if x.ndim == 1:
        return 1, cols, cols
    if x.ndim > 2:
        if not x.flags.c_contiguous:
            return None
        return x.size // cols, cols, cols
    if x.strides[0] % x.itemsize:
        return None
    return x.shape[0], cols, x.strides[0] // x.itemsize


def _overlaps(out: np.ndarray, x: np.ndarray) -> bool:
    """Whether `out` shares memory with `x` other than as the very same view (in place, each
    element is read before it is written)."""
    same = out.ctypes.data == x.ctypes.data and out.strides == x.strides and out.shape == x.shape
    return not same and np.shares_memory(out, x)


def _extent(x: np.ndarray) -> tuple[int, int]:
    """The addresses [lo, hi) an array's elements lie within."""
    lo = hi = x.ctypes.data
    for n, stride in zip(x.shape, x.strides, strict=True):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + x.itemsize


def _blas_layout(x: np.ndarray) -> tuple:
    """(CBLAS transpose flag, leading dimension) that passes `x` to gemm as `np.dot` does,
    or (None, None) where NumPy would copy it first."""
    n = x.itemsize
    s0, s1 = x.strides
    rows, cols = x.shape
    if s1 == n and s0 % n == 0 and s0 // n >= cols:
        return NO_TRANS, s0 // n
    if s0 == n and s1 % n == 0 and s1 // n >= rows:
        return TRANS, s1 // n
    return None, None
