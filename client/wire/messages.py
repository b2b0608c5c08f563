"""JSON (text) messages of the WebSocket stream ``WS /v1/sessions/{sid}/stream``, as frozen dataclasses.

Binary messages are diff frames (``frames``); text messages are JSON objects told apart by ``type``
(``paths.StreamMessageType``):

    server -> client  {"type": "hello", "session_id": ..., "shape": [D, H, W], "frame_version": 1,
                       "objects": {"1": 4, ...}}                     first message; object id -> version
    client -> server  {"type": "resync", "object_id": 1 | null, "from_version": 3 | null}
                       the server answers with a snapshot frame of that object (of every object when null)
    client -> server  {"type": "ping"}           server -> client {"type": "pong"}
    server -> client  {"type": "removed", "object_id": 1, "version": 7}
    server -> client  {"type": "error", "error": {"code": ..., "message": ..., "field": ...}}

The server validates and writes them with its pydantic models (``app.schemas.diffs``);
``tests/sdk/test_wire_drift.py`` checks those against these.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from client.wire.decode import from_json
from client.wire.paths import StreamMessageType
from client.wire.replies import Shape3


@dataclass(frozen=True)
class StreamHello:
    """First server message: who you are talking to and each object's current version."""

    session_id: str
    shape: Shape3
    frame_version: int
    """Diff frame format version the server sends."""
    objects: dict[int, int] = field(default_factory=dict)
    """object id -> current version"""
    type: Literal["hello"] = "hello"


@dataclass(frozen=True)
class ResyncRequest:
    """Client asks for a snapshot frame of one object (``object_id``) or of all objects (None);
    ``from_version`` is the last version the client holds (informative)."""

    object_id: int | None = None
    from_version: int | None = None
    type: Literal["resync"] = "resync"


@dataclass(frozen=True)
class PingMessage:
    type: Literal["ping"] = "ping"


@dataclass(frozen=True)
class PongMessage:
    type: Literal["pong"] = "pong"


@dataclass(frozen=True)
class ObjectRemoved:
    """An object was deleted: drop its local mask."""

    object_id: int
    version: int
    type: Literal["removed"] = "removed"


@dataclass(frozen=True)
class ErrorDetail:
    """The ``error`` of an error body or stream error message."""

    code: str
    message: str
    field: str | None = None


@dataclass(frozen=True)
class ErrorMessage:
    """A client message was rejected; the connection stays open."""

    error: ErrorDetail
    type: Literal["error"] = "error"


ServerMessage = StreamHello | PongMessage | ObjectRemoved | ErrorMessage
_SERVER_MESSAGES: dict[str, type[ServerMessage]] = {
    StreamMessageType.HELLO: StreamHello,
    StreamMessageType.PONG: PongMessage,
    StreamMessageType.REMOVED: ObjectRemoved,
    StreamMessageType.ERROR: ErrorMessage,
}


def parse_server_message(text: str) -> ServerMessage:
    """A server's text message; ``ValueError`` naming what is wrong when it is not one."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = None
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in _SERVER_MESSAGES:
        raise ValueError(f"stream: unreadable message of type {kind!r}")
    try:
        return from_json(_SERVER_MESSAGES[kind], value, where=kind)
    except ValueError as exc:
        raise ValueError(f"stream: unreadable message of type {kind!r} ({exc})") from None


def dump(message: ResyncRequest | PingMessage) -> str:
    """A client message as the JSON text the server reads."""
    return json.dumps(asdict(message))
