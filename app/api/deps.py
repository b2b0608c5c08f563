"""FastAPI dependencies in one place, as ``Annotated`` aliases.

    SettingsDep   the process's Settings
    ManagerDep    the SessionManager
    SessionDep    the session of the ``{session_id}`` path, authenticated by its bearer token
                  (401 missing/bad token, 404 unknown or another session's token, 410 expired)
    ObjectIdPath  an object id path parameter, 1..65535
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path
from starlette.requests import HTTPConnection

from app.config import Settings
from app.schemas.paths import BEARER_PREFIX, MAX_OBJECT_ID, MIN_OBJECT_ID
from app.sessions.manager import Session, SessionManager
from app.sessions.services import Services


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


async def get_session(
    manager: ManagerDep,
    session_id: Annotated[str, Path(description="The session id returned at creation.")],
    authorization: Annotated[str | None, Header(description="Bearer <token> of this session.")] = None,
) -> Session:
    session = manager.authenticate(session_id, bearer_token(authorization))
    await manager.touch(session)
    return session


SessionDep = Annotated[Session, Depends(get_session)]
ObjectIdPath = Annotated[int, Path(ge=MIN_OBJECT_ID, le=MAX_OBJECT_ID, description="Object id (label value).")]
