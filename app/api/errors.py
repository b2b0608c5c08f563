"""Domain errors -> HTTP status, error code and WebSocket close code: the one table, and its handlers.

Every non-2xx reply carries ``app.schemas.errors.ErrorBody``: ``{"error": {"code", "message", "field"}}``.

    domain error (app.errors)   HTTP  code                 WebSocket close
    InvalidInput                422   validation_error     4400
    InvalidVolume               422   invalid_volume       4400
    PayloadTooLarge             413   payload_too_large    4400
    Unauthorized                401   unauthorized         4401
    ApiKeyRequired              401   api_key_required     4401
    InvalidApiKey               401   invalid_api_key      4401
    SessionNotFound             404   session_not_found    4404
    ObjectNotFound              404   object_not_found     (stream: an "error" message, stays open)
    NothingToUndo               409   nothing_to_undo      -
    SessionExpired              410   session_expired      4410
    RateLimited                 429   rate_limited         4429   (+ Retry-After; HTTP only, streams are not limited)
    CapacityExceeded            503   server_busy          4503   (+ Retry-After)
    StoreUnavailable            503   store_unavailable    1011   (+ Retry-After: the retry_after_s setting)
    SessionRecordLost           503   store_unavailable    1011   (+ Retry-After; the store lost the session)
    SessionMoved                503   session_moved        4503   (+ Retry-After; another replica serves it now)

Framework errors use the same body: request validation and an unparsable body (the framework's 400) ->
422 naming the field, other HTTP errors keep their status (a 405 lists every method of the path in
``Allow``), anything unexpected -> 500 ``internal_error`` (details only in the server log).

``error_responses(...)`` declares these replies on a route for the OpenAPI document, with ``ErrorBody``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.errors import (
    ApiKeyRequired,
    CapacityExceeded,
    InvalidApiKey,
    InvalidInput,
    InvalidVolume,
    LeaseGone,
    NothingToUndo,
    ObjectNotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    SessionExpired,
    SessionMoved,
    SessionNotFound,
    SessionRecordLost,
    StoreUnavailable,
    Unauthorized,
)
from app.schemas.errors import ERROR_STATUS, ErrorBody, ErrorCode, detail_from_pydantic, error_body
from app.schemas.paths import API_KEY_HEADER, RETRY_AFTER_HEADER, StreamCloseCode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorMapping:
    code: ErrorCode
    close_code: int

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]


ERROR_TABLE: dict[type[ServiceError], ErrorMapping] = {
    InvalidInput: ErrorMapping(ErrorCode.VALIDATION_ERROR, StreamCloseCode.BAD_MESSAGE),
    InvalidVolume: ErrorMapping(ErrorCode.INVALID_VOLUME, StreamCloseCode.BAD_MESSAGE),
    PayloadTooLarge: ErrorMapping(ErrorCode.PAYLOAD_TOO_LARGE, StreamCloseCode.BAD_MESSAGE),
    Unauthorized: ErrorMapping(ErrorCode.UNAUTHORIZED, StreamCloseCode.UNAUTHORIZED),
    ApiKeyRequired: ErrorMapping(ErrorCode.API_KEY_REQUIRED, StreamCloseCode.UNAUTHORIZED),
    InvalidApiKey: ErrorMapping(ErrorCode.INVALID_API_KEY, StreamCloseCode.UNAUTHORIZED),
    SessionNotFound: ErrorMapping(ErrorCode.SESSION_NOT_FOUND, StreamCloseCode.NOT_FOUND),
    ObjectNotFound: ErrorMapping(ErrorCode.OBJECT_NOT_FOUND, StreamCloseCode.NOT_FOUND),
    NothingToUndo: ErrorMapping(ErrorCode.NOTHING_TO_UNDO, StreamCloseCode.BAD_MESSAGE),
    SessionExpired: ErrorMapping(ErrorCode.SESSION_EXPIRED, StreamCloseCode.SESSION_EXPIRED),
    LeaseGone: ErrorMapping(ErrorCode.SESSION_EXPIRED, StreamCloseCode.SESSION_EXPIRED),  # nnInteractive: 410
    RateLimited: ErrorMapping(ErrorCode.RATE_LIMITED, StreamCloseCode.RATE_LIMITED),
    CapacityExceeded: ErrorMapping(ErrorCode.SERVER_BUSY, StreamCloseCode.SERVER_BUSY),
    StoreUnavailable: ErrorMapping(ErrorCode.STORE_UNAVAILABLE, StreamCloseCode.INTERNAL_ERROR),
    SessionRecordLost: ErrorMapping(ErrorCode.STORE_UNAVAILABLE, StreamCloseCode.INTERNAL_ERROR),
    SessionMoved: ErrorMapping(ErrorCode.SESSION_MOVED, StreamCloseCode.SERVER_BUSY),
}

_INTERNAL = ErrorMapping(ErrorCode.INTERNAL_ERROR, StreamCloseCode.INTERNAL_ERROR)
_DEFAULT_RETRY_AFTER_S: int = Settings.model_fields["retry_after_s"].default

_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

# Plain HTTP errors raised by the framework (unknown route, wrong method, body too large, ...).
_HTTP_CODES: dict[int, str] = {
    400: ErrorCode.VALIDATION_ERROR.value,
    404: "not_found",
    405: "method_not_allowed",
    413: ErrorCode.PAYLOAD_TOO_LARGE.value,
    415: "unsupported_media_type",
}


_ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or wrong bearer token of the session (or API key, when the server has keys).",
    404: "Unknown session or object (or a token of another session).",
    409: "Nothing to undo.",
    410: "The session expired.",
    413: "Request body, upload or volume past the configured limit.",
    422: "Malformed or out-of-range input; `field` names it.",
    429: "Over the rate limit; retry after Retry-After seconds.",
    502: "The DICOMweb server failed or is unreachable.",
    503: "Server full, or the session store unreachable; retry after Retry-After seconds.",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can reply with, each with ``ErrorBody``.

    ``descriptions``: a route's own wording, keyed ``s422=...`` (keyword names cannot be numbers).
    """
    return {status: {"model": ErrorBody, "description": descriptions.get(f"s{status}", _ERROR_DESCRIPTIONS[status])}
            for status in statuses}


def mapping_for(error: ServiceError) -> ErrorMapping:
    """The table entry of ``error``'s class (or of its nearest mapped base class)."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return _INTERNAL


# The store's own message names its host and the driver's error: that goes to the log, not to clients.
STORE_UNAVAILABLE_MESSAGE = "store: the session store is unreachable; nothing was recorded, retry later"


def error_response(error: ServiceError, *, retry_after_s: int | None = None) -> JSONResponse:
    """The HTTP reply of a domain error.

    ``retry_after_s``: the ``Retry-After`` of a 503 whose error carries none itself (``StoreUnavailable``);
    the handlers pass the ``retry_after_s`` setting, the one ``CapacityExceeded`` carries.
    """
    m = mapping_for(error)
    headers: dict[str, str] = {}
    message = error.message
    if isinstance(error, (CapacityExceeded, RateLimited, SessionMoved)):
        headers[RETRY_AFTER_HEADER] = str(error.retry_after_s)
    elif m.status == 503 and retry_after_s is not None:
        headers[RETRY_AFTER_HEADER] = str(retry_after_s)
    if isinstance(error, StoreUnavailable) and not isinstance(error, SessionRecordLost):
        message = STORE_UNAVAILABLE_MESSAGE
    if isinstance(error, (ApiKeyRequired, InvalidApiKey)):
        headers["WWW-Authenticate"] = f'ApiKey header="{API_KEY_HEADER}"'
    elif isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(m.code, message, error.field), status_code=m.status, headers=headers)


def body_too_large_message(limit: int, field: str) -> str:
    """``field`` is "file" on upload routes, "body" on every other route."""
    what = "upload" if field == "file" else "request body"
    return f"{field}: the request body is over the {limit}-byte {what} limit"


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body streams in, as soon as it passes its route's limit."""

    def __init__(self, limit: int, field: str = "file") -> None:
        super().__init__(413, body_too_large_message(limit, field))
        self.field = field


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, StoreUnavailable):
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    settings: Settings | None = getattr(request.app.state, "settings", None)
    retry_after_s = settings.retry_after_s if settings is not None else _DEFAULT_RETRY_AFTER_S
    return error_response(exc, retry_after_s=retry_after_s)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = detail_from_pydantic(exc.errors())
    return JSONResponse(error_body(detail.code, detail.message, detail.field), status_code=422)


def _allowed_methods(request: Request) -> str | None:
    """Every method the request's path answers to, for the ``Allow`` header of a 405.

    Starlette stops at the first route whose path matches, so a path served by two routes (GET and DELETE
    of a session) would announce only one of them; the OpenAPI document lists them all.
    """
    path = request.url.path
    matches = []
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            matches.append((template.count("{"), sorted(m.upper() for m in operations if m.upper() in _HTTP_METHODS)))
    # The most literal template wins: /v1/sessions/dicomweb is its own resource, not a {session_id}.
    return ", ".join(min(matches)[1]) if matches else None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    field = exc.field if isinstance(exc, BodyTooLarge) else None
    if exc.status_code == 400:  # an unparsable body (bytes that are not JSON, broken multipart framing)
        reason = "could not parse the request body" if "parsing the body" in message else message.rstrip(".")
        return JSONResponse(error_body(ErrorCode.VALIDATION_ERROR, f"body: {reason}", "body"), status_code=422)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405 and (allow := _allowed_methods(request)):
        headers["Allow"] = allow
    return JSONResponse(error_body(code, message, field), status_code=exc.status_code, headers=headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body(ErrorCode.INTERNAL_ERROR, "server: internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
