"""A real Orthanc with its DICOMweb plugin on loopback, holding one synthetic CT series.

Orthanc runs from a private configuration (free HTTP port, DICOM port off, storage under the test's temp
dir, no authentication) and is stopped after the tests. Tests that need it skip when the Debian packages
``orthanc`` / ``orthanc-dicomweb`` are not installed (``.ci/run`` installs them).

The series is asymmetric on purpose: 16 slices of 40 rows x 56 columns, spacing (x, y, z) = (0.8, 0.7, 2.5)
mm, one bright block whose extent differs along every axis, so that a swapped axis either lands outside
the image or on other voxels.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import stop_process
from tests.io.test_dicom_seg import SERIES_UID, STUDY_UID, dicom_series_zip

PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
SHAPE = (16, 40, 56)  # (D, H, W) = (k, j, i) sizes
OBJECT = (slice(3, 9), slice(8, 20), slice(30, 50))  # z, y, x extents all different
INSIDE_IJK = (40, 14, 6)  # a voxel of the object as a viewer sends it: (i, j, k) = (x, y, z)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plugin() -> Path | None:
    found = [p for p in PLUGIN_PATHS if p.exists()]
    found += sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")) if Path("/usr/lib/orthanc").is_dir() else []
    return found[0] if found else None


@dataclass
class Orthanc:
    url: str  # REST root
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"


@dataclass(frozen=True)
class CtSeries:
    study_uid: str
    series_uid: str
    array: np.ndarray  # (D, H, W) int16, as stored
    zip_bytes: bytes  # the same series as a .zip upload
    sop_uids: list[str]  # slice k's SOP Instance UID


def ct_array() -> np.ndarray:
    rng = np.random.default_rng(7)
    array = rng.normal(0.0, 20.0, SHAPE).astype(np.int16)
    array[OBJECT] += 900
    return array


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc')")
    plugin = _plugin()
    if plugin is None:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')")
    root = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "segsvc-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": _free_port(),
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "HttpThreadsCount": 8,
    }
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = Orthanc(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60.0
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/system", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer /system:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def ct_series(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> CtSeries:
    """The synthetic series, uploaded to Orthanc instance by instance (REST ``POST /instances``)."""
    array = ct_array()
    folder = tmp_path_factory.mktemp("ct")
    zip_bytes = dicom_series_zip(array, folder)
    for path in sorted(folder.glob("*.dcm")):
        r = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
    return CtSeries(STUDY_UID, SERIES_UID, array, zip_bytes, [f"{SERIES_UID}.{k + 1}" for k in range(SHAPE[0])])
