"""WebSocket subscribers of a session: one bounded outbox per connection.

The manager pushes every frame of a session to each subscriber's outbox (on the event loop thread); the
WebSocket route drains its outbox to the socket. A client that falls ``max_items`` messages behind is
disconnected (``Close``) rather than allowed to grow memory without bound; it reconnects and resyncs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Close:
    """Ask the route to close the connection with this WebSocket close code and reason."""

    code: int
    reason: str


Outgoing = bytes | str | Close
"""A binary diff frame, a JSON text message, or a close request."""


class Subscriber:
    """One stream connection's outbox. Use from the event loop thread only."""

    def __init__(self, max_items: int, *, overflow_close: Close) -> None:
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=max_items + 1)  # +1: room for the Close
        self._max_items = max_items
        self._overflow_close = overflow_close
        self.closed = False

    def push(self, item: bytes | str) -> None:
        """Queue a frame or text message; past ``max_items`` the subscriber is told to disconnect."""
        if self.closed:
            return
        if self._queue.qsize() >= self._max_items:
            self.close(self._overflow_close, drop_pending=True)
            return
        self._queue.put_nowait(item)

    def close(self, close: Close, *, drop_pending: bool = False) -> None:
        """Queue a close request after the pending items (or instead of them)."""
        if self.closed:
            return
        self.closed = True
        if drop_pending:
            while not self._queue.empty():
                self._queue.get_nowait()
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(close)

    async def get(self) -> Outgoing:
        return await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()
