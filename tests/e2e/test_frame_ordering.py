"""A frame is streamed only once its prompt is recorded: a store failure, a lost ownership or a ``kill -9``
between the model step and the history append must not leave a client holding a version the store never had.

Real ``python -m app`` processes on a redis-server of the test's own, reached through ``CommitGate`` (a TCP
relay that holds the server's history append, the Redis script of ``commit_prompt``, after the model step ran).
While it is held the test reads the stream with the SDK's real ``MaskMirror``: nothing may arrive. Then the
append fails (the relay cuts it), another replica takes the session, or the server is killed and a second
process restores the session; the mirror must end up equal to what the server serves.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from client import MaskMirror
from tests.e2e.commit_gate import CommitGate
from tests.e2e.conftest import PrivateRedis, Server, kill_server, upload

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BOX = [6, 20, 20, 17, 43, 43]
CLICK = {"points": [[10, 30, 30]], "labels": [1], "mode": "gru"}
NEXT_CLICK = {"points": [[12, 25, 38]], "labels": [0], "mode": "gru"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _mask(url: str, sid: str, token: str) -> tuple[int, np.ndarray]:
    r = httpx.get(f"{url}/v1/sessions/{sid}/objects/1/mask", headers=_auth(token), timeout=60)
    assert r.status_code == 200, r.text
    with np.load(io.BytesIO(r.content)) as npz:
        return int(r.headers["X-Object-Version"]), npz["mask"]


def _feed(ws: ClientConnection, mirror: MaskMirror, timeout: float) -> bool:
    """Hand one server message to the mirror (sending what it answers); False when none came in time."""
    try:
        message = ws.recv(timeout=timeout)
    except TimeoutError:
        return False
    replies = mirror.on_binary(message) if isinstance(message, bytes) else mirror.on_text(message)
    for reply in replies:
        ws.send(reply)
    return True


def _until(ws: ClientConnection, mirror: MaskMirror, version: int) -> None:
    deadline = time.monotonic() + 60
    while mirror.versions.get(1) != version or mirror.pending_resync:
        assert time.monotonic() < deadline, f"mirror stuck at {mirror.versions}, waiting for {version}"
        _feed(ws, mirror, timeout=5)


@pytest.fixture
def gate(private_redis: PrivateRedis) -> Iterator[CommitGate]:
    relay = CommitGate(private_redis.port)
    yield relay
    relay.close()


def _session_with_box(url: str) -> tuple[str, str]:
    created = upload(url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    r = httpx.post(f"{url}/v1/sessions/{sid}/objects/1/box", json={"box": BOX}, headers=_auth(token), timeout=60)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    return sid, token


def _ws(url: str, sid: str, token: str) -> ClientConnection:
    return connect(url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream", additional_headers=_auth(token))


def _click_in_background(url: str, sid: str, token: str, replies: list[httpx.Response]) -> threading.Thread:
    def post() -> None:
        try:
            replies.append(httpx.post(f"{url}/v1/sessions/{sid}/objects/1/clicks", json=CLICK,
                                      headers=_auth(token), timeout=60))
        except httpx.TransportError:  # the server was killed under it: no reply
            pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _hold_a_click(gate: CommitGate, ws: ClientConnection, mirror: MaskMirror, url: str, sid: str, token: str,
                  replies: list[httpx.Response]) -> threading.Thread:
    """Post a click whose history append the gate holds; assert the stream stays silent meanwhile."""
    gate.hold()
    click = _click_in_background(url, sid, token, replies)
    assert gate.held.wait(60), "the server never reached its history append"
    streamed = _feed(ws, mirror, timeout=3)
    assert not streamed, f"a frame of an unrecorded prompt was streamed (mirror now at {mirror.versions})"
    return click


def _frames_until_close(ws: ClientConnection) -> tuple[list[bytes | str], int | None]:
    received: list[bytes | str] = []
    try:
        while True:
            received.append(ws.recv(timeout=30))
    except ConnectionClosed:
        return received, ws.close_code


def test_kill_9_between_step_and_commit_streams_nothing_and_mirrors_converge(
        server_factory: Callable[..., Server], gate: CommitGate, tmp_path: Path) -> None:
    flags = ("--no-warmup", "--redis-url", gate.url, "--storage-dir", str(tmp_path / "storage"))
    first = server_factory(*flags)
    sid, token = _session_with_box(first.url)
    mirror = MaskMirror()
    replies: list[httpx.Response] = []
    with _ws(first.url, sid, token) as ws:
        _until(ws, mirror, 1)
        click = _hold_a_click(gate, ws, mirror, first.url, sid, token, replies)
        kill_server(first)
        gate.drop()
    click.join(timeout=30)
    assert replies == []  # never acknowledged

    gate.release()  # the restarted server's appends pass
    second = server_factory(*flags)
    version, _ = _mask(second.url, sid, token)
    assert version == 1  # the restored session holds only what was recorded
    with _ws(second.url, sid, token) as ws:
        _feed(ws, mirror, timeout=30)  # hello
        r = httpx.post(f"{second.url}/v1/sessions/{sid}/objects/1/clicks", json=NEXT_CLICK,
                       headers=_auth(token), timeout=60)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        _until(ws, mirror, 2)
    version, expected = _mask(second.url, sid, token)
    assert version == 2 and mirror.versions[1] == 2
    np.testing.assert_array_equal(mirror.masks[1], expected)


def test_store_failure_at_the_commit_streams_nothing(server_factory: Callable[..., Server],
                                                     gate: CommitGate) -> None:
    server = server_factory("--no-warmup", "--redis-url", gate.url)
    sid, token = _session_with_box(server.url)
    mirror = MaskMirror()
    replies: list[httpx.Response] = []
    with _ws(server.url, sid, token) as ws:
        _until(ws, mirror, 1)
        click = _hold_a_click(gate, ws, mirror, server.url, sid, token, replies)
        gate.drop()  # the append fails: the session is closed, the prompt not acknowledged
        click.join(timeout=60)
        received, code = _frames_until_close(ws)
    assert [r.status_code for r in replies] == [503], [r.text for r in replies]
    assert not [m for m in received if isinstance(m, bytes)], "a frame of the failed prompt was streamed"
    assert code == 4410 and mirror.versions == {1: 1}


def test_ownership_lost_at_the_commit_streams_nothing(server_factory: Callable[..., Server], gate: CommitGate,
                                                      private_redis: PrivateRedis, tmp_path: Path) -> None:
    import redis

    server = server_factory("--no-warmup", "--redis-url", gate.url, "--storage-dir", str(tmp_path / "storage"),
                            "--replica-id", "replica-a")
    sid, token = _session_with_box(server.url)
    mirror = MaskMirror()
    replies: list[httpx.Response] = []
    admin = redis.Redis.from_url(private_redis.url)
    try:
        with _ws(server.url, sid, token) as ws:
            _until(ws, mirror, 1)
            click = _hold_a_click(gate, ws, mirror, server.url, sid, token, replies)
            owner_key = f"segsvc:session:{sid}:owner"
            assert admin.get(owner_key) == b"replica-a"
            admin.set(owner_key, "replica-b")  # another replica took the session over meanwhile
            gate.release()
            click.join(timeout=60)
            received, code = _frames_until_close(ws)
        assert replies and replies[0].status_code != 200, [r.text for r in replies]
        assert replies[0].json()["error"]["code"] == "session_moved", replies[0].text
        assert not [m for m in received if isinstance(m, bytes)], "a frame of the unrecorded prompt was streamed"
        assert code == 1001 and mirror.versions == {1: 1}
        history = admin.lrange(f"segsvc:session:{sid}:prompts", 0, -1)
        assert len(history) == 1  # the box only
    finally:
        admin.close()
