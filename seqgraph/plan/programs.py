"""Step programs: a run of a plan's compiled kernels and BLAS products as one foreign call.

After the lowering, a recurrent step on NumPy is a product (`np.dot(h, W, out=z)`), a
compiled group or chain (`ckernels.py`), another product...: one Python call each, about 300
for a training step of the small LSTM benchmark, and at small sizes the calls cost as much
as the work (np.dot's own overhead is about 1 us). Here each run of two or more such kernels
in a kernel list becomes one kernel: a block of int64 words, 13 per instruction, that one C
loop (`EXECUTOR`) walks, calling each compiled kernel through its address with its argument
block, each product as the `cblas_sgemm`/`cblas_dgemm` (one row: `gemv`) call of NumPy's own
BLAS (`blas.py`) with the arguments `np.dot` passes, and each sum of rows (`np.add`, a bias
to each row) as a loop, so every value is bit for bit the one the kernels give one by one.
Plan buffers never move, so the block is made once.

Not done (measured, 2026-11-30): running a program's two halves of the batch on two threads
at once. A step never mixes the batch's sequences, so it is safe, but OpenBLAS packs the
whole weight matrix on every call whatever the rows, so half the rows took 71 % of the time of
all of them (small LSTM forward: 1.38 against 1.94 ms on one thread), and handing a half to a
second thread and back cost 0.2 ms a program on this 2-core virtual machine.

`SEQGRAPH_CPU_PROGRAMS=0` leaves every kernel its own call. Compiled kernels off, NumPy's BLAS
not found (`blas.find`) or CuPy: nothing changes.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from seqgraph.plan import blas, ckernels

SWITCH = "SEQGRAPH_CPU_PROGRAMS"
WIDTH = 13  # int64 words per instruction: kind, then the kernel's or the product's
KERNEL, SGEMM, DGEMM, SGEMV, DGEMV, SADD, DADD = range(7)  # an instruction's kind
ROW_MAJOR, COL_MAJOR, NO_TRANS, TRANS = 101, 102, 111, 112  # CBLAS's enums
# a program with this much product work (~50 us) releases the GIL while it runs, as NumPy
# does around BLAS; a shorter one keeps it: releasing costs 0.6 us a call, and a tiny
# model's step makes about 14 of them in 66 us
RELEASE_GIL_FLOPS = 1e7

EXECUTOR = """\
typedef void (*seqgraph_kernel)(const i64*);
typedef void (*seqgraph_sgemm)(int, int, int, i64, i64, i64, float, const float*, i64,
                               const float*, i64, float, float*, i64);
typedef void (*seqgraph_dgemm)(int, int, int, i64, i64, i64, double, const double*, i64,
                               const double*, i64, double, double*, i64);
typedef void (*seqgraph_sgemv)(int, int, i64, i64, float, const float*, i64, const float*, i64,
                               float, float*, i64);
typedef void (*seqgraph_dgemv)(int, int, i64, i64, double, const double*, i64, const double*,
                               i64, double, double*, i64);
#define SEQGRAPH_ADD(T) { \\
    const i64 rows = q[1], cols = q[2], la = q[4], lb = q[6], lo = q[8]; \\
    const T* const x = (const T*)q[3]; const T* const y = (const T*)q[5]; T* const z = (T*)q[7]; \\
    for (i64 i = 0; i < rows; i++) { \\
        _Pragma("omp simd") \\
        for (i64 j = 0; j < cols; j++) z[i * lo + j] = x[i * la + j] + y[i * lb + j]; \\
    } }
void {name}(const i64* a) {
    const i64* const end = a + 1 + a[0] * 13;
    for (const i64* q = a + 1; q < end; q += 13) {
        switch (q[0]) {
        case 0:
            ((seqgraph_kernel)q[1])((const i64*)q[2]);
            break;
        case 1:
            ((seqgraph_sgemm)q[1])(101, (int)q[2], (int)q[3], q[4], q[5], q[6], 1.0f,
                (const float*)q[7], q[8], (const float*)q[9], q[10], 0.0f, (float*)q[11], q[12]);
            break;
        case 2:
            ((seqgraph_dgemm)q[1])(101, (int)q[2], (int)q[3], q[4], q[5], q[6], 1.0,
                (const double*)q[7], q[8], (const double*)q[9], q[10], 0.0, (double*)q[11], q[12]);
            break;
        case 3:
            ((seqgraph_sgemv)q[1])((int)q[2], (int)q[3], q[4], q[5], 1.0f, (const float*)q[6], q[7],
                (const float*)q[8], q[9], 0.0f, (float*)q[10], 1);
            break;
        case 4:
            ((seqgraph_dgemv)q[1])((int)q[2], (int)q[3], q[4], q[5], 1.0, (const double*)q[6], q[7],
                (const double*)q[8], q[9], 0.0, (double*)q[10], 1);
            break;
        case 5:
            SEQGRAPH_ADD(float)
            break;
        default:
            SEQGRAPH_ADD(double)
        }
    }
}
"""


def enabled() -> bool:
    """Programs are wanted (the switch) and possible (compiled kernels, NumPy's BLAS)."""
    return os.environ.get(SWITCH, "1") != "0" and ckernels.enabled() and blas.find() is not None


def link(kernels: list) -> list:
    """`kernels` with every run of two or more kernels that `instruction` expresses made
    one program (a kernel that keeps the run's kernels, as `program.kernels`); the others
    as they are."""
    if len(kernels) < 2 or not enabled():
        return list(kernels)
    out, run, words, flops = [], [], [], 0
    express = _Linker().instruction
    for kernel in [*kernels, None]:
        step = None if kernel is None else express(kernel)
        if step is not None:
            run.append(kernel)
            words += step
            flops += _flops(step)
            continue
        if len(run) > 1:
            block = np.array([len(run), *words], np.int64)
            # NumPy lets other Python threads run while BLAS works; a long program does too
            long = flops >= RELEASE_GIL_FLOPS
            program = ckernels.function_kernel(EXECUTOR, block, release_gil=long)
            if program is None:  # the executor could not be built: each kernel on its own
                return list(kernels)
            program.kernels = run  # they hold the buffers the words point into
            out.append(program)
        else:
            out += run
        run, words, flops = [], [], 0
        if kernel is not None:
            out.append(kernel)
    return out


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

    def __init__(self):
        self.functions: dict = {}  # id(ctypes function) -> its address
        self.weights: dict = {}  # id(b) -> (b, its address, its gemm layout, C-, F-ordered)

    def instruction(self, kernel) -> list | None:
        func = getattr(kernel, "func", None)
        if isinstance(func, ctypes._CFuncPtr):  # `ckernels.is_compiled`
            address = self.functions.get(id(func))
            if address is None:
                address = self.functions[id(func)] = ctypes.cast(func, ctypes.c_void_p).value
            return _words(KERNEL, address, kernel.args[0].value)
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
            flags = b.flags
            weight = (b, b.ctypes.data, _blas_layout(b), flags.c_contiguous, flags.f_contiguous)
            self.weights[id(b)] = weight
        _, w, (tb, ldb), c_ordered, f_ordered = weight
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
        return _words(kind, gemm, ta, tb, M, N, K, a.ctypes.data, lda, w, ldb, out.ctypes.data, N)


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
