"""The error body every non-2xx reply carries, and the stable error codes with their HTTP status.

    {"error": {"code": "validation_error", "message": "box: z1 < z0", "field": "box"}}

``field`` names the request field at fault (a body field, ``file``, a path or query parameter) or is null.
The SDK maps the HTTP status to its exception classes and keeps ``code`` and ``field``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class ErrorDetail(BaseModel):
    """One error: a stable ``code``, a human message starting with the field name, and that field."""

    model_config = ConfigDict(extra="ignore")

    code: str = Field(description="Stable error code, one of ErrorCode (clients must accept unknown codes).")
    message: str = Field(description='Human-readable message; starts with the field name, e.g. "box: z1 < z0".')
    field: str | None = Field(default=None, description="The request field at fault, when one is.")


class ErrorBody(BaseModel):
    """The JSON body of every error reply."""

    error: ErrorDetail


def error_body(code: ErrorCode | str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON-ready error body ``{"error": {...}}``."""
    code_str = code.value if isinstance(code, ErrorCode) else code
    return ErrorBody(error=ErrorDetail(code=code_str, message=message, field=field)).model_dump()


def field_from_message(message: str) -> str | None:
    """The field named by a message written as "field: problem" ("points[2]: ..." -> "points"), else None."""
    match = _FIELD_PREFIX.match(message)
    return match.group(1) if match else None


_SKIPPED_LOC_PARTS = {"body", "query", "path", "header", "form", "cookie"}


def detail_from_pydantic(errors: Sequence[Mapping[str, Any]]) -> ErrorDetail:
    """Turn pydantic / FastAPI validation errors into one ``ErrorDetail`` naming the first bad field.

    Our own validators raise ``ValueError("box: ...")``; pydantic prefixes "Value error, " which is removed.
    The field is the error's location without the leading "body"/"query"/... part, dotted ("points.2").
    """
    if not errors:
        return ErrorDetail(code=ErrorCode.VALIDATION_ERROR.value, message="request: invalid", field=None)
    first = errors[0]
    if first.get("type") == "json_invalid":  # FastAPI's loc is ("body", <character offset>): say so in words
        loc_parts = list(first.get("loc", ()))
        where = f" at character {loc_parts[-1]}" if len(loc_parts) > 1 else ""
        reason = str((first.get("ctx") or {}).get("error", "")).strip()
        detail = f" ({reason[:1].lower() + reason[1:]}{where})" if reason else where
        return ErrorDetail(code=ErrorCode.VALIDATION_ERROR.value, message=f"body: not valid JSON{detail}",
                           field="body")
    loc: Iterable[Any] = first.get("loc", ())
    parts = [str(p) for p in loc if str(p) not in _SKIPPED_LOC_PARTS]
    message = str(first.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    own_field = field_from_message(message)
    if own_field is not None:
        return ErrorDetail(code=ErrorCode.VALIDATION_ERROR.value, message=message, field=own_field)
    field = ".".join(parts) if parts else None
    text = f"{field}: {message}" if field else message
    return ErrorDetail(code=ErrorCode.VALIDATION_ERROR.value, message=text, field=field)
