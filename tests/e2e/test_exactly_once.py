"""Exactly-once prompts: a prompt resent with its ``Idempotency-Key`` gets the recorded reply and is never
applied twice, on the same server, across a ``kill -9`` and restart (the key is in the Redis history), and
through the SDK, which resends a prompt whose connection was reset after the server applied it.

All against real ``python -m app`` processes; the lost reply comes from a real TCP relay (``ResetRelay``).
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from client import AsyncClient, Client, TransportError
from tests.e2e.conftest import SHARED_REDIS_URL, Server, kill_server, upload
from tests.e2e.reset_relay import ResetRelay

pytestmark = pytest.mark.e2e

KEY_HEADER = "Idempotency-Key"
BOX = [6, 20, 20, 17, 43, 43]
CLICK = {"points": [[10, 30, 30]], "labels": [0], "mode": "gru"}  # one model step: version + 1


class _Session:
    def __init__(self, url: str, session_id: str, token: str) -> None:
        self.base = f"{url}/v1/sessions/{session_id}"
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: dict | None = None, key: str | None = None) -> httpx.Response:
        headers = self.auth if key is None else {**self.auth, KEY_HEADER: key}
        return httpx.post(f"{self.base}{path}", json=body, headers=headers, timeout=120)

    def mask(self, oid: int) -> tuple[int, np.ndarray]:
        r = httpx.get(f"{self.base}/objects/{oid}/mask", headers=self.auth, timeout=120)
        assert r.status_code == 200, r.text
        with np.load(io.BytesIO(r.content)) as npz:
            return int(r.headers["X-Object-Version"]), npz["mask"]


def _open(url: str) -> tuple[_Session, str, str]:
    created = upload(url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    return _Session(url, sid, token), sid, token


def test_a_resent_prompt_gets_the_recorded_reply_and_is_applied_once(server: Server) -> None:
    s, _, _ = _open(server.url)
    box_key, click_key = str(uuid.uuid4()), str(uuid.uuid4())
    first_box = s.post("/objects/1/box", {"box": BOX}, key=box_key)
    assert first_box.status_code == 200, first_box.text
    first = s.post("/objects/1/clicks", CLICK, key=click_key)
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 2 and first.json()["changed"] > 0
    version, mask = s.mask(1)

    again = s.post("/objects/1/clicks", CLICK, key=click_key)
    assert again.status_code == 200 and again.json() == first.json()  # byte for byte, timings included
    assert s.post("/objects/1/box", {"box": BOX}, key=box_key).json() == first_box.json()
    after_version, after_mask = s.mask(1)
    assert after_version == version == 2 and np.array_equal(after_mask, mask)

    # The same key for another prompt is refused, naming the key, and changes nothing.
    other = s.post("/objects/1/clicks", {**CLICK, "labels": [1]}, key=click_key)
    assert other.status_code == 422, other.text
    assert other.json()["error"]["field"] == KEY_HEADER and click_key in other.json()["error"]["message"]
    assert s.post("/objects/1/undo", key=click_key).status_code == 422  # another op under the key
    assert s.mask(1)[0] == 2

    # A new key is a new prompt; an undo resent is undone once.
    undo_key = str(uuid.uuid4())
    undone = s.post("/objects/1/undo", key=undo_key)
    assert undone.status_code == 200 and undone.json()["version"] == 3
    assert s.post("/objects/1/undo", key=undo_key).json() == undone.json()
    assert s.mask(1)[0] == 3


def test_a_resent_removal_is_answered_from_the_record(server: Server) -> None:
    s, _, _ = _open(server.url)
    assert s.post("/objects/1/box", {"box": BOX}).status_code == 200
    key = str(uuid.uuid4())
    removed = httpx.delete(f"{s.base}/objects/1", headers={**s.auth, KEY_HEADER: key}, timeout=120)
    assert removed.status_code == 204, removed.text
    again = httpx.delete(f"{s.base}/objects/1", headers={**s.auth, KEY_HEADER: key}, timeout=120)
    assert again.status_code == 204, again.text  # not 404: the removal it asks for was made, once
    unkeyed = httpx.delete(f"{s.base}/objects/1", headers=s.auth, timeout=120)
    assert unkeyed.status_code == 404  # a new removal of a gone object
    assert s.post("/objects/1/undo", key=key).status_code == 422  # the key belongs to the removal


@pytest.mark.parametrize("key", ["has space", "x" * 129, "", "ключ"])
def test_a_malformed_key_is_refused_naming_the_header(server: Server, key: str) -> None:
    s, _, _ = _open(server.url)
    assert s.post("/objects/1/box", {"box": BOX}).status_code == 200
    r = httpx.post(f"{s.base}/objects/1/clicks", json=CLICK, timeout=120,
                   headers={**s.auth, KEY_HEADER: key.encode("utf-8")})  # type: ignore[dict-item]
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == KEY_HEADER and r.json()["error"]["message"].startswith(KEY_HEADER)
    assert s.mask(1)[0] == 1  # nothing applied


@pytest.mark.redis
def test_a_prompt_resent_after_a_restart_is_not_applied_again(server_factory: Callable[..., Server],
                                                              redis_prefix: str, tmp_path: Path) -> None:
    flags = ("--no-warmup", "--redis-url", SHARED_REDIS_URL, "--storage-dir", str(tmp_path / "storage"))
    env = {"SEGSVC_REDIS_PREFIX": redis_prefix}
    first_server = server_factory(*flags, env=env)
    s, sid, token = _open(first_server.url)
    assert s.post("/objects/1/box", {"box": BOX}, key="box-1").status_code == 200
    key = str(uuid.uuid4())
    first = s.post("/objects/1/clicks", CLICK, key=key)
    assert first.status_code == 200, first.text
    # A "both" click is recorded as its GRU step, then its deferred refinement, which records the full reply.
    both_key, both = str(uuid.uuid4()), {**CLICK, "points": [[12, 28, 28]], "mode": "both"}
    first_both = s.post("/objects/1/clicks", both, key=both_key)
    assert [st["step"] for st in first_both.json()["steps"]] == ["gru", "decoder"], first_both.text
    version, mask = s.mask(1)

    kill_server(first_server)  # the reply was sent; suppose the client never got it and retries later
    s = _Session(server_factory(*flags, env=env).url, sid, token)
    again = s.post("/objects/1/clicks", CLICK, key=key)
    assert again.status_code == 200 and again.json() == first.json()
    assert s.post("/objects/1/clicks", both, key=both_key).json() == first_both.json()
    after_version, after_mask = s.mask(1)
    assert after_version == version and np.array_equal(after_mask, mask)
    assert s.post("/objects/1/clicks", {**CLICK, "labels": [1]}, key=key).status_code == 422
    assert s.post("/objects/1/clicks", CLICK, key=str(uuid.uuid4())).json()["version"] == version + 1


def test_the_sdk_resends_a_click_whose_reply_was_lost_and_it_is_applied_once(server: Server) -> None:
    s, sid, token = _open(server.url)
    assert s.post("/objects/1/box", {"box": BOX}).status_code == 200
    with ResetRelay(urlparse(server.url).port or 80) as relay, Client(relay.url) as client:
        reply = client.session(sid, token).clicks(1, [[10, 30, 30]], [0], mode="gru")
        assert relay.connections == 2 and len(relay.dropped_replies) == 1  # applied, reset, resent
    assert reply.version == 2
    assert s.mask(1)[0] == 2  # applied once: a second application would be version 3


def test_the_async_sdk_resends_a_click_whose_reply_was_lost_and_it_is_applied_once(server: Server) -> None:
    s, sid, token = _open(server.url)
    assert s.post("/objects/1/box", {"box": BOX}).status_code == 200

    async def click(url: str) -> int:
        async with AsyncClient(url) as client:
            return (await client.session(sid, token).clicks(1, [[10, 30, 30]], [0], mode="gru")).version

    with ResetRelay(urlparse(server.url).port or 80) as relay:
        version = asyncio.run(click(relay.url))
        assert relay.connections == 2 and len(relay.dropped_replies) == 1
    assert version == 2 and s.mask(1)[0] == 2


def test_without_resends_the_sdk_reports_the_lost_reply(server: Server) -> None:
    s, sid, token = _open(server.url)
    assert s.post("/objects/1/box", {"box": BOX}).status_code == 200
    with ResetRelay(urlparse(server.url).port or 80) as relay, Client(relay.url, retries=0) as client:
        with pytest.raises(TransportError):
            client.session(sid, token).clicks(1, [[10, 30, 30]], [0], mode="gru")
    assert s.mask(1)[0] == 2  # the server did apply it: this is what the key's resend is for
