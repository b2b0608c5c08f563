"""JSON (text) messages of the WebSocket stream ``WS /v1/sessions/{sid}/stream``.

Binary messages are diff frames (``app.schemas.frames``, docs/wire-format.md); text messages are these
JSON objects, told apart by ``type`` (``paths.StreamMessageType``):

    server -> client  {"type": "hello", "session_id": ..., "shape": [D, H, W], "frame_version": 1,
                       "objects": {"1": 4, ...}}                     first message; object id -> version
    client -> server  {"type": "resync", "object_id": 1 | null, "from_version": 3 | null}
                       the server answers with a snapshot frame of that object (of every object when null)
    client -> server  {"type": "ping"}           server -> client {"type": "pong"}
    server -> client  {"type": "removed", "object_id": 1, "version": 7}
    server -> client  {"type": "error", "error": {"code": ..., "message": ..., "field": ...}}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from app.schemas.errors import ErrorDetail
from app.schemas.sessions import Shape3


class StreamHello(BaseModel):
    """First server message: who you are talking to and each object's current version."""

    type: Literal["hello"] = "hello"
    session_id: str
    shape: Shape3
    frame_version: int = Field(description="Diff frame format version the server sends.")
    objects: dict[int, int] = Field(default_factory=dict, description="object id -> current version")


class ResyncRequest(BaseModel):
    """Client asks for a snapshot frame of one object (``object_id``) or of all objects (null).

    ``from_version`` is the last version the client holds (informative; the server may answer with the diffs
    since then or, always correct, with a snapshot)."""

    type: Literal["resync"] = "resync"
    object_id: int | None = None
    from_version: int | None = Field(default=None, ge=0)


class PingMessage(BaseModel):
    type: Literal["ping"] = "ping"


class PongMessage(BaseModel):
    type: Literal["pong"] = "pong"


class ObjectRemoved(BaseModel):
    """An object was deleted: drop its local mask."""

    type: Literal["removed"] = "removed"
    object_id: int
    version: int


class StreamError(BaseModel):
    """A client message was rejected; the connection stays open."""

    type: Literal["error"] = "error"
    error: ErrorDetail


ClientMessage = Annotated[ResyncRequest | PingMessage, Field(discriminator="type")]
ServerMessage = Annotated[StreamHello | PongMessage | ObjectRemoved | StreamError, Field(discriminator="type")]

CLIENT_MESSAGE_ADAPTER: TypeAdapter[ResyncRequest | PingMessage] = TypeAdapter(ClientMessage)
"""``CLIENT_MESSAGE_ADAPTER.validate_json(text)`` parses a client message (raises pydantic.ValidationError)."""
SERVER_MESSAGE_ADAPTER: TypeAdapter[StreamHello | PongMessage | ObjectRemoved | StreamError] = TypeAdapter(
    ServerMessage
)
"""``SERVER_MESSAGE_ADAPTER.validate_json(text)`` parses a server message."""
