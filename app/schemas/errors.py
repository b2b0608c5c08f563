"""The error body every non-2xx reply carries, and the stable error codes with their HTTP status.

    {"error": {"code": "validation_error", "message": "box: z1 < z0", "field": "box"}}

``field`` names the request field at fault (a body field, ``file``, a path or query parameter) or is null.
The SDK maps the HTTP status to its exception classes and keeps ``code`` and ``field``. The codes, their
status and the "field: problem" convention are wire vocabulary, defined once in ``client.wire.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from client.wire.errors import ERROR_STATUS, ErrorCode, field_from_message

__all__ = [
    "ERROR_STATUS",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "detail_from_pydantic",
    "error_body",
    "field_from_message",
]

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
