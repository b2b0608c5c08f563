"""Typed SDK exceptions, one per failure a caller may want to handle differently (see client/__init__)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from client.wire.errors import ErrorCode
from client.wire.paths import RETRY_AFTER_HEADER

SESSION_NOT_FOUND = ErrorCode.SESSION_NOT_FOUND.value


class SegError(Exception):
    """Base of every SDK error. ``status`` is the HTTP status (None when no reply came back); ``code``,
    ``message`` and ``field`` come from the server's error body."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


class AuthenticationError(SegError):
    """401/403: missing or wrong session token, or server API key (``code`` "api_key_required" /
    "invalid_api_key")."""


class NotFoundError(SegError):
    """404: unknown object or route (a session that is gone raises ``SessionClosedError``, also one of these);
    or, with ``status`` None, a stream holding no local mask of the object (``NoLocalMaskError``)."""


class SessionExpiredError(SegError):
    """The session is gone, so every further call on it fails the same way: 410, it expired (idle too long,
    or past its maximum age, or not restored after a server restart); or ``SessionClosedError`` (404), it
    was closed or deleted. Catch this one class to handle a session that no longer exists."""


class SessionClosedError(SessionExpiredError, NotFoundError):
    """404 ``session_not_found``: the session was closed (``Session.close()``, here or by another holder of
    its token) or deleted. A ``SessionExpiredError`` (the session is gone) and a ``NotFoundError`` (404)."""


class NoLocalMaskError(NotFoundError, KeyError):
    """A stream holds no local mask of the object (no frame of it arrived yet, or it was removed); no request
    was sent, ``status`` is None. Also a ``KeyError``, as a lookup in the stream's masks."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ValidationError(SegError):
    """400/409/413/422: the request was rejected; ``field`` names the input at fault (e.g. "box")."""


class ServerBusyError(SegError):
    """503: the server is at capacity; retry after ``retry_after`` seconds (None if not given)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RateLimitedError(SegError):
    """429: over the server's rate limit for this API key (or address); retry after ``retry_after`` seconds
    (None if not given)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(SegError):
    """5xx other than 503: a server-side failure; the request may or may not have been applied."""


class TransportError(SegError):
    """No usable HTTP reply: connection refused or reset, timeout, a body that cannot be decoded, a redirect
    loop."""


class UnexpectedReplyError(SegError):
    """A 2xx reply the SDK cannot read (not the JSON or npz the route answers with): a proxy answering in
    the server's place, or a server of an incompatible version. ``status`` is the reply's status."""


class VersionTimeoutError(SegError, TimeoutError):
    """``wait_for_version`` gave up: the stream did not deliver that version within ``timeout`` seconds.
    Also the built-in ``TimeoutError``."""


class StreamError(SegError):
    """The diff stream failed: connection closed by the server (``close_code``) or a protocol error."""

    def __init__(self, message: str, *, close_code: int | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.close_code = close_code


_BY_STATUS: dict[int, type[SegError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ValidationError,
    410: SessionExpiredError,
    413: ValidationError,
    422: ValidationError,
}


def error_from_reply(status: int, content: bytes, headers: Mapping[str, str]) -> SegError:
    """The exception for a non-2xx reply; reads the ``{"error": {...}}`` body when there is one."""
    code: str | None = None
    field: str | None = None
    message = f"HTTP {status}"
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        field = err.get("field") if isinstance(err.get("field"), str) else None
        message = str(err.get("message") or message)
    elif isinstance(body, dict) and "detail" in body:  # framework-generated errors
        message = str(body["detail"])
    elif content:
        message = content[:200].decode("utf-8", "replace")
    if status == 503:
        return ServerBusyError(message, retry_after=_retry_after(headers), status=status, code=code, field=field)
    if status == 429:
        return RateLimitedError(message, retry_after=_retry_after(headers), status=status, code=code, field=field)
    if status == 404 and code == SESSION_NOT_FOUND:
        return SessionClosedError(message, status=status, code=code, field=field)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else SegError)
    return cls(message, status=status, code=code, field=field)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get(RETRY_AFTER_HEADER) or headers.get(RETRY_AFTER_HEADER.lower())
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
