"""The SDK's error mapping and local validation over httpx.MockTransport (the real app: tests/e2e/test_sdk.py)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    SegError,
    ServerBusyError,
    ServerError,
    SessionClosedError,
    SessionExpiredError,
    TransportError,
    ValidationError,
)

BASE = "http://segserver.test"


class ForcedReplies:
    """Answers every request with one chosen error reply, and records the requests.

    Only for what a real server cannot be made to answer on demand (each error status, a non-JSON body);
    every call's wire format and the successful replies are tested against the real app in
    ``tests/e2e/test_sdk.py``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.forced: tuple[int, dict, dict[str, str]] = (500, {}, {})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body, headers = self.forced
        return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def api() -> ForcedReplies:
    return ForcedReplies()


@pytest.fixture
def client(api: ForcedReplies) -> Client:
    return Client(BASE, transport=httpx.MockTransport(api))


def test_bad_arguments_fail_locally_with_the_field_named(api: ForcedReplies, client: Client) -> None:
    session = client.session("s1", "secret-token")
    cases = [
        (lambda: session.box(1, [0, 1, 2]), "box"),
        (lambda: session.box(1, [5, 1, 2, 3, 4, 5]), "box"),
        (lambda: session.clicks(1, [[1, 2]], [1]), "points"),
        (lambda: session.clicks(1, [[1, 2, 3]], [2]), "labels"),
        (lambda: session.clicks(1, [[1, 2, 3]], [1, 0]), "labels"),
        (lambda: session.clicks(1, [[1, 2, 3]], [1], mode="fast"), "mode"),  # type: ignore[arg-type]
        (lambda: session.undo(0), "object_id"),
        (lambda: session.segmentation(overlap="newest"), "overlap"),  # type: ignore[arg-type]
        (lambda: session.set_mask(1, np.full((2, 2, 2), 3)), "mask"),
        (lambda: client.create_session(np.zeros((4, 5))), "volume"),
        (lambda: client.create_session(np.zeros((4, 5, 6)), spacing=(1, 0, 1)), "spacing"),
        (lambda: client.create_session(np.zeros((4, 5, 6)), exclusive_objects="no"), "exclusive_objects"),  # type: ignore[arg-type]
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == field and info.value.message.startswith(field)
    assert api.requests == []


@pytest.mark.parametrize(
    ("status", "headers", "error", "code"),
    [
        (400, {}, ValidationError, "validation_error"),
        (401, {}, AuthenticationError, "unauthorized"),
        (404, {}, SessionClosedError, "session_not_found"),
        (404, {}, NotFoundError, "object_not_found"),
        (409, {}, ValidationError, "nothing_to_undo"),
        (410, {}, SessionExpiredError, "session_expired"),
        (413, {}, ValidationError, "payload_too_large"),
        (422, {}, ValidationError, "validation_error"),
        (503, {"Retry-After": "7"}, ServerBusyError, "server_busy"),
        (500, {}, ServerError, "internal_error"),
        (502, {}, ServerError, "internal_error"),
        (418, {}, SegError, "teapot"),
    ],
)
def test_error_replies_map_to_typed_exceptions(
    api: ForcedReplies, client: Client, status: int, headers: dict[str, str], error: type[SegError], code: str
) -> None:
    api.forced = (status, {"error": {"code": code, "message": "box: z1 < z0", "field": "box"}}, headers)
    with pytest.raises(error) as info:
        client.session("s1", "secret-token").box(1, [0, 0, 0, 1, 1, 1])
    exc = info.value
    assert type(exc) is error
    assert (exc.status, exc.code, exc.field, exc.message) == (status, code, "box", "box: z1 < z0")
    if status == 503:
        assert isinstance(exc, ServerBusyError) and exc.retry_after == 7.0


def test_error_without_a_json_body_still_maps(api: ForcedReplies) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"overloaded", headers={"Retry-After": "soon"})

    with Client(BASE, transport=httpx.MockTransport(handler)) as client, pytest.raises(ServerBusyError) as info:
        client.session("s", "t").info()
    assert info.value.retry_after is None and info.value.message == "overloaded"


def test_connection_failures_become_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client(BASE, transport=httpx.MockTransport(handler))
    with pytest.raises(TransportError, match="connection refused"):
        client.session("s", "t").info()
    assert client.health() is False


def test_the_async_client_maps_errors_and_refuses_locally_like_the_sync_one(api: ForcedReplies) -> None:
    async def scenario() -> None:
        async with AsyncClient(BASE, transport=httpx.MockTransport(api)) as client:
            session = client.session("s1", "secret-token")
            api.forced = (410, {"error": {"code": "session_expired", "message": "session: expired"}}, {})
            with pytest.raises(SessionExpiredError):
                await session.undo(3)
            sent = len(api.requests)
            with pytest.raises(ValidationError):
                await session.box(1, [1, 2, 3])
            assert len(api.requests) == sent  # refused before anything was sent

    asyncio.run(scenario())
