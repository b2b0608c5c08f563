"""Against a real server process: a session that is gone raises the SDK's session-gone error,
``SessionExpiredError``, from every call, whether it was closed (``SessionClosedError``, 404) or expired
(410); never a bare ``NotFoundError``."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from client import (
    Client,
    NotFoundError,
    SessionClosedError,
    SessionExpiredError,
    ValidationError,
)
from tests.e2e.conftest import Server, synthetic_volume

pytestmark = pytest.mark.e2e

BOX = [6, 20, 20, 17, 43, 43]  # the synthetic volume's bright block


def test_a_closed_session_raises_session_closed_from_every_call(server: Server) -> None:
    with Client(server.url) as c:
        session = c.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        session.box(1, BOX)
        session.close()
        calls: list[Callable[[], object]] = [
            session.info, lambda: session.box(1, BOX), lambda: session.clicks(1, [[10, 30, 30]], [1]),
            lambda: session.mask(1), lambda: session.download_mask(1, "nii.gz"), session.segmentation,
            lambda: session.undo(1), session.close,
        ]
        for call in calls:
            with pytest.raises(SessionClosedError) as info:
                call()
            err = info.value
            assert isinstance(err, SessionExpiredError) and isinstance(err, NotFoundError)
            assert (err.status, err.code, err.field) == (404, "session_not_found", "session_id")
        with pytest.raises(SessionExpiredError):  # the stream says so too (close code 4404)
            with session.stream(open_timeout=10) as stream:
                stream.wait_for_version(1, 1, timeout=10)


def test_an_expired_session_raises_session_expired(server_factory: Callable[..., Server]) -> None:
    idle = server_factory("--idle-timeout", "1", "--reaper-interval", "0.5", "--no-warmup")
    with Client(idle.url) as c:
        session = c.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        time.sleep(2.5)
        for call in (session.info, lambda: session.box(1, BOX)):
            with pytest.raises(SessionExpiredError) as info:
                call()
            assert type(info.value) is SessionExpiredError and info.value.status == 410
            assert info.value.code == "session_expired"


def test_an_unknown_mask_format_never_reaches_the_server(server: Server) -> None:
    with Client(server.url) as c:
        session = c.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        try:
            session.box(1, BOX)
            with pytest.raises(ValidationError) as info:
                session.download_mask(1, "png")
            assert info.value.field == "format" and info.value.status is None
            assert session.info().objects  # the session is untouched
        finally:
            session.close()
