"""End to end: a real server process (``python -m app --monailabel --dicomweb-url ...``) and a real Orthanc;
the MONAI Label calls a viewer makes, over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.dicomweb.conftest import INSIDE_IJK, SHAPE, CtSeries, Orthanc
from tests.dicomweb.helpers import parse_multipart, read_label_image
from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process = start_server(tmp_path_factory.mktemp("ml-server"), "--no-warmup", "--monailabel",
                           "--dicomweb-url", orthanc.dicomweb)
    yield process
    stop_server(process)


def infer(server: Server, series: CtSeries, foreground: list) -> httpx.Response:
    params = {"foreground": foreground, "background": [], "label": "object"}
    return httpx.post(f"{server.url}/infer/segvol_deepgrow", params={"image": series.series_uid},
                      data={"params": json.dumps(params)}, timeout=120)


def test_viewer_calls_over_http(server: Server, ct_series: CtSeries, tmp_path: Path) -> None:
    info = httpx.get(f"{server.url}/info/", timeout=10).json()
    assert "segvol_deepgrow" in info["models"]
    i, j, k = INSIDE_IJK
    r = infer(server, ct_series, [[i, j, k]])
    assert r.status_code == 200, r.text
    parts = parse_multipart(r.headers["content-type"], r.content)
    first = json.loads(parts["params"][2])["segsvc"]["tracks"][0]
    labels = sitk.GetArrayFromImage(read_label_image(parts["image"][2]))
    assert labels.shape == SHAPE and set(np.unique(labels)) <= {0, 1}
    r = infer(server, ct_series, [[i, j, k], [i - 5, j - 2, k - 1]])
    second = json.loads(parse_multipart(r.headers["content-type"], r.content)["params"][2])["segsvc"]["tracks"][0]
    assert first["action"] == "created" and second["action"] == "incremental"
    assert second["version"] == first["version"] + 1 and second["object_id"] == first["object_id"]
