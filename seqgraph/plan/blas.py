"""The BLAS that NumPy itself calls, found in this process, for C code that calls it directly.

A plan's step programs (`programs.py`) run the products of a step (`np.dot(a, b, out=c)`)
from C, as `cblas_sgemm`/`cblas_dgemm` calls with the arguments NumPy passes. They must call
the library NumPy is linked with (the same kernels, so the same numbers, and one thread
pool), not another BLAS on the system: it is found among the shared objects this process
has mapped (`/proc/self/maps`) from NumPy's own folder, by the symbols NumPy's wheels
export: OpenBLAS as the wheels ship it (`scipy-openblas`) has 64-bit integers and suffixed
names (`scipy_cblas_sgemm64_`; a plain ILP64 OpenBLAS build: `cblas_sgemm64_`). NumPy built
against the system's BLAS, Accelerate or MKL, or another platform, leaves `find()` None, and
the plan calls NumPy as before.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

# gemm and gemv for float32 and float64, by the naming of the library (64-bit integers)
ROUTINES = ("sgemm", "dgemm", "sgemv", "dgemv")
NAMES = tuple(tuple(f"{prefix}{r}64_" for r in ROUTINES) for prefix in ("scipy_cblas_", "cblas_"))
# how many threads the library's calls use (OPENBLAS_NUM_THREADS, threadpoolctl): get, set
THREADS = {
    "scipy_cblas_": ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    "cblas_": ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
}


@dataclass(frozen=True)
class Blas:
    path: str
    sgemm: int  # the C functions' addresses
    dgemm: int
    sgemv: int
    dgemv: int
    threads: int = 0  # its thread count's getter, `int f(void)`; 0 where it has none
    set_threads: int = 0  # and setter, `void f(int)`


@lru_cache(maxsize=1)
def find() -> Blas | None:
    """NumPy's BLAS with 64-bit integers, or None (see the module docstring)."""
    for path in _mapped_libraries():
        try:
            library = ctypes.CDLL(path)  # already mapped: the same handle, nothing loads
        except OSError:
            continue
        for prefix, names in zip(THREADS, NAMES, strict=True):
            try:
                found = [getattr(library, name) for name in names]
            except AttributeError:
                continue
            counts = [getattr(library, name, None) for name in THREADS[prefix]]
            found += counts if None not in counts else []
            return Blas(path, *(ctypes.cast(f, ctypes.c_void_p).value for f in found))
    return None


def _mapped_libraries() -> list[str]:
    """Paths of the BLAS libraries mapped into this process from NumPy's own folders (a
    wheel's `numpy.libs`): another BLAS that happens to be loaded (SciPy's, say) is never
    taken for NumPy's."""
    import numpy

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line and "blas" in line.lower()}
    except OSError:
        return []
    home = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy")
    return sorted(p for p in paths if p.startswith(home) and os.path.isfile(p))
