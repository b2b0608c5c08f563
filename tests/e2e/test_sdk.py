"""The SDK against the real app: a ``python -m app`` process (the e2e ``server``), nothing faked.

What each call sends is recorded on its way (a recording transport around httpx's real one), and what comes
back is the server's own answer, so the SDK's requests and its reading of the replies cannot drift from the
server. (``tests/client/test_client.py`` keeps only what a real server cannot be made to answer on demand:
each error status, a body that is not JSON, a refused connection, and the arguments refused locally.)
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from app.config import hash_api_key
from client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    SessionExpiredError,
    ValidationError,
)
from tests.e2e.conftest import SHAPE, Server
from tests.volumes import synthetic_volume

pytestmark = pytest.mark.e2e

BOX = [6, 20, 20, 17, 43, 43]


class RecordingTransport(httpx.HTTPTransport):
    """httpx's network transport, keeping every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def _json(request: httpx.Request) -> dict:
    return json.loads(request.content)


def test_numpy_upload_prompts_and_masks_through_the_sdk(server: Server) -> None:
    sent = RecordingTransport()
    with Client(server.url, transport=sent, timeout=120) as api:
        volume = synthetic_volume()
        session = api.create_session(volume, spacing=(2.0, 1.0, 1.0), modality="CT")
        assert session.shape == SHAPE and session.created is not None
        assert session.created.spacing == (2.0, 1.0, 1.0) and session.created.modality == "CT"
        assert session.created.config == "segvol-test" and session.created.exclusive_objects is True
        upload = sent.requests[-1]
        assert upload.url.path == "/v1/sessions"

        reply = session.box(1, np.array(BOX))
        assert _json(sent.requests[-1]) == {"box": BOX, "world": False}
        assert sent.requests[-1].headers["Authorization"] == f"Bearer {session.token}"
        assert reply.object_id == 1 and reply.version == 1 and [s.step for s in reply.steps] == ["box"]
        mask = session.mask(1)
        assert mask.dtype == np.uint8 and mask.shape == SHAPE and reply.changed == int(mask.sum())
        assert reply.bbox == tuple(int(v) for v in (*np.argwhere(mask).min(0), *np.argwhere(mask).max(0)))

        reply = session.clicks(1, np.array([[12, 30, 30], [8, 25, 25]]), np.array([1, 0]), mode="both")
        assert _json(sent.requests[-1]) == {"points": [[12, 30, 30], [8, 25, 25]], "labels": [1, 0],
                                            "mode": "both", "world": False}
        assert [(s.step, s.version) for s in reply.steps] == [("gru", 2), ("decoder", 3)] and reply.version == 3
        assert session.undo(1).version == 4 and np.array_equal(session.mask(1), mask)
        assert session.reset(1).version == 5 and session.mask(1).sum() == 0

        other = np.zeros(SHAPE, bool)
        other[1:3, 2:5, 3:6] = True
        assert session.set_mask(2, other).version == 1
        assert sent.requests[-1].method == "PUT"
        np.testing.assert_array_equal(session.mask(2), other.astype(np.uint8))
        labels = session.segmentation()
        assert labels.shape == SHAPE and set(np.unique(labels).tolist()) == {0, 2}
        assert sent.requests[-1].url.params["overlap"] == "confidence"
        np.testing.assert_array_equal(session.segmentation(overlap="recent"), labels)
        with np.load(io.BytesIO(session.download_mask(2, "npz"))) as npz:
            np.testing.assert_array_equal(npz["mask"], other.astype(np.uint8))

        info = session.info()
        assert {o.object_id: o.version for o in info.objects} == {1: 5, 2: 1}
        session.remove(2)
        assert [o.object_id for o in session.info().objects] == [1]
        session.close()
        with pytest.raises(NotFoundError) as gone:
            session.info()
        assert gone.value.status == 404 and gone.value.code == "session_not_found"


def test_the_servers_refusals_arrive_as_typed_errors_naming_the_field(server: Server) -> None:
    with Client(server.url, timeout=120) as api:
        session = api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        other = api.create_session(synthetic_volume(1), spacing=(2.0, 1.0, 1.0))
        with pytest.raises(ValidationError) as outside:
            session.box(1, [0, 0, 0, SHAPE[0], 10, 10])  # z1 past the volume: only the server knows its shape
        assert (outside.value.status, outside.value.field) == (422, "box")
        with pytest.raises(ValidationError) as point:
            session.clicks(1, [[0, SHAPE[1], 0]], [1])
        assert point.value.field == "points"
        with pytest.raises(NotFoundError) as unknown:
            session.undo(9)
        assert unknown.value.field == "object_id"
        session.box(1, BOX)
        session.undo(1)
        with pytest.raises(ValidationError) as nothing:
            session.undo(1)
        assert (nothing.value.status, nothing.value.code) == (409, "nothing_to_undo")
        with pytest.raises(AuthenticationError):
            api.session(session.session_id, "forged-token").info()
        with pytest.raises(NotFoundError):
            api.session(session.session_id, other.token).info()  # a real token of another session
        session.close()
        other.close()


def test_the_async_client_against_the_real_server(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, timeout=120) as api:
            session = await api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
            reply = await session.box(3, BOX)
            assert [s.step for s in reply.steps] == ["box"]
            reply = await session.clicks(3, [[12, 30, 30]], [1], mode="decoder")
            assert reply.object_id == 3 and reply.version == 2 and [s.step for s in reply.steps] == ["decoder"]
            mask = await session.mask(3)
            assert mask.shape == SHAPE and reply.changed >= 0
            await session.close()
            with pytest.raises((NotFoundError, SessionExpiredError)):
                await session.undo(3)

    asyncio.run(scenario())


def test_a_server_requiring_an_api_key_gets_it_on_every_call(server_factory: Callable[..., Server]) -> None:
    key = "k-123"
    keyed = server_factory("--no-warmup", "--api-key-hash", hash_api_key(key))
    sent = RecordingTransport()
    with Client(keyed.url, transport=sent, api_key=key, headers={"X-Trace": "1"}, timeout=120) as api:
        session = api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
        with session.stream(open_timeout=30) as stream:
            reply = session.box(1, BOX)
            np.testing.assert_array_equal(stream.wait_for_version(1, reply.version, timeout=60), session.mask(1))
        session.undo(1)
        session.close()
    assert len(sent.requests) == 5
    assert all(r.headers["X-API-Key"] == key and r.headers["X-Trace"] == "1" for r in sent.requests)
    with Client(keyed.url, timeout=120) as api, pytest.raises(AuthenticationError) as refused:
        api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
    assert refused.value.status == 401 and refused.value.code == "api_key_required"

    async def run() -> None:
        async with AsyncClient(keyed.url, api_key=key, timeout=120) as api:
            session = await api.create_session(synthetic_volume(), spacing=(2.0, 1.0, 1.0))
            assert (await session.box(1, BOX)).version == 1
            await session.close()

    asyncio.run(run())
