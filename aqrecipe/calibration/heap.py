"""Give freed heap memory back to the OS between calibration stages.

glibc keeps memory that torch frees between layers in its heaps (tensors under
its mmap threshold land there once the threshold has adapted upwards), so
without trimming the resident size of a layer-by-layer pass grew by tens of MB
per layer. ``malloc_trim(0)`` returns the free pages; it changes no values.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim  # glibc only (absent on musl)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
