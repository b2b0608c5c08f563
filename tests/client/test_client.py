"""The SDK over httpx.MockTransport: requests it sends, numpy round trips, and the error mapping."""

from __future__ import annotations

import asyncio
import io

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
from tests.client.fake_api import FakeApi, multipart

BASE = "http://segserver.test"


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> Client:
    return Client(BASE, transport=httpx.MockTransport(api))


def test_numpy_volume_upload_and_prompts(api: FakeApi, client: Client) -> None:
    volume = np.random.default_rng(0).integers(0, 255, (6, 7, 8)).astype(np.uint8)
    session = client.create_session(volume, spacing=(2.5, 0.8, 0.7), modality="CT")
    assert session.session_id == "s1" and session.shape == (6, 7, 8)
    form = api.uploads[0]
    assert form["spacing_order"] == b"zyx" and form["modality"] == b"CT"
    assert "exclusive_objects" not in form  # the server's setting unless asked
    client.create_session(volume, exclusive_objects=False)
    assert api.uploads[1]["exclusive_objects"] == b"false"
    with np.load(io.BytesIO(form["file"])) as npz:
        np.testing.assert_array_equal(npz["imgs"], volume)
        np.testing.assert_allclose(npz["spacing"], (2.5, 0.8, 0.7))

    reply = session.box(1, np.array([0, 1, 2, 3, 4, 5]))
    assert api.requests[-1].url.path == "/v1/sessions/s1/objects/1/box"
    assert api.requests[-1].headers["Authorization"] == "Bearer secret-token"
    assert api.last_json() == {"box": [0, 1, 2, 3, 4, 5], "world": False}
    assert reply.version == 1 and reply.bbox == (0, 0, 0, 1, 1, 1) and reply.steps[0].step == "gru"

    reply = session.clicks(1, np.array([[1, 2, 3], [2, 3, 4]]), np.array([1, 0]), mode="gru")
    assert api.last_json() == {"points": [[1, 2, 3], [2, 3, 4]], "labels": [1, 0], "mode": "gru", "world": False}
    assert reply.version == 2
    session.undo(1)
    assert api.requests[-1].url.path.endswith("/objects/1/undo") and api.requests[-1].method == "POST"
    session.reset(1)
    assert api.requests[-1].url.path.endswith("/objects/1/reset")


def test_masks_round_trip_as_numpy(api: FakeApi, client: Client) -> None:
    session = client.create_session(np.zeros((5, 6, 7), np.int16))
    mask = np.zeros((5, 6, 7), bool)
    mask[1:3, 2:5, 3:6] = True
    session.set_mask(2, mask)
    assert api.requests[-1].method == "PUT"
    with np.load(io.BytesIO(multipart(api.requests[-1])["file"])) as npz:
        assert npz["mask"].dtype == np.uint8
    got = session.mask(2)
    assert got.dtype == np.uint8 and got.shape == (5, 6, 7)
    np.testing.assert_array_equal(got, mask.astype(np.uint8))
    assert api.requests[-1].url.params["format"] == "npz"
    seg = session.segmentation()
    assert set(np.unique(seg)) == {0, 2}
    assert api.requests[-1].url.params["overlap"] == "confidence"
    session.segmentation(overlap="recent")
    assert api.requests[-1].url.params["overlap"] == "recent"


def test_bad_arguments_fail_locally_with_the_field_named(api: FakeApi, client: Client) -> None:
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
    api: FakeApi, client: Client, status: int, headers: dict[str, str], error: type[SegError], code: str
) -> None:
    api.forced = (status, {"error": {"code": code, "message": "box: z1 < z0", "field": "box"}}, headers)
    with pytest.raises(error) as info:
        client.session("s1", "secret-token").box(1, [0, 0, 0, 1, 1, 1])
    exc = info.value
    assert type(exc) is error
    assert (exc.status, exc.code, exc.field, exc.message) == (status, code, "box", "box: z1 < z0")
    if status == 503:
        assert isinstance(exc, ServerBusyError) and exc.retry_after == 7.0


def test_error_without_a_json_body_still_maps(api: FakeApi) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"overloaded", headers={"Retry-After": "soon"})

    with Client(BASE, transport=httpx.MockTransport(handler)) as client, pytest.raises(ServerBusyError) as info:
        client.session("s", "t").info()
    assert info.value.retry_after is None and info.value.message == "overloaded"


def test_wrong_token_is_an_authentication_error(api: FakeApi, client: Client) -> None:
    with pytest.raises(AuthenticationError, match="token"):
        client.session("s1", "other").mask(1)


def test_connection_failures_become_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client(BASE, transport=httpx.MockTransport(handler))
    with pytest.raises(TransportError, match="connection refused"):
        client.session("s", "t").info()
    assert client.health() is False


def test_async_client_mirrors_the_sync_one(api: FakeApi) -> None:
    async def scenario() -> None:
        async with AsyncClient(BASE, transport=httpx.MockTransport(api)) as client:
            session = await client.create_session(np.zeros((4, 5, 6), np.uint8), spacing=(1, 1, 1))
            reply = await session.clicks(3, [[1, 2, 3]], [1], mode="decoder")
            assert reply.object_id == 3 and api.last_json()["mode"] == "decoder"
            mask = np.zeros((4, 5, 6), np.uint8)
            mask[0, 0, :3] = 1
            await session.set_mask(3, mask)
            np.testing.assert_array_equal(await session.mask(3), mask)
            api.forced = (410, {"error": {"code": "session_expired", "message": "session: expired"}}, {})
            with pytest.raises(SessionExpiredError):
                await session.undo(3)
            with pytest.raises(ValidationError):
                await session.box(1, [1, 2, 3])

    asyncio.run(scenario())
