"""Refuse a new session before its upload is parsed, when the server is full or too busy to admit it.

Why here and not in the route: the framework parses a multipart body (the whole volume, in Python, on the
event loop, spooled to a temporary file) before a route's first line runs. Under overload the annotators who
wait for a session retry every Retry-After seconds: with 100 simulated annotators on 2 cores, about 10 uploads
a second were parsed in full only to be answered 503, on the event loop (and under the interpreter lock) the
admitted annotators' requests and the device threads need. This gate asks the session registry first (``SessionManager.check_room_for_session``: the
session limit, the device bytes and admission control) and, when it refuses, reads the body without parsing
it (so that the client sees the reply and its keep-alive connection stays usable) and answers 503 +
Retry-After with the usual error body. An admitted upload goes on unchanged; the registry checks again when the
session is created, since the state may change while the upload streams in.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.api.middleware import ROUTE_TEMPLATE_KEY
from app.errors import CapacityExceeded
from app.schemas import paths


class AdmissionGate:
    """503 + Retry-After for ``POST`` session creation while the registry would refuse it, before the body is
    parsed; the body is drained unparsed, up to ``drain_bytes`` (past that the connection is closed)."""

    def __init__(self, app: ASGIApp, drain_bytes: int) -> None:
        self.app = app
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != paths.SESSIONS:
            await self.app(scope, receive, send)
            return
        services = getattr(scope["app"].state, "services", None)
        try:
            if services is not None:
                services.manager.check_room_for_session()
        except CapacityExceeded as refused:
            scope[ROUTE_TEMPLATE_KEY] = paths.SESSIONS  # the request metrics label it by its route
            reply = error_response(refused)
            if not await self._drain(receive):
                reply.headers["Connection"] = "close"
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _drain(self, receive: Receive) -> bool:
        """Read and drop the request body; False when it ran past ``drain_bytes`` or the client left."""
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if received > self.drain_bytes:
                return False
            if not message.get("more_body", False):
                return True
