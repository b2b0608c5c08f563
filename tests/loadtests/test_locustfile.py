"""The locustfile against a real server process (segvol-test, random weights): every step of the simulated
annotators runs, none fails, and every session they opened is deleted again. Keeps the load test from rotting;
its timings are not looked at (they belong to ``python -m loadtests``)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.results import parse_metrics
from tests.e2e.conftest import REPO_ROOT, Server, start_server, stop_server

# Only looked up, never imported here: importing locust monkey-patches the test process with gevent.
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                 reason="locust is not installed (pip install -e '.[load]')")]

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
COMMON_STEPS = {"create", "box", "click", "undo", "download", "delete"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("loadtest-server"), "--max-sessions", "8", "--no-warmup")
    yield server
    stop_server(server)


def _run_locust(server: Server, out: Path, stream_prob: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2", "-t", "12s",
           "--host", server.url, "--csv", str(out / "locust"), "--only-summary", "--think", "0.05-0.1",
           "--objects", "1-2", "--clicks", "2-3", "--undo-prob", "1", "--stream-prob", stream_prob,
           "--abandon-prob", "0", "--volume-shape", "24,96,96", "--blobs", "3"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    with (out / "locust_stats.csv").open(newline="") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    return done, stats


@pytest.mark.parametrize(("stream_prob", "viewer_steps"), [("0", {"mask"}), ("1", {"stream_open", "frame", "gru_frame"})],
                         ids=["http-refresh", "websocket-stream"])
def test_every_step_runs_and_none_fails(server: Server, tmp_path: Path, stream_prob: str,
                                        viewer_steps: set[str]) -> None:
    before = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
    done, stats = _run_locust(server, tmp_path, stream_prob)
    after = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = {name for name, row in stats.items() if name != "Aggregated" and int(row["Request Count"]) > 0}
    assert ran == COMMON_STEPS | viewer_steps, done.stderr[-3000:]
    assert int(stats["Aggregated"]["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    # Every session the annotators got was deleted again (after their last object or when stopped). An upload
    # still in flight when locust stops makes a session nobody learns the id of: it is left to the idle clock.
    # locust's stats can also miss a create that finished as the run stopped (its session is still deleted),
    # so: at least every counted session was deleted, and never more than the server created.
    opened = int(stats["create"]["Request Count"])
    assert opened > 0
    deleted, created = after.deleted - before.deleted, after.created - before.created
    assert opened <= deleted <= created
    assert sum(after.http_5xx.values()) == sum(before.http_5xx.values())
