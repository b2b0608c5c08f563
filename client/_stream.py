"""Stream consumers: keep local numpy masks up to date from ``WS /v1/sessions/{sid}/stream``.

``MaskStream`` (a reader thread over ``websockets.sync``) and ``AsyncMaskStream`` (a reader task over
``websockets.asyncio``) do the IO; ``MaskMirror`` holds the state and the resync rules. Both wait for the
server's ``hello`` when opened and ask for snapshots of objects that already exist.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from client._errors import (
    AuthenticationError,
    NoLocalMaskError,
    NotFoundError,
    SegError,
    SessionClosedError,
    SessionExpiredError,
    StreamError,
    VersionTimeoutError,
)
from client._mirror import MaskMirror
from client._protocol import api_key_headers, auth_headers
from client.wire.messages import PingMessage, dump
from client.wire.paths import STREAM, StreamCloseCode

DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
"""Largest WebSocket message accepted (a snapshot of a big mask can pass the library's 1 MiB default)."""


def stream_url(base_url: str, session_id: str) -> str:
    """``http(s)://host/...`` -> ``ws(s)://host/v1/sessions/{sid}/stream``."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + STREAM.format(session_id=session_id)


_CLOSE_ERRORS: dict[int, type[SegError]] = {
    StreamCloseCode.UNAUTHORIZED: AuthenticationError,
    StreamCloseCode.NOT_FOUND: SessionClosedError,  # the stream closes 4404 only for a session that is gone
    StreamCloseCode.SESSION_EXPIRED: SessionExpiredError,
}


def _closed_error(exc: Exception | None) -> SegError:
    """The error for a connection the server closed: 4401/4404/4410 map to the HTTP-equivalent errors."""
    rcvd = getattr(exc, "rcvd", None)
    code = getattr(rcvd, "code", None)
    reason = getattr(rcvd, "reason", "") or ""
    message = f"stream: closed by the server ({code}{': ' + reason if reason else ''})"
    if code in _CLOSE_ERRORS:
        return _CLOSE_ERRORS[code](message, status=code - 4000)
    return StreamError(message, close_code=code)


def _close_exc(ws: ClientConnection | AsyncConnection) -> Exception | None:
    return getattr(getattr(ws, "protocol", None), "close_exc", None)


def _open_error(exc: Exception) -> SegError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    # A session that is gone is reported after the handshake (close code 4404/4410); a 404 here is a wrong URL.
    classes = {401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError, 410: SessionExpiredError}
    if status in classes:
        return classes[status](f"stream: handshake refused with HTTP {status}", status=status)
    return StreamError(f"stream: could not connect ({exc})")


class _MirrorView:
    """Read access shared by both consumers; callers hold the lock of the concrete class."""

    _mirror: MaskMirror
    _error: SegError | None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """(D, H, W) of the session, from the server's hello."""
        return self._mirror.shape

    @property
    def errors(self) -> list[str]:
        """Problems reported by the server or found in frames (each one triggered a resync)."""
        return list(self._mirror.errors)

    @property
    def bytes_received(self) -> int:
        return self._mirror.bytes_received

    def _mask_copy(self, object_id: int) -> np.ndarray:
        mask = self._mirror.masks.get(object_id)
        if mask is None:
            raise NoLocalMaskError(f"object_id: no local mask for object {object_id}", field="object_id")
        return mask.copy()

    def _reached(self, object_id: int, version: int) -> bool:
        return (
            self._mirror.versions.get(object_id, 0) >= version
            and object_id not in self._mirror.pending_resync
            and object_id in self._mirror.masks
        )


class MaskStream(_MirrorView):
    """Synchronous stream consumer (a daemon reader thread). Use as a context manager.

        with session.stream() as stream:
            reply = session.clicks(1, [[z, y, x]], [1], mode="gru")
            mask = stream.wait_for_version(1, reply.version, timeout=5.0)
    """

    def __init__(self, base_url: str, session_id: str, token: str, *, open_timeout: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, api_key: str | None = None) -> None:
        self._mirror = MaskMirror()
        self._cond = threading.Condition()
        self._error = None
        self._closed = False
        headers = {**auth_headers(token), **api_key_headers(api_key)}
        try:
            self._ws: ClientConnection = sync_connect(
                stream_url(base_url, session_id), additional_headers=headers,
                open_timeout=open_timeout, max_size=max_message_bytes, compression=None, proxy=None, legacy=True,
            )
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            raise _open_error(exc) from None
        self._thread = threading.Thread(target=self._run, name=f"mask-stream-{session_id}", daemon=True)
        self._thread.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._mirror.hello_received or self._error is not None,
                                       timeout=open_timeout):
                self.close()
                raise StreamError("stream: no hello from the server")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            for message in self._ws:
                with self._cond:
                    if isinstance(message, bytes):
                        replies = self._mirror.on_binary(message)
                    else:
                        replies = self._mirror.on_text(message)
                    self._cond.notify_all()
                for reply in replies:
                    self._ws.send(reply)
            error = None if self._closed else _closed_error(_close_exc(self._ws))
        except websockets.exceptions.ConnectionClosed as exc:
            error = _closed_error(exc) if not self._closed else None
        except Exception as exc:  # keep the waiting caller informed instead of dying silently
            error = StreamError(f"stream: reader failed ({exc!r})")
        with self._cond:
            self._error = error or StreamError("stream: closed")
            self._cond.notify_all()

    # -- queries -----------------------------------------------------------------------------------

    def versions(self) -> dict[int, int]:
        """Local version of every object."""
        with self._cond:
            return dict(self._mirror.versions)

    def version(self, object_id: int) -> int:
        """Local version of one object (0 when none seen yet)."""
        with self._cond:
            return self._mirror.versions.get(object_id, 0)

    def mask(self, object_id: int) -> np.ndarray:
        """A copy of the local (D, H, W) uint8 mask; ``KeyError`` for an object not seen yet."""
        with self._cond:
            return self._mask_copy(object_id)

    def masks(self) -> dict[int, np.ndarray]:
        with self._cond:
            return {oid: m.copy() for oid, m in self._mirror.masks.items()}

    def wait_for_version(self, object_id: int, version: int, timeout: float = 10.0) -> np.ndarray:
        """Block until the local mask of ``object_id`` is at ``version`` or later; return a copy of it.

        Raises ``VersionTimeoutError`` (a ``TimeoutError``) after ``timeout`` seconds; if the stream closed
        first, ``SessionExpiredError`` (close code 4410), ``SessionClosedError`` (4404), ``AuthenticationError``
        (4401) or ``StreamError``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._reached(object_id, version):
                if self._error is not None:
                    raise self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    have = self._mirror.versions.get(object_id, 0)
                    raise VersionTimeoutError(f"object {object_id}: version {version} not reached in {timeout} s "
                                       f"(local version {have})")
                self._cond.wait(left)
            return self._mask_copy(object_id)

    # -- commands ----------------------------------------------------------------------------------

    def resync(self, object_id: int | None = None) -> None:
        """Ask for a snapshot of one object (or of all)."""
        with self._cond:
            self._mirror.pending_resync.update([object_id] if object_id is not None else self._mirror.masks)
            self._send(MaskMirror.resync_message(object_id, None if object_id is None else self._mirror.versions.get(object_id)))

    def ping(self) -> None:
        self._send(dump(PingMessage()))

    def _send(self, message: str) -> None:
        try:
            self._ws.send(message)
        except websockets.exceptions.ConnectionClosed as exc:  # the reason the server gave, as a typed error
            raise self._error or _closed_error(exc) from None

    def close(self) -> None:
        self._closed = True
        self._ws.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> MaskStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncMaskStream(_MirrorView):
    """Asyncio stream consumer (a reader task). ``async with session.stream() as stream: ...``."""

    def __init__(self, base_url: str, session_id: str, token: str, *, open_timeout: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, api_key: str | None = None) -> None:
        self._url = stream_url(base_url, session_id)
        self._headers = {**auth_headers(token), **api_key_headers(api_key)}
        self._open_timeout = open_timeout
        self._max_message_bytes = max_message_bytes
        self._mirror = MaskMirror()
        self._cond = asyncio.Condition()
        self._error = None
        self._closed = False
        self._ws: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> AsyncMaskStream:
        try:
            self._ws = await async_connect(
                self._url, additional_headers=self._headers, open_timeout=self._open_timeout,
                max_size=self._max_message_bytes, compression=None, proxy=None,
            )
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            raise _open_error(exc) from None
        self._task = asyncio.create_task(self._run())
        try:
            async with self._cond:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self._mirror.hello_received or self._error is not None),
                    self._open_timeout,
                )
        except asyncio.TimeoutError:
            await self.close()
            raise StreamError("stream: no hello from the server") from None
        if self._error is not None:
            raise self._error
        return self

    async def _run(self) -> None:
        assert self._ws is not None
        error: SegError | None = None
        try:
            async for message in self._ws:
                async with self._cond:
                    if isinstance(message, bytes):
                        replies = self._mirror.on_binary(message)
                    else:
                        replies = self._mirror.on_text(message)
                    self._cond.notify_all()
                for reply in replies:
                    await self._ws.send(reply)
            if not self._closed:
                error = _closed_error(_close_exc(self._ws))
        except websockets.exceptions.ConnectionClosed as exc:
            error = _closed_error(exc) if not self._closed else None
        except Exception as exc:
            error = StreamError(f"stream: reader failed ({exc!r})")
        async with self._cond:
            self._error = error or StreamError("stream: closed")
            self._cond.notify_all()

    def versions(self) -> dict[int, int]:
        return dict(self._mirror.versions)

    def version(self, object_id: int) -> int:
        return self._mirror.versions.get(object_id, 0)

    def mask(self, object_id: int) -> np.ndarray:
        return self._mask_copy(object_id)

    def masks(self) -> dict[int, np.ndarray]:
        return {oid: m.copy() for oid, m in self._mirror.masks.items()}

    async def wait_for_version(self, object_id: int, version: int, timeout: float = 10.0) -> np.ndarray:
        """Wait until the local mask of ``object_id`` is at ``version`` or later; return a copy of it."""

        def done() -> bool:
            return self._reached(object_id, version) or self._error is not None

        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(done), timeout)
        except asyncio.TimeoutError:
            have = self._mirror.versions.get(object_id, 0)
            raise VersionTimeoutError(f"object {object_id}: version {version} not reached in {timeout} s "
                               f"(local version {have})") from None
        if not self._reached(object_id, version):
            assert self._error is not None
            raise self._error
        return self._mask_copy(object_id)

    async def resync(self, object_id: int | None = None) -> None:
        if self._ws is None:
            raise StreamError("stream: not open")
        self._mirror.pending_resync.update([object_id] if object_id is not None else self._mirror.masks)
        await self._send(MaskMirror.resync_message(object_id, None if object_id is None else self._mirror.versions.get(object_id)))

    async def ping(self) -> None:
        if self._ws is None:
            raise StreamError("stream: not open")
        await self._send(dump(PingMessage()))

    async def _send(self, message: str) -> None:
        assert self._ws is not None
        try:
            await self._ws.send(message)
        except websockets.exceptions.ConnectionClosed as exc:  # the reason the server gave, as a typed error
            raise self._error or _closed_error(exc) from None

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> AsyncMaskStream:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
