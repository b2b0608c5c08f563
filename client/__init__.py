"""Python SDK of the interactive segmentation service: numpy in, numpy out.

    from client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as api:       # api_key: when the server wants one
        session = api.create_session(volume, spacing=(2.5, 0.8, 0.8))     # (D, H, W) array, (sz, sy, sx)
        with session.stream() as stream:                                   # local masks from diff frames
            reply = session.box(1, [10, 40, 40, 30, 90, 90])              # inclusive [z0, y0, x0, z1, y1, x1]
            reply = session.clicks(1, [[20, 60, 61]], [1], mode="gru")    # (z, y, x), 1 = foreground
            mask = stream.wait_for_version(1, reply.version, timeout=5)   # == session.mask(1)
        session.close()

``AsyncClient`` / ``AsyncSession`` / ``AsyncMaskStream`` offer the same calls as coroutines. Replies
(``SessionCreated``, ``SessionInfo``, ``ObjectInfo``, ``PromptReply``, ``StepReply``) are frozen dataclasses with
the JSON's field names. The package needs httpx, numpy and websockets only (``client/pyproject.toml``); the wire
contract it shares with the server is ``client.wire``.

Exceptions: every error the SDK raises derives from ``SegError``, which carries ``status``, ``code``,
``message`` and ``field`` from the server's error body (``status`` is None for an error found locally):

    SegError
    ├── AuthenticationError       401/403  missing or wrong session token or server API key
    ├── NotFoundError             404      unknown object or route
    │   ├── SessionClosedError    404      the session was closed or deleted (also a SessionExpiredError)
    │   └── NoLocalMaskError      -        a stream holds no mask of that object yet (also a KeyError)
    ├── SessionExpiredError       410      the session is gone: it expired (or, as SessionClosedError, closed)
    ├── ValidationError           400/409/413/422, or local  bad input; ``field`` names it ("box", "format",
    │                                       "volume", ...)
    ├── RateLimitedError          429      over the rate limit; ``retry_after`` seconds
    ├── ServerBusyError           503      at capacity; ``retry_after`` seconds
    ├── ServerError               other 5xx
    ├── UnexpectedReplyError      2xx      a reply the SDK cannot read (a proxy in between, another version)
    ├── TransportError            -        no usable reply: connection refused/reset, timeout, undecodable
    ├── StreamError               -        the diff stream closed (``close_code``) or failed
    └── VersionTimeoutError       -        ``wait_for_version`` timed out (also a TimeoutError)

A session that no longer exists raises ``SessionExpiredError`` from every call, whether it expired (410) or
was closed (``SessionClosedError``, 404). Invalid arguments (a box of the wrong size, an unknown mask format,
a volume file that cannot be read) are caught locally, with the server's own validation where there is one,
as a ``ValidationError`` before anything is sent. Any other 4xx status raises ``SegError`` itself.
"""

from client._async import AsyncClient, AsyncSession
from client._errors import (
    AuthenticationError,
    NoLocalMaskError,
    NotFoundError,
    RateLimitedError,
    SegError,
    ServerBusyError,
    ServerError,
    SessionClosedError,
    SessionExpiredError,
    StreamError,
    TransportError,
    UnexpectedReplyError,
    ValidationError,
    VersionTimeoutError,
)
from client._mirror import MaskMirror
from client._stream import AsyncMaskStream, MaskStream
from client._sync import Client, Session
from client.wire.replies import ObjectInfo, PromptReply, SessionCreated, SessionInfo, StepReply
from client.wire.vocab import MaskFormat, OverlapRule

__all__ = [
    "AsyncClient",
    "AsyncMaskStream",
    "AsyncSession",
    "AuthenticationError",
    "Client",
    "MaskFormat",
    "MaskMirror",
    "MaskStream",
    "NoLocalMaskError",
    "NotFoundError",
    "ObjectInfo",
    "OverlapRule",
    "PromptReply",
    "RateLimitedError",
    "SegError",
    "ServerBusyError",
    "ServerError",
    "Session",
    "SessionClosedError",
    "SessionCreated",
    "SessionExpiredError",
    "SessionInfo",
    "StepReply",
    "StreamError",
    "TransportError",
    "UnexpectedReplyError",
    "ValidationError",
    "VersionTimeoutError",
]
