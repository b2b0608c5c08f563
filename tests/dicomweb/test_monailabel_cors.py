"""The OHIF deployment recipe of docs/service.md ("OHIF on another origin"): OHIF served from its own origin
talks to a real server started with ``--monailabel --cors-origin <OHIF's origin>``. The browser's preflight of
``POST /infer/...`` passes, the replies carry the CORS headers a browser needs to read them, and other
origins are refused; without ``--cors-origin`` the preflight is 405, which is what the docs tell users to fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

OHIF_ORIGIN = "http://ohif.example.org:3000"
PREFLIGHT = {"Origin": OHIF_ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process = start_server(tmp_path_factory.mktemp("ml-cors"), "--no-warmup", "--monailabel",
                           "--cors-origin", OHIF_ORIGIN)
    yield process
    stop_server(process)


def test_ohif_on_its_own_origin_reaches_the_monailabel_routes(server: Server, tmp_path: Path) -> None:
    r = httpx.options(f"{server.url}/infer/segvol", headers=PREFLIGHT)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == OHIF_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()

    info = httpx.get(f"{server.url}/info/", headers={"Origin": OHIF_ORIGIN})
    assert info.status_code == 200 and info.headers["access-control-allow-origin"] == OHIF_ORIGIN

    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(5).normal(0, 9, (8, 20, 24)).astype(np.float32)),
                    str(path))
    r = httpx.put(f"{server.url}/session/", files=[("files", ("volume.nrrd", path.read_bytes()))],
                  headers={"Origin": OHIF_ORIGIN}, timeout=120)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == OHIF_ORIGIN
    r = httpx.post(f"{server.url}/infer/segvol", params={"session_id": r.json()["session_id"], "output": "image"},
                   data={"params": json.dumps({"object": [[10, 10, 4]]})}, headers={"Origin": OHIF_ORIGIN},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == OHIF_ORIGIN
    assert "content-disposition" in r.headers["access-control-expose-headers"].lower()  # the file name

    # An error reply is readable too (the body names the field), and other origins are refused.
    r = httpx.post(f"{server.url}/infer/segvol", params={"session_id": "gone"}, data={"params": "{}"},
                   headers={"Origin": OHIF_ORIGIN})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == OHIF_ORIGIN
    r = httpx.options(f"{server.url}/infer/segvol", headers={**PREFLIGHT, "Origin": "http://elsewhere.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_without_cors_origins_the_preflight_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    plain = start_server(tmp_path_factory.mktemp("ml-no-cors"), "--no-warmup", "--monailabel")
    try:
        r = httpx.options(f"{plain.url}/infer/segvol", headers=PREFLIGHT)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    finally:
        stop_server(plain)
