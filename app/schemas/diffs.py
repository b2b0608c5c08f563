"""JSON (text) messages of the WebSocket stream ``WS /v1/sessions/{sid}/stream``, as the server validates
and writes them (pydantic). The messages themselves, with a table of who sends what, are defined by the wire
contract, ``client.wire.messages``; ``tests/sdk/test_wire_drift.py`` keeps these models equal to it.
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
