"""The SDK's server API key on the stream handshake, and 401/429 replies mapped to typed errors (every REST call
carrying the key to a real server that requires one: ``tests/e2e/test_sdk.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from http import HTTPStatus

import httpx
import pytest

from client import AsyncClient, AuthenticationError, Client, RateLimitedError, SegError
from tests.client.fake_stream import FakeStreamServer

BASE = "http://segserver.test"
KEY = "k-123"


class KeyedStreamServer(FakeStreamServer):
    """The fake stream server, also refusing connections without ``X-API-Key: k-123``."""

    def _auth(self, connection, request):  # noqa: ANN001, ANN202
        if getattr(request, "headers", {}).get("X-API-Key") != KEY:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "x-api-key: invalid API key\n")
        return super()._auth(connection, request)


@pytest.fixture
def stream_server() -> Iterator[KeyedStreamServer]:
    srv = KeyedStreamServer((4, 5, 6))
    yield srv
    srv.shutdown()


def test_stream_sends_the_key(stream_server: KeyedStreamServer) -> None:
    with Client(stream_server.base_url, api_key=KEY) as client:
        with client.session("s1", "tok").stream(open_timeout=5) as stream:
            assert stream.shape == (4, 5, 6)
    with Client(stream_server.base_url) as client, pytest.raises(AuthenticationError):
        client.session("s1", "tok").stream(open_timeout=5)


def test_async_stream_sends_the_key(stream_server: KeyedStreamServer) -> None:
    async def run() -> tuple[int, int, int] | None:
        async with AsyncClient(stream_server.base_url, api_key=KEY) as client:
            async with client.session("s1", "tok").stream(open_timeout=5) as stream:
                return stream.shape

    assert asyncio.run(run()) == (4, 5, 6)


@pytest.mark.parametrize(("status", "code", "headers", "error", "retry_after"), [
    (429, "rate_limited", {"Retry-After": "4"}, RateLimitedError, 4.0),
    (429, "rate_limited", {}, RateLimitedError, None),
    (401, "api_key_required", {}, AuthenticationError, None),
    (401, "invalid_api_key", {}, AuthenticationError, None),
])
def test_key_and_rate_errors_are_typed(status: int, code: str, headers: dict[str, str], error: type[SegError],
                                       retry_after: float | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": "rate: slow down", "field": None}},
                              headers=headers)

    with Client(BASE, transport=httpx.MockTransport(handler), api_key=KEY) as client:
        with pytest.raises(error) as info:
            client.session("s1", "t").clicks(1, [[0, 0, 0]], [1])
    assert type(info.value) is error and info.value.status == status and info.value.code == code
    if error is RateLimitedError:
        assert info.value.retry_after == retry_after  # type: ignore[attr-defined]
