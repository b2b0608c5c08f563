"""A Redis outage answers 503 ``store_unavailable`` with Retry-After, never 500.

The outage is real: the app talks to a private ``redis-server`` started on a free port for this module, which
the test then stops (the shared Redis is never touched).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.api.errors import error_response
from app.errors import StoreUnavailable
from app.main import create_app
from tests.api.conftest import create, npz_bytes, test_settings, volume

RETRY_AFTER_S = 7  # not the default, so the header provably comes from the setting
BOX = [6, 20, 20, 17, 43, 43]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server (no persistence) and its URL; the test may stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10.0
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"private redis-server on port {port} did not start")
            time.sleep(0.05)
    client.close()
    try:
        yield url, process
    finally:
        process.kill()
        process.wait(timeout=10)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


def _assert_store_unavailable(r) -> None:  # noqa: ANN001 - httpx.Response
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
    error = r.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["message"].startswith("store: ") and "unreachable" in error["message"]
    assert "127.0.0.1" not in error["message"]  # infrastructure details stay in the server log


def test_store_unavailable_reply_has_retry_after_and_hides_the_backend() -> None:
    r = error_response(StoreUnavailable("store: Redis failed: Error 111 connecting to 10.1.2.3:6379."),
                       retry_after_s=3)
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert b'"code":"store_unavailable"' in r.body and b"10.1.2.3" not in r.body


@pytest.mark.redis
def test_redis_outage_is_503_with_retry_after(private_redis, service_predictor) -> None:  # noqa: ANN001
    url, process = private_redis
    settings = test_settings(redis_url=url, redis_prefix="outage-test:", retry_after_s=RETRY_AFTER_S)
    with TestClient(create_app(settings, predictor=service_predictor)) as client:
        session_id, headers = create(client)
        assert client.get("/readyz").status_code == 200
        _stop(process)

        assert client.get("/readyz").json()["store_reachable"] is False
        upload = {"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.asarray((2.0, 1.0, 1.0))))}
        _assert_store_unavailable(client.post("/v1/sessions", files=upload, data={"spacing_order": "zyx"}))

        # A prompt that cannot be recorded is not acknowledged, and its session (now out of step with its
        # history) is closed.
        _assert_store_unavailable(client.post(f"/v1/sessions/{session_id}/objects/1/box", json={"box": BOX},
                                              headers=headers))
        assert client.get(f"/v1/sessions/{session_id}", headers=headers).status_code == 410


def test_unreachable_redis_at_startup_refuses_to_start(service_predictor) -> None:  # noqa: ANN001
    settings = test_settings(redis_url=f"redis://127.0.0.1:{_free_port()}/0")  # nothing listens there
    with pytest.raises(StoreUnavailable, match="cannot reach Redis"), TestClient(
            create_app(settings, predictor=service_predictor)):
        pass
