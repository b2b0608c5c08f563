"""Server API keys: every ``/v1`` request must carry one of the configured keys (when any are configured).

This sits in front of the per-session bearer tokens: the API key says "this client may use the service",
the token says "this client opened that session". Only sha256 digests of the keys are configured
(``Settings.api_key_hashes``); a presented key is hashed and compared in constant time.

It is ASGI middleware rather than a route dependency so that a request without a valid key is refused
before its body is read (a session upload may be a gigabyte). ``/healthz``, ``/readyz``, ``/metrics`` and
the OpenAPI pages are outside ``/v1`` and stay open.

    HTTP:       header ``X-API-Key``                          -> 401 api_key_required / invalid_api_key
    WebSocket:  header ``X-API-Key`` or ``?api_key=<key>``    -> accepted, then closed with 4401 and a reason
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response, mapping_for
from app.config import hash_api_key
from app.errors import ApiKeyRequired, InvalidApiKey, Unauthorized
from app.schemas.paths import API_KEY_HEADER, API_KEY_QUERY, API_PREFIX

CALLER_SCOPE_KEY = "segsvc.caller"
"""ASGI scope entry naming the caller for rate limiting: ``key:<digest prefix>`` once a key is verified."""

_HEADER = API_KEY_HEADER.lower().encode("latin-1")


class ApiKeyCheck:
    """The configured key digests; ``verify`` returns the matching digest or raises ``Unauthorized``."""

    def __init__(self, hashes: Sequence[str]) -> None:
        self._hashes = tuple(h.lower() for h in hashes)

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def verify(self, key: str | None) -> str:
        if not key:
            raise ApiKeyRequired(f"{API_KEY_HEADER.lower()}: this server requires an API key "
                                 f"(header {API_KEY_HEADER})", field=API_KEY_HEADER.lower())
        digest = hash_api_key(key)
        matched = None
        for h in self._hashes:  # compare against every digest: the time does not depend on which matched
            if hmac.compare_digest(digest, h):
                matched = h
        if matched is None:
            raise InvalidApiKey(f"{API_KEY_HEADER.lower()}: invalid API key", field=API_KEY_HEADER.lower())
        return matched


def _header_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == _HEADER:
            return value.decode("latin-1").strip() or None
    return None


def _query_key(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(API_KEY_QUERY)
    return (values[0].strip() or None) if values else None


class ApiKeyAuth:
    """Refuse ``/v1`` HTTP requests and WebSocket connections without a configured API key."""

    def __init__(self, app: ASGIApp, check: ApiKeyCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.check or not _guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = _header_key(scope)
        if key is None and scope["type"] == "websocket":
            key = _query_key(scope)
        try:
            digest = self.check.verify(key)
        except Unauthorized as error:
            if scope["type"] == "http":
                await error_response(error)(scope, receive, send)
            else:
                await _close_websocket(receive, send, mapping_for(error).close_code, error.message)
            return
        scope[CALLER_SCOPE_KEY] = "key:" + digest[:16]
        await self.app(scope, receive, send)


def _guarded(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


async def _close_websocket(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Accept, then close with ``code``: browsers see the close code and reason, not a failed handshake."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason[:120]})


def document_api_key(app: FastAPI) -> None:
    """Declare the ``X-API-Key`` scheme in the OpenAPI document and require it on every ``/v1`` operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # cached on the app: the changes below are made once, in place
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        for path, operations in schema.get("paths", {}).items():
            if _guarded(path):
                for operation in operations.values():
                    operation.setdefault("security", []).append({"ApiKey": []})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
