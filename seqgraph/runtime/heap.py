"""Give the C heap's free pages back to the operating system after a lowering.

A lowering (`plan.lower.Plan`) makes millions of small objects and a few full-size arrays
that it drops again (stacks the layout shrinks to a ring, the dry run's values). Once
glibc has freed an mmapped array, it raises its mmap threshold to that array's size, so
every later array up to it comes from the brk heap, where a freed, touched chunk stays
resident until something reuses it: after the lowering those holes hold no data but count
in the resident set for as long as the process runs, and the plan's step, which touches
its own buffers next, then peaks that much higher (medium GRU, `tools/bench.py --memory`:
about 2 MiB). `malloc_trim(0)` hands the free pages anywhere in the heap back
(MADV_DONTNEED); allocated memory, touched or not, stays where it is, so nothing the plan
holds moves or changes. It walks the heap once: about a millisecond after a lowering that
takes seconds. Elsewhere than glibc (musl, macOS, Windows) there is no such call and
nothing is done.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache


@cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def available() -> bool:
    """Whether this C library has `malloc_trim` (glibc)."""
    return _malloc_trim() is not None


def give_back_free_pages() -> bool:
    """Return the C heap's free pages to the OS (glibc); True if the call exists here."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
