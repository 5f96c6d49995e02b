"""Giving freed heap memory back to the operating system between units of work (slides).

glibc's ``malloc`` keeps the pages of freed blocks below its mmap threshold (128 KiB by default,
raised dynamically up to 32 MiB) in its arenas for reuse. A slide allocates and frees many such
blocks (regions, model batches, HDF5 buffers), and the arenas fragment: over hundreds of slides
the resident size creeps up in steps although nothing is leaked. ``malloc_trim(0)`` releases every
free page at the top of the heap and inside it (``MADV_DONTNEED``), so the resident size after a
slide is what is live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time
from collections.abc import Callable

#: default least seconds between two trims: a trim costs ~2 ms, and the next slide faults the
#: pages it reuses back in (~17 ms of CPU for a 1024 px slide: benchmarks/cohort.py), so slides of
#: a fraction of a second share one trim while a slide of minutes still gets its own
MIN_INTERVAL_S = 1.0

#: ``time.monotonic()`` of this process's last trim
_last_trim = [float("-inf")]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory(*, min_interval_s: float = MIN_INTERVAL_S) -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim(0)``), unless the last
    trim of this process was less than ``min_interval_s`` seconds ago (0: always trim).

    Returns ``True`` when memory was released, ``False`` when there was none to release, the
    last trim is too recent or the C library has no ``malloc_trim``. Cheap when little is free (it
    walks the free lists); what a trim costs is the page faults of the memory reused after it, so
    resident memory stays bounded with at most one trim per ``min_interval_s``.
    """
    now = time.monotonic()
    if now - _last_trim[0] < min_interval_s:
        return False
    _last_trim[0] = now
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
