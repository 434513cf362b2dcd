"""Picks the array namespace `xp` (NumPy, CuPy, or array_api_strict for tests) and the dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from seqgraph.engine.xp_extra import to_numpy
from seqgraph.errors import BackendError

BACKENDS = ("numpy", "cupy", "strict")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Backend:
    """An array namespace, the float dtype to compute in, and host<->device transfers."""

    name: str
    xp: Any
    dtype_name: str

    @property
    def dtype(self):
        return getattr(self.xp, self.dtype_name)

    def asarray(self, value):
        """Host data (NumPy, lists, scalars) -> an array of this backend: floats in its
        dtype, integers as int64, anything else (booleans) as it is."""
        array = np.asarray(value)
        if array.dtype.kind == "f":
            return self.xp.asarray(array, dtype=self.dtype)
        if array.dtype.kind in "iu":
            return self.xp.asarray(array, dtype=self.xp.int64)
        return self.xp.asarray(array)

    def to_numpy(self, value) -> np.ndarray:
        return to_numpy(value)


def numpy_namespace():
    """The array namespace of the numpy backend: NumPy itself where it implements the array
    API standard (NumPy >= 2.1, `__array_api_version__` 2023.12 or later: every function
    the op table calls, with the standard's signatures), else array_api_compat's wrapper.
    Importing that wrapper clones NumPy's namespace, which loads each of NumPy's lazy
    submodules (f2py, testing and unittest, ma, polynomial): 7 MiB of resident memory in
    every process that builds a model, for functions NumPy now has."""
    if getattr(np, "__array_api_version__", "") >= "2023.12":
        return np
    import array_api_compat.numpy as xp

    return xp


def get_backend(name: str = "numpy", dtype: str = "float32") -> Backend:
    """The backend called `name`; raises BackendError naming the fix if it cannot run here."""
    if dtype not in DTYPES:
        raise BackendError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if name == "numpy":
        return Backend(name, numpy_namespace(), dtype)
    if name == "strict":
        try:
            import array_api_strict as xp
        except ImportError:
            raise BackendError(
                "backend 'strict' needs array_api_strict: pip install 'seqgraph[test]'"
            ) from None
        return Backend(name, xp, dtype)
    if name == "cupy":
        try:
            import array_api_compat.cupy as xp
            import cupy
        except ImportError:
            raise BackendError(
                "backend 'cupy' needs CuPy: pip install 'seqgraph[gpu]' "
                "(cupy-cuda12x or cupy-cuda13x to match your CUDA)"
            ) from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # CUDA driver missing or broken: CuPy raises several kinds
            count = 0
        if count < 1:
            raise BackendError(
                "backend 'cupy' needs an NVIDIA GPU with a working driver, and "
                "none was found; use --backend numpy"
            )
        return Backend(name, xp, dtype)
    raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
