"""Load shedding and keep-alive against a real server process: new sessions get 503 + Retry-After while the
device queue is slow and the admitted sessions keep being served; admission reopens once the load is gone;
an idle keep-alive connection outlives an annotator's thinking time."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

import httpx
import pytest

from tests.e2e.conftest import Server, upload

pytestmark = pytest.mark.e2e

WINDOW_S = 3.0
BOX = [4, 12, 12, 16, 40, 40]


@pytest.fixture(scope="module")
def shedding_server(server_factory: Callable[..., Server]) -> Server:
    # A tiny latency budget (any queueing at all) and a short window make the rule easy to trip and to clear.
    return server_factory("--max-sessions", "8", "--no-warmup", "--admission-max-wait-ms", "2",
                          env={"SEGSVC_ADMISSION_WINDOW_S": str(WINDOW_S), "SEGSVC_ADMISSION_MIN_SAMPLES": "4"})


def _session(url: str) -> tuple[str, dict[str, str]]:
    r = upload(url)
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}


def test_new_sessions_are_refused_while_the_device_queue_is_slow(shedding_server: Server) -> None:
    url = shedding_server.url
    sessions = [_session(url) for _ in range(2)]
    statuses: list[int] = []
    stop = threading.Event()

    def annotate(sid: str, headers: dict[str, str]) -> None:  # box prompts back to back: the device queues
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            while not stop.is_set():
                statuses.append(http.post(f"/v1/sessions/{sid}/objects/1/box", json={"box": BOX}).status_code)

    workers = [threading.Thread(target=annotate, args=s) for s in sessions]
    for w in workers:
        w.start()
    try:
        refused = None
        deadline = time.monotonic() + 60
        while refused is None and time.monotonic() < deadline:
            time.sleep(0.3)
            r = upload(url)
            if r.status_code == 503:
                refused = r
            else:
                assert r.status_code == 201, r.text
                httpx.delete(f"{url}/v1/sessions/{r.json()['session_id']}",
                             headers={"Authorization": f"Bearer {r.json()['token']}"})
        assert refused is not None, "the slow device queue never refused a new session"
        assert refused.json()["error"]["code"] == "server_busy"
        assert "queue wait p95" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert statuses and set(statuses) == {200}  # the admitted annotators were served throughout
    metrics = httpx.get(f"{url}/metrics").text
    assert 'segsvc_capacity_rejections_total{limit="latency"}' in metrics

    time.sleep(WINDOW_S + 0.5)  # the slow waits leave the window: admission reopens by itself
    again = upload(url)
    assert again.status_code == 201, again.text


def test_an_idle_keep_alive_connection_outlives_the_thinking_time(shedding_server: Server) -> None:
    # uvicorn's default keep-alive (5 s) closed a connection just as an annotator reused it after thinking
    # ("connection reset by peer", issue 24); the server now keeps idle connections 75 s.
    parsed = urlparse(shedding_server.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        time.sleep(6.0)
        conn.request("GET", "/healthz")  # the same socket: raises if the server closed it meanwhile
        again = conn.getresponse()
        again.read()
        assert again.status == 200
    finally:
        conn.close()
