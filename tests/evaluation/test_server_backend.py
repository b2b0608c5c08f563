"""Acceptance: the server backend (through the SDK) scores a case exactly like the in-process backend.

Starts a real ``python -m app`` process (tiny SegVol, random weights seeded like ``build_predictor``'s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.models import build_predictor
from client import Client
from evaluation.backends import MODEL_METHODS, PredictorMethod, ServerMethod
from evaluation.cases import EvalCase, box_from_mask
from evaluation.runner import run_case
from tests.e2e.conftest import stop_process

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SEGSVC_")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--config", "segvol-test",
           "--random-weights", "--device", "cpu", "--no-warmup", "--log-level", "warning"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(process)


def _case() -> EvalCase:
    shape = (20, 48, 48)
    zz, yy, xx = np.indices(shape)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[((zz - 10) / 6) ** 2 + ((yy - 24) / 12) ** 2 + ((xx - 22) / 10) ** 2 <= 1] = 1
    gt[((zz - 8) / 3) ** 2 + ((yy - 10) / 4) ** 2 + ((xx - 36) / 5) ** 2 <= 1] = 2
    image = np.clip(40 + 110 * (gt > 0) + np.random.default_rng(0).normal(0, 10, shape), 0, 255).astype(np.uint8)
    return EvalCase("synthetic", "MR", image, gt, (2.0, 1.0, 1.0), [1, 2], {c: box_from_mask(gt == c) for c in (1, 2)})


@pytest.mark.parametrize(("masks", "overlap", "exclusive"),
                         [("stream", "confidence", True), ("get", "confidence", True), ("get", "recent", True),
                          ("get", "confidence", False)])
def test_server_and_in_process_give_the_same_scores(server_url: str, masks: str, overlap: str,
                                                    exclusive: bool) -> None:
    case = _case()
    predictor = build_predictor("segvol-test", weights=None, device="cpu")
    with Client(server_url) as api:
        for name in MODEL_METHODS:
            local = run_case(PredictorMethod(predictor, name, overlap=overlap, exclusive_objects=exclusive), case)
            remote = run_case(ServerMethod(api, name, masks=masks, overlap=overlap, exclusive_objects=exclusive),
                              case)
            assert remote.class_dsc == local.class_dsc, name
            assert remote.dsc == local.dsc, name
            assert remote.nsd == local.nsd, name
            assert remote.n_clicks == local.n_clicks, name
