"""The stable error codes of the error body ``{"error": {"code", "message", "field"}}`` and their HTTP status.

Messages start with the field at fault ("box: z1 < z0"); ``field_from_message`` reads it back, so a rule
that raises ``ValueError("box: ...")`` names its field wherever it runs (SDK or server).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z0-9_]+|\[\d+\])*:")


class ErrorCode(str, Enum):
    """Stable machine-readable error codes (the HTTP status is ``ERROR_STATUS[code]``)."""

    VALIDATION_ERROR = "validation_error"  # malformed or out-of-range input (a field is named)
    INVALID_VOLUME = "invalid_volume"  # unreadable / non-3D / non-finite upload
    PAYLOAD_TOO_LARGE = "payload_too_large"  # upload or volume past the configured limit
    UNAUTHORIZED = "unauthorized"  # missing or wrong bearer token
    API_KEY_REQUIRED = "api_key_required"  # API keys are configured and none was sent
    INVALID_API_KEY = "invalid_api_key"  # the API key matches no configured hash
    SESSION_NOT_FOUND = "session_not_found"
    OBJECT_NOT_FOUND = "object_not_found"
    NOTHING_TO_UNDO = "nothing_to_undo"
    SESSION_EXPIRED = "session_expired"
    RATE_LIMITED = "rate_limited"  # over the caller's rate: retry after ``Retry-After`` seconds
    SERVER_BUSY = "server_busy"  # capacity reached: retry after ``Retry-After`` seconds
    STORE_UNAVAILABLE = "store_unavailable"  # metadata store unreachable: retry after ``Retry-After`` seconds
    SESSION_MOVED = "session_moved"  # another replica took the session over: retry (nothing was recorded)
    INTERNAL_ERROR = "internal_error"


ERROR_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.INVALID_VOLUME: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.API_KEY_REQUIRED: 401,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.OBJECT_NOT_FOUND: 404,
    ErrorCode.NOTHING_TO_UNDO: 409,
    ErrorCode.SESSION_EXPIRED: 410,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.SESSION_MOVED: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}


def field_from_message(message: str) -> str | None:
    """The field named by a message written as "field: problem" ("points[2]: ..." -> "points"), else None."""
    match = _FIELD_PREFIX.match(message)
    return match.group(1) if match else None
