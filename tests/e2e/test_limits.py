"""Capacity (503 + Retry-After) and expiry (410) against a real server with tiny limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.conftest import Server, upload

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def small_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--max-sessions", "1", "--idle-timeout", str(IDLE_TIMEOUT_S), "--reaper-interval", "0.2",
                          "--no-warmup")


def test_capacity_then_expiry(small_server: Server) -> None:
    url = small_server.url
    first = upload(url)
    assert first.status_code == 201, first.text
    sid, token = first.json()["session_id"], first.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}

    full = upload(url)
    assert full.status_code == 503
    assert full.json()["error"]["code"] == "server_busy"
    assert int(full.headers["Retry-After"]) >= 1

    ws_url = url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream"
    with connect(ws_url, additional_headers=headers) as ws:
        assert "hello" in ws.recv(timeout=10)
        # Left idle, the session expires; the reaper closes the stream with 4410.
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=IDLE_TIMEOUT_S * 5)
        assert ws.close_code == 4410

    r = httpx.get(f"{url}/v1/sessions/{sid}", headers=headers)
    assert r.status_code == 410 and r.json()["error"]["code"] == "session_expired"
    r = httpx.post(f"{url}/v1/sessions/{sid}/objects/1/box", json={"box": [0, 0, 0, 3, 3, 3]}, headers=headers)
    assert r.status_code == 410

    again = upload(url)  # the expired session freed its slot
    assert again.status_code == 201, again.text
    r = httpx.delete(f"{url}/v1/sessions/{again.json()['session_id']}",
                     headers={"Authorization": f"Bearer {again.json()['token']}"})
    assert r.status_code == 204


def test_requests_keep_a_session_alive(small_server: Server) -> None:
    created = upload(small_server.url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 2 * IDLE_TIMEOUT_S
    while time.monotonic() < deadline:  # used every IDLE/3 seconds: never idle long enough to expire
        assert httpx.get(f"{small_server.url}/v1/sessions/{sid}", headers=headers).status_code == 200
        time.sleep(IDLE_TIMEOUT_S / 3)
    assert httpx.delete(f"{small_server.url}/v1/sessions/{sid}", headers=headers).status_code == 204
