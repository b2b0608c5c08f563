"""``WS /v1/sessions/{sid}/stream``: every change of every object, as binary diff frames, as it happens.

Authentication: ``Authorization: Bearer <token>`` or ``?token=<token>`` (browsers cannot set headers on a
WebSocket). The connection is accepted first, then closed with a 44xx code when authentication fails
(4401 bad token, 4404 unknown session, 4410 expired), so browser clients can read the reason. When the
server has API keys, ``X-API-Key`` or ``?api_key=<key>`` is checked first (``app.api.api_keys``, 4401).

Server -> client: a JSON ``hello`` (object versions at subscription), then one binary frame per model step
(``app.schemas.frames``; docs/wire-format.md), JSON ``removed`` / ``pong`` / ``error`` messages.
Client -> client: JSON ``resync`` (answered with snapshot frames, in order with the diffs) and ``ping``.
A snapshot is built on the model thread that every session shares, so resyncs are rate-limited per session
(``resync_per_s``, ``resync_burst``; across all of the session's streams): the resyncs a connection sends past
the budget are coalesced into one snapshot of every object they named, sent once the budget allows it.
Nothing is refused, so a client waiting for its snapshot never stalls, and a flood costs one snapshot per
refill instead of one per message.
Client messages also reset the session's idle clock. Frames of a session go out in the order its steps
ran; a client more than ``stream_queue_frames`` messages behind is closed with 4503 and should reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pydantic
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.api.deps import ManagerDep, ServicesDep, bearer_token, find_session
from app.api.errors import mapping_for
from app.api.rate_limit import TokenBuckets
from app.errors import ObjectNotFound, ServiceError, SessionExpired, SessionNotFound
from app.schemas import paths
from app.schemas.diffs import CLIENT_MESSAGE_ADAPTER, PingMessage, PongMessage, StreamError, StreamHello
from app.schemas.errors import ErrorCode, ErrorDetail
from app.schemas.frames import FRAME_FORMAT_VERSION
from app.sessions.manager import SessionManager
from app.sessions.session import Session
from app.sessions.subscribers import Close, Subscriber

router = APIRouter(tags=["stream"])
log = logging.getLogger(__name__)

_MAX_CLIENT_MESSAGE_CHARS = 4096
_MAX_BAD_MESSAGES = 16


def _reason(text: str) -> str:
    return text.encode("utf-8")[:120].decode("utf-8", "ignore")  # close reasons are at most 123 bytes


@router.websocket(paths.STREAM)
async def stream(websocket: WebSocket, session_id: str, manager: ManagerDep, services: ServicesDep) -> None:
    token = bearer_token(websocket.headers.get(paths.AUTHORIZATION_HEADER)) or websocket.query_params.get(
        paths.STREAM_TOKEN_QUERY)
    await websocket.accept()
    try:
        session = await find_session(services, session_id, token)
        subscriber, versions = await manager.subscribe(session)
    except ServiceError as e:
        await websocket.close(code=mapping_for(e).close_code, reason=_reason(e.message))
        return
    resyncs = _Resyncs(websocket.app.state.resync_limiter, manager, session, subscriber)
    try:
        hello = StreamHello(session_id=session.session_id, shape=session.shape, frame_version=FRAME_FORMAT_VERSION,
                            objects=versions)
        await websocket.send_text(hello.model_dump_json())
        sender = asyncio.create_task(_send_loop(websocket, subscriber))
        receiver = asyncio.create_task(_receive_loop(websocket, manager, session, subscriber, resyncs))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                log.warning("stream %s: %r", session.session_id, exc)
    finally:
        resyncs.cancel()
        manager.unsubscribe(session, subscriber)


async def _send_loop(websocket: WebSocket, subscriber: Subscriber) -> None:
    while True:
        item = await subscriber.get()
        if isinstance(item, Close):
            await websocket.close(code=item.code, reason=_reason(item.reason))
            return
        if isinstance(item, bytes):
            await websocket.send_bytes(item)
        else:
            await websocket.send_text(item)


def _error_text(code: str, message: str, field: str | None) -> str:
    return StreamError(error=ErrorDetail(code=code, message=message, field=field)).model_dump_json()


async def _receive_loop(websocket: WebSocket, manager: SessionManager, session: Session, subscriber: Subscriber,
                        resyncs: _Resyncs) -> None:
    bad = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None or len(text) > _MAX_CLIENT_MESSAGE_CHARS:
            reply = _error_text(ErrorCode.VALIDATION_ERROR.value,
                                f"message: expected a JSON text message under {_MAX_CLIENT_MESSAGE_CHARS} chars",
                                "message")
            bad += 1
        else:
            try:
                parsed = CLIENT_MESSAGE_ADAPTER.validate_json(text)
            except pydantic.ValidationError as e:
                first = e.errors()[0] if e.errors() else {}
                reply = _error_text(ErrorCode.VALIDATION_ERROR.value,
                                    f"message: {first.get('msg', 'invalid message')}", "message")
                bad += 1
            else:
                reply = await _handle(manager, session, resyncs, parsed)
                if reply is None:
                    continue
        if bad > _MAX_BAD_MESSAGES:
            subscriber.close(Close(paths.StreamCloseCode.BAD_MESSAGE, "too many malformed messages"))
            return
        subscriber.push(reply)


async def _handle(manager: SessionManager, session: Session, resyncs: _Resyncs, msg: object) -> str | None:
    """Answer one valid client message; None when the answer already went to the outbox (or will)."""
    try:
        manager.get(session.session_id)  # ended sessions answer nothing more (the Close is queued)
    except (SessionNotFound, SessionExpired):
        return None
    manager.mark_used(session)
    if isinstance(msg, PingMessage):
        return PongMessage().model_dump_json()
    return await resyncs.request(getattr(msg, "object_id", None))


class _Resyncs:
    """One connection's resync requests, within the session's snapshot budget (``resync_limiter``).

    A request within the budget is answered at once. Past it, requests are coalesced: the first one starts a
    deferred snapshot that runs as soon as the budget refills, and every request until then only adds its
    object (None: all objects) to that snapshot.
    """

    def __init__(self, limiter: TokenBuckets, manager: SessionManager, session: Session, subscriber: Subscriber
                 ) -> None:
        self.limiter = limiter
        self.manager = manager
        self.session = session
        self.subscriber = subscriber
        self.pending: set[int | None] = set()
        self.deferred: asyncio.Task[None] | None = None

    async def request(self, object_id: int | None) -> str | None:
        if self.deferred is None:
            if self.limiter.take(self.session.session_id) == 0.0:
                return await self._snapshot(object_id)
            self.deferred = asyncio.create_task(self._deferred())
        self.pending.add(object_id)
        return None

    async def _deferred(self) -> None:
        while (wait_s := self.limiter.take(self.session.session_id)) > 0:
            await asyncio.sleep(wait_s)
        wanted, self.pending = self.pending, set()
        self.deferred = None
        for object_id in [None] if None in wanted else sorted(oid for oid in wanted if oid is not None):
            try:
                reply = await self._snapshot(object_id)
            except ServiceError as e:  # e.g. the store went away: the client asks again after reconnecting
                log.warning("stream %s: deferred resync: %s", self.session.session_id, e.message)
                return
            if reply is not None:
                self.subscriber.push(reply)

    async def _snapshot(self, object_id: int | None) -> str | None:
        try:
            await self.manager.snapshot(self.session, self.subscriber, object_id)
        except ObjectNotFound as e:
            return _error_text(ErrorCode.OBJECT_NOT_FOUND.value, e.message, e.field)
        except (SessionNotFound, SessionExpired):
            return None
        return None

    def cancel(self) -> None:
        if self.deferred is not None:
            self.deferred.cancel()
