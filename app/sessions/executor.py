"""Serialised, awaitable access to the compute device.

All blocking model work (``init_state``, prompts, ``get_mask``) runs through ``DeviceExecutor.run``: it takes
the device lock (an ``OrderedLock`` at ``DEVICE_LEVEL``, so always *after* the session lock) and runs the call
on one dedicated worker thread, so the event loop keeps serving other requests and WebSocket frames while
the model computes. One executor per device, one device per process.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from app.sessions.locks import DEVICE_LEVEL, OrderedLock

P = ParamSpec("P")
T = TypeVar("T")


class DeviceExecutor:
    """One worker thread and one lock in front of a device.

    Attributes:
        lock: the device lock; hold a session's lock first if the work touches that session.
        waiting: tasks currently queued for the device (exported as a metric).
    """

    def __init__(self, name: str = "device") -> None:
        self.lock = OrderedLock(name, DEVICE_LEVEL)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.waiting = 0

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the device thread under the device lock and return its result."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        acquired = False
        try:
            async with self.lock:
                acquired = True
                self.waiting -= 1
                return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            if not acquired:
                self.waiting -= 1

    def shutdown(self) -> None:
        """Stop the worker thread after the work already submitted."""
        self._pool.shutdown(wait=True, cancel_futures=True)
