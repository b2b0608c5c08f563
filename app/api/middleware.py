"""ASGI middleware: request latency metrics per route template, and the request body size limit."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import BodyTooLarge, body_too_large_message
from app.api.routes_match import template_regex
from app.schemas import nninteractive as nnia_proto
from app.schemas import paths
from app.schemas.errors import ErrorCode, error_body
from app.sessions.metrics import ServiceMetrics

ROUTE_TEMPLATE_KEY = "segsvc.route_template"
"""Scope key of the route template of a request answered by a middleware before routing (the metric's label)."""


class RequestMetrics:
    """Observe every HTTP request's latency, labelled by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or scope.get(ROUTE_TEMPLATE_KEY) or "unmatched"
            self.metrics.request_seconds.labels(method=scope["method"], route=template, status=str(status)).observe(
                time.perf_counter() - started)


UPLOAD_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", paths.SESSIONS),
    ("PUT", paths.OBJECT_MASK),
    ("POST", paths.MONAILABEL_INFER),
    ("PUT", paths.MONAILABEL_SESSIONS),
    ("PUT", paths.MONAILABEL_DATASTORE),
    ("PUT", paths.MONAILABEL_DATASTORE_IMAGE),
    ("PUT", paths.MONAILABEL_DATASTORE_LABEL),
    # nnInteractive's binary calls carry a whole image or a volume-sized mask (NNIA arrays).
    *(("POST", nnia_proto.NNINTERACTIVE_PREFIX + path) for path in (
        nnia_proto.PATH_SET_IMAGE, nnia_proto.PATH_ADD_SCRIBBLE, nnia_proto.PATH_ADD_LASSO,
        nnia_proto.PATH_ADD_INITIAL_SEG)),
)
"""(method, route template) pairs that take a file upload; every other body (JSON prompts, small forms) gets
the much smaller ``max_request_body_bytes``."""

_UPLOADS = tuple((method, template_regex(t)) for method, t in UPLOAD_ROUTES)


def is_upload(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in _UPLOADS)


class BodySizeLimit:
    """Refuse request bodies over their route's limit with 413, counting bytes as they stream in.

    Upload routes (``UPLOAD_ROUTES``) allow ``upload_bytes``, every other request ``other_bytes``: a prompt
    is a few hundred bytes, and a 50 MB JSON body must not be buffered and parsed to find that out. A
    declared ``Content-Length`` past the limit is refused before the body is read; otherwise the body is
    counted chunk by chunk and ``BodyTooLarge`` is raised inside the app's ``receive`` the moment the count
    passes the limit (the app's error handler turns it into the 413 error body).
    """

    def __init__(self, app: ASGIApp, upload_bytes: int, other_bytes: int) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.other_bytes = other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = is_upload(scope["method"], scope["path"])
        max_bytes, field = (self.upload_bytes, "file") if upload else (self.other_bytes, "body")
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await _reply_413(send, max_bytes, field)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes, field)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply_413(send: Send, limit: int, field: str) -> None:
    body = json.dumps(error_body(ErrorCode.PAYLOAD_TOO_LARGE, body_too_large_message(limit, field), field)).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
