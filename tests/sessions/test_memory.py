"""``release_free_memory`` gives freed heap memory back to the OS (glibc), as a session's end relies on."""

from __future__ import annotations

import platform

import psutil
import pytest

from app.sessions.memory import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_fragmented_heap_goes_back_to_the_os() -> None:
    process = psutil.Process()
    # 200 MB of heap chunks (below glibc's mmap threshold), every 20th kept alive: the freed ones sit between
    # live chunks, so free() alone cannot shrink the heap (the fragmentation a soak of sessions produces).
    chunks = [bytearray(100_000) for _ in range(2000)]
    kept = chunks[::20]
    del chunks
    before = process.memory_info().rss
    assert release_free_memory() is True
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before >> 20, after >> 20)
    assert len(kept) == 100  # still alive (and intact) after the trim
    assert all(len(c) == 100_000 and not any(c[:64]) for c in kept)
