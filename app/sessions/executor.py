"""Serialised, awaitable access to the compute device, in three lanes.

All blocking model work runs through a ``DeviceExecutor``: a lane takes its device lock (an ``OrderedLock`` at
``DEVICE_LEVEL``, so always *after* the session lock) and runs the call on its own worker thread, so the event
loop keeps serving other requests and WebSocket frames while the model computes.

Three lanes, because a click's corrector step costs about a millisecond, a decoder step or a mask download tens
of milliseconds and a new session's encode hundreds: in one queue, an annotator's instant feedback waits behind
every other session's heavy work (issue 24: click p95 410 ms with 50 annotators), and a box behind an upload.

- ``run`` (the bulk lane): the heavy work of live sessions. Served by priority, then in arrival order:
  ``Priority.PROMPT`` (a prompt or a read the user waits for) before ``Priority.BACKGROUND`` (a deferred
  decoder refinement, whose GRU feedback is already on screen, or an idle session's trim). ``run_unless``
  lets a queued background call withdraw before it starts (a session's decoder refinement, when a newer
  click of that session arrives: ``refinement.py``).
- ``run_instant`` (the instant lane): GRU corrector steps only. Its own thread, so it never waits for a bulk
  call in progress; what one instant call may touch is one session's state, which its session lock guards.
- ``run_intake`` (the intake lane): building the state of a session that is not registered yet: the encode of
  one being created, the rebuild (encode + replay) of one being restored or taken over from another replica.
  Its own thread, so a live session's box never waits for a new session's encode (0.2-0.5 s on a CPU) or a
  replay (seconds); that state is shared with nothing until it is registered, and the model is only read.

A task holds at most one device lock (all sit at ``DEVICE_LEVEL``, and ``OrderedLock`` refuses a second
lock of the same level), so the global order stays *session lock, then one device lock*.

Each lane keeps the queue wait of its recent calls (``recent_waits_ms``) and the spans of time during which calls
waited (``recent_queued``): admission control reads them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum
from typing import ParamSpec, TypeVar

from app.sessions.locks import DEVICE_LEVEL, OrderedLock

P = ParamSpec("P")
T = TypeVar("T")

RECENT_WAITS = 1024  # per lane: enough for the last 10 s of a busy server (bulk calls take >= ~5 ms)


class Priority(IntEnum):
    """Order of service among the calls waiting for a lane (lower first)."""

    PROMPT = 0
    """A prompt or a read a user is waiting for."""
    BACKGROUND = 1
    """Work no reply waits for: a deferred decoder refinement (its GRU feedback is shown), an idle trim."""


class GaveUp(Exception):
    """A queued call withdrew (its ``give_up`` event was set) before it reached the device."""


class Lane:
    """One worker thread and one ordered lock.

    Attributes:
        lock: the lane's device lock; hold a session's lock first if the work touches that session.
        waiting: calls currently queued for the lock (exported as a metric, read by admission control).
        recent_waits_ms: (monotonic end of wait, wait in ms) of the most recent calls.
        recent_queued: (monotonic start, end) of the recent spans during which at least one call waited.
    """

    def __init__(self, name: str) -> None:
        self.lock = OrderedLock(name, DEVICE_LEVEL)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.waiting = 0
        self.recent_waits_ms: deque[tuple[float, float]] = deque(maxlen=RECENT_WAITS)
        self.recent_queued: deque[tuple[float, float]] = deque(maxlen=RECENT_WAITS)
        self._queued_since: float | None = None

    async def run(self, fn: Callable[[], T], give_up: asyncio.Event | None = None,
                  priority: Priority = Priority.PROMPT) -> T:
        loop = asyncio.get_running_loop()
        queued = time.monotonic()
        self._count_waiting(+1, queued)
        try:
            acquired = await self.lock.acquire(give_up, priority)
        finally:
            self._count_waiting(-1, time.monotonic())
        if not acquired:
            raise GaveUp
        try:
            now = time.monotonic()
            self.recent_waits_ms.append((now, (now - queued) * 1e3))
            return await loop.run_in_executor(self._pool, fn)
        finally:
            self.lock.release()

    def _count_waiting(self, delta: int, now: float) -> None:
        """Track ``waiting`` and the spans during which some call waited (``recent_queued``)."""
        self.waiting += delta
        if delta > 0 and self._queued_since is None and self.lock.locked():  # a call found the lane taken
            self._queued_since = now
        elif self.waiting == 0 and self._queued_since is not None:
            self.recent_queued.append((self._queued_since, now))
            self._queued_since = None

    def queued_share(self, window_s: float, now: float | None = None) -> float:
        """The share of the last ``window_s`` seconds during which at least one call waited for this lane (0..1),
        the span in progress included. One client whose calls come one after another never makes a call wait,
        however long they run; many clients do, and the more often as the lane nears full use."""
        now = time.monotonic() if now is None else now
        since = now - window_s
        spans = list(self.recent_queued)
        if self._queued_since is not None:
            spans.append((self._queued_since, now))
        queued_s = sum(end - max(start, since) for start, end in spans if end > since)
        return min(1.0, queued_s / window_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DeviceExecutor:
    """The three lanes in front of one device (one executor per device, one device per process).

    Attributes:
        bulk: the lane of live sessions' heavy work (``run``, ``run_unless``, ``run_background``).
        instant: the lane of corrector steps (``run_instant``).
        intake: the lane of sessions being created or restored (``run_intake``).
        lock: the bulk lane's lock (kept for callers that serialise with the device's heavy work).
    """

    def __init__(self, name: str = "device") -> None:
        self.bulk = Lane(name)
        self.instant = Lane(f"{name}-instant")
        self.intake = Lane(f"{name}-intake")
        self.lock = self.bulk.lock

    @property
    def waiting(self) -> int:
        """Calls queued in every lane."""
        return self.bulk.waiting + self.instant.waiting + self.intake.waiting

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the bulk lane (``Priority.PROMPT``) and return its result."""
        return await self.bulk.run(functools.partial(fn, *args, **kwargs))

    async def run_background(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the bulk lane after every waiting prompt (``Priority.BACKGROUND``)."""
        return await self.bulk.run(functools.partial(fn, *args, **kwargs), priority=Priority.BACKGROUND)

    async def run_unless(self, give_up: asyncio.Event, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the bulk lane as background work, unless ``give_up`` is set before it is its turn
        (then ``GaveUp``)."""
        return await self.bulk.run(fn, give_up, Priority.BACKGROUND)

    async def run_intake(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the intake lane (a session being created or restored)."""
        return await self.intake.run(functools.partial(fn, *args, **kwargs))

    async def run_instant(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the instant lane (a corrector step: about a millisecond)."""
        return await self.instant.run(functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Stop every worker thread after the work already submitted."""
        self.bulk.shutdown()
        self.instant.shutdown()
        self.intake.shutdown()
