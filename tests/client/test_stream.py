"""The stream consumers against a real ``websockets`` server on 127.0.0.1: exact masks, gaps, resync."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest

from client import (
    AsyncMaskStream,
    AuthenticationError,
    MaskMirror,
    MaskStream,
    NoLocalMaskError,
    SessionClosedError,
    SessionExpiredError,
    StreamError,
    VersionTimeoutError,
)
from client.wire.frames import encode_diff
from tests.client.fake_stream import FakeStreamServer

SHAPE = (12, 16, 20)


def blob(rng: np.random.Generator) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = rng.uniform(0, SHAPE)
    r = rng.uniform(2, 6)
    return (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r).astype(np.uint8)


@pytest.fixture
def server() -> Iterator[FakeStreamServer]:
    srv = FakeStreamServer(SHAPE)
    yield srv
    srv.shutdown()


def open_stream(server: FakeStreamServer, token: str = "tok") -> MaskStream:
    return MaskStream(server.base_url, "s1", token, open_timeout=5)


def test_diffs_rebuild_every_version_exactly(server: FakeStreamServer) -> None:
    rng = np.random.default_rng(0)
    with open_stream(server) as stream:
        assert stream.shape == SHAPE
        mask = np.zeros(SHAPE, np.uint8)
        for _ in range(6):
            mask = mask | blob(rng) if rng.random() < 0.7 else mask & (1 - blob(rng))
            version = server.step(1, mask)
            np.testing.assert_array_equal(stream.wait_for_version(1, version, timeout=5), mask)
        other = blob(rng)
        v2 = server.step(2, other, step="box")
        np.testing.assert_array_equal(stream.wait_for_version(2, v2, timeout=5), other)
        assert stream.versions() == {1: 6, 2: 1}
    assert not [m for m in server.received if m["type"] == "resync"]


def test_a_missed_frame_triggers_one_resync_and_recovers(server: FakeStreamServer) -> None:
    rng = np.random.default_rng(1)
    with open_stream(server) as stream:
        a, b, c = blob(rng), blob(rng), blob(rng)
        server.step(1, a)
        server.step(1, a | b, deliver=False)  # lost on the way
        v3 = server.step(1, a | b | c)
        np.testing.assert_array_equal(stream.wait_for_version(1, v3, timeout=5), a | b | c)
        resyncs = [m for m in server.received if m["type"] == "resync"]
        assert resyncs == [{"type": "resync", "object_id": 1, "from_version": 1}]
        v4 = server.step(1, a)  # diffs after the snapshot apply normally
        np.testing.assert_array_equal(stream.wait_for_version(1, v4, timeout=5), a)


def test_late_joiner_gets_snapshots_of_existing_objects(server: FakeStreamServer) -> None:
    rng = np.random.default_rng(2)
    first, second = blob(rng), blob(rng)
    server.step(4, first)
    server.step(4, first | second)
    server.step(9, second)
    with open_stream(server) as stream:
        np.testing.assert_array_equal(stream.wait_for_version(4, 2, timeout=5), first | second)
        np.testing.assert_array_equal(stream.wait_for_version(9, 1, timeout=5), second)
    assert {"type": "resync", "object_id": None, "from_version": None} in server.received


def test_duplicates_are_ignored_and_removed_objects_dropped(server: FakeStreamServer) -> None:
    rng = np.random.default_rng(3)
    with open_stream(server) as stream:
        a = blob(rng)
        idx = np.flatnonzero(a.ravel())
        frame = encode_diff(idx, np.ones(idx.size, np.uint8), object_id=1, version=1, base_version=0, shape=SHAPE)
        server.truth[1], server.versions[1] = a, 1
        server.broadcast(frame)
        server.broadcast(frame)  # delivered twice: must not toggle anything nor resync
        v2 = server.step(1, a * 0)
        assert not stream.wait_for_version(1, v2, timeout=5).any()
        server.broadcast(json.dumps({"type": "removed", "object_id": 1, "version": 3}))
        for _ in range(500):  # poll: the reader thread handles the message asynchronously
            if 1 not in stream.versions():
                break
            time.sleep(0.01)
        assert 1 not in stream.versions()
        with pytest.raises(NoLocalMaskError, match="object_id: no local mask") as info:
            stream.mask(1)
        assert isinstance(info.value, KeyError) and str(info.value) == "object_id: no local mask for object 1"
    assert not [m for m in server.received if m["type"] == "resync"]


def test_wait_for_a_version_that_never_comes_times_out(server: FakeStreamServer) -> None:
    with open_stream(server) as stream, pytest.raises(VersionTimeoutError, match="version 3 not reached") as info:
        stream.wait_for_version(1, 3, timeout=0.2)
    assert isinstance(info.value, TimeoutError)


@pytest.mark.parametrize(
    ("code", "error"),
    [(4410, SessionExpiredError), (4404, SessionClosedError), (4401, AuthenticationError), (4503, StreamError),
     (1011, StreamError)],
)
def test_server_close_codes_surface_as_typed_errors(server: FakeStreamServer, code: int, error: type) -> None:
    with open_stream(server) as stream:
        server.close_all(code, "bye now")
        with pytest.raises(error) as info:
            stream.wait_for_version(1, 1, timeout=5)
        assert type(info.value) is error and "bye now" in info.value.message
        if error is StreamError:
            assert info.value.close_code == code


def test_close_before_hello_fails_the_open(server: FakeStreamServer) -> None:
    server.reject_with = (4401, "token: wrong token")  # accepted, then closed: how browsers learn the reason
    with pytest.raises(AuthenticationError, match="wrong token"):
        open_stream(server)


def test_wrong_token_is_refused_at_the_handshake(server: FakeStreamServer) -> None:
    with pytest.raises(AuthenticationError):
        open_stream(server, token="nope")


def test_async_stream_consumer(server: FakeStreamServer) -> None:
    rng = np.random.default_rng(4)

    async def scenario() -> None:
        async with AsyncMaskStream(server.base_url, "s1", "tok", open_timeout=5) as stream:
            a, b, c = blob(rng), blob(rng), blob(rng)
            v1 = await asyncio.to_thread(server.step, 1, a)
            np.testing.assert_array_equal(await stream.wait_for_version(1, v1, timeout=5), a)
            await asyncio.to_thread(server.step, 1, a | b, deliver=False)
            v3 = await asyncio.to_thread(server.step, 1, c)
            np.testing.assert_array_equal(await stream.wait_for_version(1, v3, timeout=5), c)
            with pytest.raises(TimeoutError):
                await stream.wait_for_version(1, 99, timeout=0.1)

    asyncio.run(scenario())


def test_mirror_asks_for_a_resync_after_a_corrupt_frame() -> None:
    mirror = MaskMirror()
    mirror.on_text(json.dumps({"type": "hello", "session_id": "s", "shape": list(SHAPE), "frame_version": 1,
                               "objects": {}}))
    replies = mirror.on_binary(b"SGDF garbage")
    assert replies == [MaskMirror.resync_message(None)] and mirror.errors
