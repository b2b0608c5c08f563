"""A real server process per configuration: ``python -m app`` on a free port, killed after the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.volumes import SHAPE, npz_bytes, synthetic_volume  # noqa: F401  (re-exported to the tests)

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240.0


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TEST_MODEL_FLAGS = ("--config", "segvol-test", "--random-weights")


def start_server(log_dir: Path, *flags: str, env: dict[str, str] | None = None,
                 model_flags: tuple[str, ...] = TEST_MODEL_FLAGS) -> Server:
    """Start ``python -m app`` (by default ``--config segvol-test --random-weights``; ``model_flags=()`` serves
    the shipped default model) and wait until /readyz answers 200."""
    port = _free_port()
    cmd = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), *model_flags,
           "--log-level", "warning", *flags]
    return start_server_command(log_dir, cmd, port, env=env)


def start_server_command(log_dir: Path, cmd: list[str], port: int, *, env: dict[str, str] | None = None) -> Server:
    """Run ``cmd``, a server that listens on 127.0.0.1:``port``, and wait until /readyz answers 200."""
    log_path = log_dir / f"server-{port}.log"
    # Hermetic: no inherited service settings, only what this test asks for.
    inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SEGSVC_")}
    full_env = {**inherited, "OMP_NUM_THREADS": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s: every process a test starts (servers, Orthanc) ends this way."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def stop_server(server: Server) -> None:
    stop_process(server.process)


SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A private key prefix on the shared Redis (skip without one); its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(SHARED_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {SHARED_REDIS_URL}")
    prefix = f"{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def make(*flags: str, env: dict[str, str] | None = None, model_flags: tuple[str, ...] = TEST_MODEL_FLAGS
             ) -> Server:
        server = start_server(log_dir, *flags, env=env, model_flags=model_flags)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_server(server)


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., Server]) -> Server:
    """The main test server: in-process store, 2 MB upload limit, room for many sessions."""
    return server_factory("--max-upload-bytes", str(2 << 20), "--max-sessions", "32", "--no-warmup")




def upload(url: str, volume: np.ndarray | None = None, *, spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
           filename: str = "volume.npz", content: bytes | None = None) -> httpx.Response:
    """POST /v1/sessions with an npz of ``volume`` (or raw ``content`` under ``filename``)."""
    if content is None:
        vol = synthetic_volume() if volume is None else volume
        content = npz_bytes(imgs=vol, spacing=np.asarray(spacing))
    return httpx.post(f"{url}/v1/sessions", files={"file": (filename, content)},
                      data={"spacing_order": "zyx"}, timeout=120)


def kill_server(server: Server) -> None:
    """``kill -9`` the server: no shutdown hook runs, exactly like a crash."""
    server.process.kill()
    server.process.wait(timeout=10)


class PrivateRedis:
    """A redis-server of the test's own on a free port (the shared one is never stopped), which the test
    stops and starts again on the same port. Its data is kept in an append-only file (fsync on every write),
    so a restart brings it back, as a production Redis configured for durability would."""

    def __init__(self, data_dir: Path) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"private redis-server on port {self.port} did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
