"""Two replicas behind nginx: a session survives ``kill -9`` of the replica that serves it.

Real parts: two ``python -m app`` processes on the shared Redis (a key prefix of this test's own) and one
storage folder, nginx running ``deploy/nginx/segsvc.conf`` (rendered for these ports) in the foreground as
this user. The client talks only to nginx, over HTTP and the WebSocket stream.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.conftest import SHARED_REDIS_URL, Server, kill_server, upload
from tests.e2e.nginx_router import nginx_binary, start_nginx

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

REDIS_URL = SHARED_REDIS_URL
BOX = [6, 20, 20, 17, 43, 43]
CLICKS = [((10, 30, 30), 1, "gru"), ((12, 25, 38), 0, "both"), ((8, 40, 24), 1, "decoder")]



class Client:
    """One session, through nginx."""

    def __init__(self, url: str, session_id: str, token: str) -> None:
        self.base = f"{url}/v1/sessions/{session_id}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, headers=self.headers, timeout=300)

    def click(self, oid: int, point: tuple[int, int, int], label: int, mode: str) -> httpx.Response:
        return self.post(f"/objects/{oid}/clicks", {"points": [list(point)], "labels": [label], "mode": mode})

    def get(self, path: str = "") -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.headers, timeout=300)

    def state(self) -> tuple[list[dict[str, object]], dict[int, tuple[int, np.ndarray]]]:
        info = self.get()
        assert info.status_code == 200, info.text
        masks = {}
        for obj in info.json()["objects"]:
            r = self.get(f"/objects/{obj['object_id']}/mask")
            assert r.status_code == 200, r.text
            with np.load(io.BytesIO(r.content)) as npz:
                masks[obj["object_id"]] = (int(r.headers["X-Object-Version"]), npz["mask"])
        return info.json()["objects"], masks


def _owner(prefix: str, session_id: str) -> str | None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return client.get(f"{prefix}session:{session_id}:owner")
    finally:
        client.close()


def _history(prefix: str, session_id: str) -> list[dict[str, object]]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [json.loads(p) for p in client.lrange(f"{prefix}session:{session_id}:prompts", 0, -1)]
    finally:
        client.close()


def _frames_until(ws, version: int, timeout_s: float = 120.0) -> list[bytes]:  # noqa: ANN001
    """Binary frames received until one carries ``version`` (the frame header's version field)."""
    from app.schemas.frames import decode_diff

    frames, deadline = [], time.monotonic() + timeout_s
    while True:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, bytes):
            frames.append(message)
            if decode_diff(message).version >= version:
                return frames


@pytest.fixture
def nginx_available() -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (Debian package nginx)")


def test_kill_9_of_the_serving_replica_fails_over_to_the_other(
        nginx_available: None, server_factory: Callable[..., Server], redis_prefix: str, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    env = {"SEGSVC_REDIS_PREFIX": redis_prefix}

    def replica(name: str) -> Server:
        return server_factory("--no-warmup", "--redis-url", REDIS_URL, "--storage-dir", str(storage),
                              "--replica-id", name, "--directory-ttl", "3", "--trust-session-id-header",
                              "--log-level", "info", env=env)

    replicas = {name: replica(name) for name in ("r1", "r2")}
    nginx = start_nginx(tmp_path / "nginx", [replicas["r1"].url.removeprefix("http://"),
                                             replicas["r2"].url.removeprefix("http://")])
    try:
        created = upload(nginx.url)
        assert created.status_code == 201, created.text
        sid, token = created.json()["session_id"], created.json()["token"]
        assert re.fullmatch(r"[0-9a-f]{32}", sid), sid  # named by nginx ($request_id)
        owner = _owner(redis_prefix, sid)
        assert owner in replicas
        survivor = next(name for name in replicas if name != owner)
        client = Client(nginx.url, sid, token)

        ws_url = f"{client.base.replace('http://', 'ws://')}/stream"
        with connect(ws_url, additional_headers=client.headers, open_timeout=60) as ws:
            hello = json.loads(ws.recv(timeout=60))
            assert hello["type"] == "hello" and hello["objects"] == {}
            r = client.post("/objects/1/box", {"box": BOX})
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
            version = 1
            for point, label, mode in CLICKS:
                r = client.click(1, point, label, mode)
                assert r.status_code == 200, r.text
                version = r.json()["version"]
            assert version == 5  # box, gru, gru + decoder, decoder
            assert len(_frames_until(ws, version)) >= 1  # the stream through nginx carries the steps
            assert _owner(redis_prefix, sid) == owner  # every request went to the session's replica
            before = client.state()
            acknowledged = _history(redis_prefix, sid)
            # box, gru click, the both click's GRU step and its deferred decoder step (a refine entry), decoder
            assert [(p["op"], p["version"]) for p in acknowledged] == [
                ("box", 1), ("clicks", 2), ("clicks", 3), ("refine", 4), ("clicks", 5)]

            kill_server(replicas[owner])  # no shutdown hook runs
            with pytest.raises((ConnectionClosed, TimeoutError)):  # its stream dies with it
                while True:
                    ws.recv(timeout=30)

        started = time.monotonic()
        after = client.state()  # nginx: connection refused -> the other replica, which takes it over
        failover_s = time.monotonic() - started
        assert _owner(redis_prefix, sid) == survivor
        assert after[0] == before[0]
        for oid, (v, mask) in before[1].items():
            assert after[1][oid][0] == v and np.array_equal(after[1][oid][1], mask)  # bit for bit
        assert _history(redis_prefix, sid) == acknowledged  # nothing acknowledged lost, nothing added

        with connect(ws_url, additional_headers=client.headers, open_timeout=60) as ws:
            hello = json.loads(ws.recv(timeout=60))
            assert hello["objects"] == {"1": 5}
            r = client.click(1, (11, 33, 30), 1, "both")
            assert r.status_code == 200 and r.json()["version"] == 7, r.text
            assert _frames_until(ws, 7)
        assert client.post("/objects/1/undo").json()["version"] == 8
        assert [p["version"] for p in _history(redis_prefix, sid)] == [1, 2, 3, 4, 5, 6, 7, 8]

        log = replicas[survivor].log_path.read_text(errors="replace")
        took = re.search(rf"took over session {sid} from {owner} \(([^)]*)\): 5 history entries replayed in ([0-9.]+) s",
                         log)
        assert took is not None, log[-3000:]
        lines = [ln for ln in nginx.access_log() if sid in ln]
        assert any(replicas[owner].url.removeprefix("http://") in ln and "," in ln for ln in lines), lines
        print(f"fail-over: first request after kill -9 answered in {failover_s:.2f} s "
              f"(take-over: {took.group(1)}, replay of 5 history entries {took.group(2)} s)")

        # A store that lost the session (flushed): the prompt is refused, not acknowledged.
        import redis

        r_client = redis.Redis.from_url(REDIS_URL)
        try:
            r_client.delete(*r_client.scan_iter(match=f"{redis_prefix}session:{sid}*"))
        finally:
            r_client.close()
        r = client.click(1, (10, 30, 30), 1, "gru")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        assert "no longer in the session store" in r.json()["error"]["message"]
        assert _history(redis_prefix, sid) == []
        assert client.get().status_code == 410
    finally:
        nginx.stop()
