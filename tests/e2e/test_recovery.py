"""Nothing acknowledged is lost: a server killed with ``kill -9`` comes back with every session exactly as it
was, and a server whose Redis goes away answers 503 and carries on by itself once Redis is back.

Both run real ``python -m app`` processes. The crash test uses the shared Redis under a key prefix of its own
(deleted afterwards); the outage test stops and restarts a redis-server of its own (``PrivateRedis``).
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

from tests.e2e.conftest import SHAPE, SHARED_REDIS_URL, PrivateRedis, Server, kill_server, npz_bytes, upload

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

REDIS_URL = SHARED_REDIS_URL
BOX = [6, 20, 20, 17, 43, 43]
CLICKS = [((10, 30, 30), 1, "gru"), ((12, 25, 38), 0, "both"), ((8, 40, 24), 1, "decoder")]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Client:
    """The few calls these tests make, against one session."""

    def __init__(self, url: str, session_id: str, token: str) -> None:
        self.base = f"{url}/v1/sessions/{session_id}"
        self.headers = _auth(token)

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, headers=self.headers, timeout=120)

    def click(self, oid: int, point: tuple[int, int, int], label: int, mode: str) -> httpx.Response:
        return self.post(f"/objects/{oid}/clicks", {"points": [list(point)], "labels": [label], "mode": mode})

    def put_mask(self, oid: int, mask: np.ndarray) -> httpx.Response:
        return httpx.put(f"{self.base}/objects/{oid}/mask", files={"file": ("m.npz", npz_bytes(mask=mask))},
                         headers=self.headers, timeout=120)

    def get(self, path: str = "") -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.headers, timeout=120)

    def mask(self, oid: int) -> tuple[int, np.ndarray]:
        r = self.get(f"/objects/{oid}/mask")
        assert r.status_code == 200, r.text
        with np.load(io.BytesIO(r.content)) as npz:
            return int(r.headers["X-Object-Version"]), npz["mask"]

    def state(self) -> dict[str, object]:
        """Everything a client can see of the session: versions, masks, the label map, object summaries."""
        info = self.get()
        assert info.status_code == 200, info.text
        segmentation = self.get("/segmentation")
        with np.load(io.BytesIO(segmentation.content)) as npz:
            labels = npz["segs"]
        objects = info.json()["objects"]
        return {"objects": objects, "masks": {o["object_id"]: self.mask(o["object_id"]) for o in objects},
                "labels": labels, "label_versions": segmentation.headers["X-Object-Versions"]}


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a["objects"] == b["objects"] and a["label_versions"] == b["label_versions"]
    assert np.array_equal(a["labels"], b["labels"])  # type: ignore[arg-type]
    for oid, (version, mask) in a["masks"].items():  # type: ignore[union-attr]
        other_version, other_mask = b["masks"][oid]  # type: ignore[index]
        assert version == other_version and mask.dtype == other_mask.dtype and np.array_equal(mask, other_mask)



def test_kill_9_then_restart_loses_nothing(server_factory: Callable[..., Server], redis_prefix: str,
                                           tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    flags = ("--no-warmup", "--redis-url", REDIS_URL, "--storage-dir", str(storage), "--log-level", "info")
    env = {"SEGSVC_REDIS_PREFIX": redis_prefix}
    first = server_factory(*flags, env=env)
    created = upload(first.url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    client = Client(first.url, sid, token)
    assert client.post("/objects/1/box", {"box": BOX}).status_code == 200
    for point, label, mode in CLICKS:
        r = client.click(1, point, label, mode)
        assert r.status_code == 200, r.text
    assert client.post("/objects/1/undo").status_code == 200
    mask = np.zeros(SHAPE, np.uint8)
    mask[8:16, 10:30, 34:60] = 1
    assert client.put_mask(2, mask).status_code == 200
    before = client.state()
    assert [o["version"] for o in before["objects"]] == [6, 1]  # box, gru, gru+decoder, decoder, undo; mask

    kill_server(first)  # no shutdown hook: only what was acknowledged survives
    started = time.monotonic()
    second = server_factory(*flags, env=env)
    ready_s = time.monotonic() - started

    client = Client(second.url, sid, token)  # the same token
    _same(client.state(), before)
    r = client.click(1, (11, 33, 30), 1, "both")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 6 + 2  # gru + decoder continue from the acknowledged version
    assert client.mask(1)[0] == 8
    assert client.put_mask(3, mask).status_code == 200  # a new object, on the restored session

    log = second.log_path.read_text(errors="replace")
    # 7 history entries: box, 3 clicks, the "both" click's deferred refinement, undo, the mask.
    restored = re.search(rf"restored session {re.escape(sid)}: (\d+) history entries, (\d+) objects, in ([0-9.]+) s",
                         log)
    assert restored is not None and restored.groups()[:2] == ("7", "2"), log[-2000:]
    print(f"restart to ready: {ready_s:.1f} s; restore of 7 history entries: {restored.group(3)} s")

    assert httpx.delete(client.base, headers=client.headers).status_code == 204
    assert not (storage / sid).exists()  # DELETE forgets the files too


def test_redis_outage_then_recovery_without_restart(server_factory: Callable[..., Server],
                                                    private_redis: PrivateRedis) -> None:
    server = server_factory("--no-warmup", "--redis-url", private_redis.url)
    sessions = []
    for _ in range(2):
        created = upload(server.url)
        assert created.status_code == 201, created.text
        sessions.append(Client(server.url, created.json()["session_id"], created.json()["token"]))
        assert sessions[-1].post("/objects/1/box", {"box": BOX}).status_code == 200
    prompted, idle = sessions

    private_redis.stop()
    ready = httpx.get(f"{server.url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["store_reachable"] is False
    version, _ = idle.mask(1)  # reads keep working from memory
    assert version == 1
    r = prompted.click(1, (10, 30, 30), 1, "gru")  # cannot be recorded: not acknowledged
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable" and "Retry-After" in r.headers
    assert prompted.get().status_code == 410  # its state would be ahead of its history: closed
    assert upload(server.url).status_code == 503

    private_redis.start()  # same port, same data
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the server did not reconnect to Redis by itself"
        time.sleep(0.2)
    r = idle.click(1, (10, 30, 30), 1, "gru")  # the untouched session goes on
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    created = upload(server.url)  # and new sessions work again, without restarting the server
    assert created.status_code == 201, created.text
    fresh = Client(server.url, created.json()["session_id"], created.json()["token"])
    assert fresh.post("/objects/1/box", {"box": BOX}).status_code == 200
    assert prompted.get().status_code == 410

    import redis

    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        idle_id = idle.base.rsplit("/", 1)[1]
        ops = [json.loads(p)["op"] for p in client.lrange(f"segsvc:session:{idle_id}:prompts", 0, -1)]
        assert ops == ["box", "clicks"]  # nothing acknowledged is missing from its history
    finally:
        client.close()
