"""Give the memory of an ended session back to the operating system (glibc's ``malloc_trim``).

A session frees tens of MB at once (volume, embeddings, cached windows, logits, undo stacks). glibc keeps
freed heap memory in its arenas for later reuse, one arena per thread that allocated, and with sessions of
different sizes ending in an interleaved order the arenas fragment: the process's RSS ratchets up although
nothing is alive (load soak, docs/reliability.md: +52 MB/min with 12 concurrent annotators, 1.6 GB held
with no session left, of which ``malloc_trim(0)`` gave 0.7 GB back at once). Trimming after each ended
session keeps RSS at what the live sessions hold. Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; True when some memory was released."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))
