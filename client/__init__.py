"""Python SDK of the interactive segmentation service: numpy in, numpy out.

    from client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as api:       # api_key: when the server wants one
        session = api.create_session(volume, spacing=(2.5, 0.8, 0.8))     # (D, H, W) array, (sz, sy, sx)
        with session.stream() as stream:                                   # local masks from diff frames
            reply = session.box(1, [10, 40, 40, 30, 90, 90])              # inclusive [z0, y0, x0, z1, y1, x1]
            reply = session.clicks(1, [[20, 60, 61]], [1], mode="gru")    # (z, y, x), 1 = foreground
            mask = stream.wait_for_version(1, reply.version, timeout=5)   # == session.mask(1)
        session.close()

``AsyncClient`` / ``AsyncSession`` / ``AsyncMaskStream`` offer the same calls as coroutines.

Exceptions (every error the SDK raises for a failed call derives from ``SegError``, which carries
``status``, ``code``, ``message`` and ``field`` from the server's error body):

    SegError
    ├── AuthenticationError   401/403  missing or wrong session token or server API key
    ├── NotFoundError         404      unknown session, object or route
    ├── SessionExpiredError   410      the session expired or was closed
    ├── ValidationError       400/409/413/422  bad input; ``field`` names it ("box", "points", "file", ...)
    ├── RateLimitedError      429      over the rate limit; ``retry_after`` seconds
    ├── ServerBusyError       503      at capacity; ``retry_after`` seconds
    ├── ServerError           other 5xx
    ├── TransportError        no reply: connection refused/reset, timeout
    └── StreamError           the diff stream closed (``close_code``) or failed

Invalid arguments are caught locally with the server's own validation (same ``ValidationError``) before
anything is sent. ``wait_for_version`` raises the built-in ``TimeoutError`` when the version does not arrive.
"""

from app.schemas.prompts import MaskFormat, OverlapRule, PromptReply, StepReply
from app.schemas.sessions import ObjectInfo, SessionCreated, SessionInfo
from client._async import AsyncClient, AsyncSession
from client._errors import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    SegError,
    ServerBusyError,
    ServerError,
    SessionExpiredError,
    StreamError,
    TransportError,
    ValidationError,
)
from client._mirror import MaskMirror
from client._stream import AsyncMaskStream, MaskStream
from client._sync import Client, Session

__all__ = [
    "AsyncClient",
    "AsyncMaskStream",
    "AsyncSession",
    "AuthenticationError",
    "Client",
    "MaskFormat",
    "MaskMirror",
    "MaskStream",
    "NotFoundError",
    "ObjectInfo",
    "OverlapRule",
    "PromptReply",
    "RateLimitedError",
    "SegError",
    "ServerBusyError",
    "ServerError",
    "Session",
    "SessionCreated",
    "SessionExpiredError",
    "SessionInfo",
    "StepReply",
    "StreamError",
    "TransportError",
    "ValidationError",
]
