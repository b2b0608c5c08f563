"""Domain errors of the service layer (no web framework here).

``app.api.errors`` maps each class to an HTTP status, an error code and a WebSocket close code in one
table. Messages start with the field at fault ("box: z1 < z0") whenever there is one, and ``field`` names it.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServiceError):
    """A prompt or parameter is malformed or outside the volume; nothing was changed."""


class InvalidVolume(ServiceError):
    """An uploaded file is unreadable, not a 3D volume, or has non-finite values."""


class PayloadTooLarge(ServiceError):
    """An upload or a volume is larger than the configured limit."""


class Unauthorized(ServiceError):
    """The bearer token is missing or belongs to no session."""


class ApiKeyRequired(Unauthorized):
    """API keys are configured and the request carries none."""


class InvalidApiKey(Unauthorized):
    """The request's API key matches none of the configured hashes."""


class SessionNotFound(ServiceError):
    """No such session here (also used when a token of another session is presented: existence stays hidden)."""


class SessionExpired(ServiceError):
    """The session existed but expired (idle timeout or maximum age)."""


class LeaseGone(SessionExpired):
    """An nnInteractive lease is unknown, released or reaped (410, as the client expects)."""


class ObjectNotFound(ServiceError):
    """The session has no object with this id."""


class NothingToUndo(ServiceError):
    """Undo asked for an object whose undo stack is empty."""


class CapacityExceeded(ServiceError):
    """The server holds as many sessions (or device bytes) as it may; retry later."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(ServiceError):
    """The caller (API key, or client address without keys) sent more than its rate allows; retry later."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailable(ServiceError):
    """The metadata store could not be reached; the request was not acknowledged."""


class SessionRecordLost(StoreUnavailable):
    """The store no longer has the session (flushed, evicted or expired): a prompt could not be recorded.

    Its message is safe to show to clients (it names no backend)."""


class SessionMoved(ServiceError):
    """The session is now served by another replica: nothing was recorded; retry (the router sends the retry
    to the owner)."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, field="session_id")
        self.retry_after_s = retry_after_s
