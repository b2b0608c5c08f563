"""Upload -> box -> 5 clicks against a real server; the mask rebuilt from WebSocket diff frames equals
GET .../mask after every step. Run once with the in-process store and once with Redis."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.schemas.frames import apply_diff, decode_diff
from tests.e2e.conftest import SHAPE, Server, upload

pytestmark = pytest.mark.e2e

CLICKS = [((10, 30, 30), 1, "both"), ((12, 25, 38), 0, "gru"), ((8, 40, 24), 1, "both"),
          ((14, 22, 22), 1, "gru"), ((11, 42, 41), 0, "decoder")]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _get_mask(url: str, sid: str, token: str, oid: int) -> tuple[np.ndarray, int]:
    r = httpx.get(f"{url}/v1/sessions/{sid}/objects/{oid}/mask", params={"format": "npz"}, headers=_auth(token))
    assert r.status_code == 200, r.text
    with np.load(io.BytesIO(r.content)) as npz:
        return npz["mask"], int(r.headers["X-Object-Version"])


class StreamMirror:
    """Applies every frame of one object; remembers the step order it saw."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.mask = np.zeros(SHAPE, np.uint8)
        self.version = 0
        self.steps: list[str] = []
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and tuple(hello["shape"]) == SHAPE and hello["objects"] == {}

    def until(self, version: int) -> np.ndarray:
        while self.version < version:
            msg = self.ws.recv(timeout=30)
            assert isinstance(msg, bytes), msg
            frame = decode_diff(msg)
            self.version = apply_diff(self.mask, frame, self.version)
            self.steps.append(frame.step)
        assert self.version == version
        return self.mask


def run_flow(url: str) -> tuple[str, str]:
    """The whole user flow; returns (session id, token)."""
    created = upload(url)
    assert created.status_code == 201, created.text
    info = created.json()
    sid, token = info["session_id"], info["token"]
    assert tuple(info["shape"]) == SHAPE and tuple(info["spacing"]) == (2.0, 1.0, 1.0)
    ws_url = url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream"
    with connect(ws_url, additional_headers=_auth(token)) as ws:
        mirror = StreamMirror(ws)
        r = httpx.post(f"{url}/v1/sessions/{sid}/objects/1/box", json={"box": [6, 20, 20, 17, 43, 43]},
                       headers=_auth(token))
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["version"] == 1 and reply["changed"] > 0 and len(reply["bbox"]) == 6
        assert "timings_ms" in reply
        rebuilt = mirror.until(reply["version"])
        expected, version = _get_mask(url, sid, token, 1)
        assert version == reply["version"] and np.array_equal(rebuilt, expected)
        for point, label, mode in CLICKS:
            r = httpx.post(f"{url}/v1/sessions/{sid}/objects/1/clicks",
                           json={"points": [list(point)], "labels": [label], "mode": mode}, headers=_auth(token))
            assert r.status_code == 200, r.text
            reply = r.json()
            steps = [s["step"] for s in reply["steps"]]
            assert steps == (["gru", "decoder"] if mode == "both" else [mode])
            assert reply["version"] == reply["steps"][-1]["version"]
            rebuilt = mirror.until(reply["version"])
            expected, version = _get_mask(url, sid, token, 1)
            assert version == reply["version"]
            assert np.array_equal(rebuilt, expected), f"stream and GET differ after {mode} click {point}"
        # Every step streamed, in the order it ran: the gru diff before the decoder diff of a "both" click.
        assert mirror.steps == ["box", "gru", "decoder", "gru", "gru", "decoder", "gru", "decoder"]
        # A client that lost track asks for a resync and gets a snapshot equal to the mask.
        ws.send(json.dumps({"type": "resync", "object_id": 1, "from_version": 0}))
        frame = decode_diff(ws.recv(timeout=10))
        snapshot = np.ones(SHAPE, np.uint8)
        apply_diff(snapshot, frame)
        assert frame.version == mirror.version and np.array_equal(snapshot, expected)
    return sid, token


def test_flow_in_process_store(server: Server) -> None:
    sid, token = run_flow(server.url)
    info = httpx.get(f"{server.url}/v1/sessions/{sid}", headers=_auth(token)).json()
    assert info["objects"][0]["object_id"] == 1 and info["objects"][0]["n_prompts"] == 1 + len(CLICKS)
    assert httpx.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(token)).status_code == 204
    assert httpx.get(f"{server.url}/v1/sessions/{sid}", headers=_auth(token)).status_code == 404


def test_sessions_are_isolated(server: Server) -> None:
    a, b = upload(server.url).json(), upload(server.url).json()
    url_b = f"{server.url}/v1/sessions/{b['session_id']}"
    box = {"box": [6, 20, 20, 17, 43, 43]}
    r = httpx.post(f"{url_b}/objects/1/box", json=box, headers=_auth(a["token"]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    r = httpx.post(f"{url_b}/objects/1/box", json=box)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(url_b, headers=_auth("forged-token"))
    assert r.status_code == 401
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/segmentation"), ("POST", "/objects/1/undo"),
                           ("GET", "/objects/1/mask")]:
        r = httpx.request(method, url_b + suffix, headers=_auth(a["token"]))
        assert r.status_code == 404, (method, suffix, r.status_code)
    ws_url = server.url.replace("http://", "ws://") + f"/v1/sessions/{b['session_id']}/stream"
    with connect(f"{ws_url}?token={a['token']}") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4404
    with connect(ws_url) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4401
    with connect(f"{ws_url}?token={b['token']}") as ws:  # the query token works for browsers
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    # B is untouched by all of the above.
    info = httpx.get(url_b, headers=_auth(b["token"])).json()
    assert info["objects"] == []
    for s in (a, b):
        httpx.delete(f"{server.url}/v1/sessions/{s['session_id']}", headers=_auth(s["token"]))


REDIS_URL = os.environ.get("SEGSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def redis_server(server_factory: Callable[..., Server]) -> Iterator[tuple[Server, str]]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test-e2e-{uuid.uuid4().hex}:"
    server = server_factory("--no-warmup", env={"REDIS_URL": REDIS_URL, "SEGSVC_REDIS_PREFIX": prefix})
    yield server, prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_flow_redis_store(redis_server: tuple[Server, str]) -> None:
    import redis

    server, prefix = redis_server
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["store"] == "redis" and ready["store_reachable"] is True
    sid, token = run_flow(server.url)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        prompts = [json.loads(p) for p in client.lrange(f"{prefix}session:{sid}:prompts", 0, -1)]
        # Each "both" click is followed by its deferred decoder step (a "refine" entry).
        expected_ops = ["box"] + [op for c in CLICKS for op in (["clicks", "refine"] if c[2] == "both" else ["clicks"])]
        assert [p["op"] for p in prompts] == expected_ops
        clicks = [p for p in prompts if p["op"] == "clicks"]
        assert [p["args"]["points"] for p in clicks] == [[list(c[0])] for c in CLICKS]
        versions = client.hgetall(f"{prefix}session:{sid}:versions")
        assert versions == {"1": str(prompts[-1]["version"])}
        assert client.sismember(f"{prefix}sessions", sid)
        assert httpx.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(token)).status_code == 204
        assert not client.exists(f"{prefix}session:{sid}", f"{prefix}session:{sid}:prompts")
    finally:
        client.close()
