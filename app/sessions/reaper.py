"""The reaper: a background task that ends sessions past their idle timeout or maximum age.

Started and stopped by the app's ``lifespan``. Expiry is also checked lazily on every access, so a
session is never served past its deadline even between two sweeps; the reaper is what frees the device
memory of sessions nobody asks about any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Expirer(Protocol):
    async def expire_due(self) -> list[str]:
        """End every overdue session; return their ids."""
        ...


class Reaper:
    """Calls ``target.expire_due()`` every ``interval_s`` seconds until stopped."""

    def __init__(self, target: Expirer, interval_s: float) -> None:
        self._target = target
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="session-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                expired = await self._target.expire_due()
            except Exception:  # a failing sweep must not stop the next one
                log.exception("reaper: sweep failed")
                continue
            if expired:
                log.info("reaper: expired %d session(s)", len(expired))
