"""FastAPI dependencies in one place, as ``Annotated`` aliases.

    SettingsDep   the process's Settings
    ManagerDep    the SessionManager
    SessionDep    the session of the ``{session_id}`` path, authenticated by its bearer token
                  (401 missing/bad token, 404 unknown or another session's token, 410 expired)
    ObjectIdPath  an object id path parameter, 1..65535
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Form, Header, Path
from starlette.requests import HTTPConnection

from app.config import Settings
from app.errors import InvalidInput
from app.schemas.paths import (
    BEARER_PREFIX,
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_OBJECT_ID,
    MIN_OBJECT_ID,
    SESSION_ID_HEADER,
)
from app.sessions.manager import SessionManager
from app.sessions.services import Services
from app.sessions.session import Session


def get_services(conn: HTTPConnection) -> Services:
    return conn.app.state.services  # type: ignore[no-any-return]


def get_settings(conn: HTTPConnection) -> Settings:
    return get_services(conn).settings


def get_manager(conn: HTTPConnection) -> SessionManager:
    return get_services(conn).manager


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != BEARER_PREFIX.strip().lower():
        return None
    return token.strip() or None


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]


async def find_session(services: Services, session_id: str, token: str | None) -> Session:
    """The session ``session_id`` authenticated by ``token``; with several replicas, taken over from another
    replica first when this one does not hold it (``app.sessions.replicas``)."""
    if services.replicas is not None:
        return await services.replicas.session_for(session_id, token)
    return services.manager.authenticate(session_id, token)


async def get_session(
    services: ServicesDep,
    session_id: Annotated[str, Path(description="The session id returned at creation.")],
    authorization: Annotated[str | None, Header(description="Bearer <token> of this session.")] = None,
) -> Session:
    session = await find_session(services, session_id, bearer_token(authorization))
    await services.manager.touch(session)
    return session


SessionDep = Annotated[Session, Depends(get_session)]
ObjectIdPath = Annotated[int, Path(ge=MIN_OBJECT_ID, le=MAX_OBJECT_ID, description="Object id (label value).")]
ExclusiveObjectsForm = Annotated[bool | None, Form(
    description="The objects are one label map's labels: one object's foreground click is a background click to "
    "the others (default: the server's exclusive_objects setting; docs/service.md, 'Exclusive objects').")]


_ROUTER_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")  # nginx's $request_id: 32 hex digits


def router_session_id(
    settings: SettingsDep,
    value: Annotated[str | None, Header(alias=SESSION_ID_HEADER, include_in_schema=False)] = None,
) -> str | None:
    """The id the router in front of several replicas chose for a new session (docs/reliability.md,
    "Several replicas"); None = a random id. Read only with ``trust_session_id_header``."""
    if not (settings.trust_session_id_header and value):
        return None
    if not _ROUTER_SESSION_ID.match(value):
        raise InvalidInput(f"session_id: {SESSION_ID_HEADER} must be 16-128 URL-safe characters",
                           field="session_id")
    return value


RouterSessionIdDep = Annotated[str | None, Depends(router_session_id)]


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def idempotency_key(
    value: Annotated[str | None, Header(alias=IDEMPOTENCY_KEY_HEADER, description=(
        "Optional client-chosen id of this prompt (1-128 of A-Z a-z 0-9 _ . : -, e.g. a uuid4): a retry with the "
        "same id returns the recorded reply and is not applied again."))] = None,
) -> str | None:
    """The prompt's idempotency key, checked before anything else runs (None: no exactly-once guarantee)."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise InvalidInput(f"{IDEMPOTENCY_KEY_HEADER}: must be 1-128 characters of A-Z a-z 0-9 _ . : -",
                           field=IDEMPOTENCY_KEY_HEADER)
    return value


IdempotencyKeyDep = Annotated[str | None, Depends(idempotency_key)]
