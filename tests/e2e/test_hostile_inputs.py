"""Hostile files and WebSocket messages against a real server process.

Each one is refused (a 4xx naming ``file``, or an error message / a close code of ``StreamCloseCode`` on the
stream), and afterwards the server still answers ``/healthz`` and a session created before is untouched:
same mask, same version, and it still answers a click. ``test_bad_inputs.py`` covers the everyday bad
inputs (half a .nii.gz, 2D, a NaN npz, oversize body, bad prompts); these are the crafted ones.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.schemas.paths import StreamCloseCode
from tests.e2e.conftest import Server, npz_bytes, synthetic_volume, upload

pytestmark = pytest.mark.e2e

WS_MAX_SIZE = 1 << 20  # python -m app runs uvicorn with ws_max_size=1 MiB
BAD_MESSAGES_BEFORE_CLOSE = 16  # app.api.routes.stream._MAX_BAD_MESSAGES


# --- hostile files ---------------------------------------------------------------------------------------


def _sitk_bytes(array: np.ndarray, suffix: str, compress: bool = False) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=compress)
        return path.read_bytes()


def _nifti_claiming(shape: tuple[int, int, int]) -> bytes:
    """A .nii.gz whose header declares ``shape`` float32 voxels, followed by 64 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    return gzip.compress(header.binaryblock + bytes(4) + bytes(64))


def _nrrd_claiming(sizes: tuple[int, ...], data: bytes = bytes(64)) -> bytes:
    """A raw float NRRD whose every axis is a spatial one (a 4D one is not a vector image)."""
    text = (f"NRRD0004\ntype: float\ndimension: {len(sizes)}\nsizes: {' '.join(map(str, sizes))}\n"
            f"kinds:{' domain' * len(sizes)}\nencoding: raw\nendian: little\n\n")
    return text.encode() + data


def _mha_claiming(sizes: tuple[int, ...]) -> bytes:
    text = (f"ObjectType = Image\nNDims = {len(sizes)}\nDimSize = {' '.join(map(str, sizes))}\n"
            "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return text.encode() + bytes(64)


def _zip(members: dict[str, bytes], level: int = 6) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name), content, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _dicom_series_of(array: np.ndarray) -> dict[str, bytes]:
    """A real CT series, one file per slice, as zip members under ``series/``."""
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    series_uid = "1.2.826.0.1.3680043.2.1125.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    members = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(image.GetDepth()):
            s = image[:, :, k]
            for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.42",
                               "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
                               "0020|0013": str(k + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                               "0020|0032": f"0\\0\\{2.0 * k}", "0018|0050": "2.0"}.items():
                s.SetMetaData(tag, value)
            path = Path(tmp) / f"slice{k:03d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(s)
            members[f"series/{path.name}"] = path.read_bytes()
    return members


def _zip_bomb(unpacked: int) -> bytes:
    """One member of ``unpacked`` zero bytes, written in chunks (never held in memory), ~1000:1."""
    buf = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("series/bomb.dcm", "w", force_zip64=True) as member:
            for _ in range(unpacked // len(chunk)):
                member.write(chunk)
    return buf.getvalue()


def _declaring(unpacked: int, really: int) -> bytes:
    """One member of ``really`` zero bytes whose local header and central directory declare ``unpacked``."""
    data = bytearray(_zip({"series/a.dcm": bytes(really)}))
    central = data.find(b"PK\x01\x02")
    data[22:26] = unpacked.to_bytes(4, "little")  # local header: uncompressed size
    data[central + 24:central + 28] = unpacked.to_bytes(4, "little")
    return bytes(data)


ESCAPED_NAME = f"escaped-{uuid.uuid4().hex}.dcm"
SMALL = synthetic_volume()[:, :32, :32]


@functools.cache
def _dicom_series() -> dict[str, bytes]:
    return _dicom_series_of(SMALL * 100)


def _valid_nii_gz() -> bytes:
    return _sitk_bytes(SMALL + 1, ".nii.gz", compress=True)


def _with(value: float) -> np.ndarray:
    """The small volume with one voxel set to ``value``."""
    array = SMALL.astype(np.float32)
    array[3, 4, 5] = value
    return array


@dataclass(frozen=True)
class Hostile:
    filename: str
    content: Callable[[], bytes]  # built when its test runs (a bomb takes seconds to deflate)
    status: int
    code: str
    says: str  # a fragment of the error message


HOSTILE_UPLOADS: dict[str, Hostile] = {
    "nii.gz cut in its gzip trailer": Hostile("v.nii.gz", lambda: _valid_nii_gz()[:-4], 422, "invalid_volume", "truncated"),
    "nii.gz cut inside its header": Hostile("v.nii.gz", lambda: _valid_nii_gz()[:30], 422, "invalid_volume", "truncated"),
    "NIfTI header claims 2.7e13 voxels": Hostile("v.nii.gz", lambda: _nifti_claiming((30000, 30000, 30000)), 413,
                                                 "payload_too_large", "voxel limit"),
    "NRRD header claims 1e15 voxels": Hostile("v.nrrd", lambda: _nrrd_claiming((100000, 100000, 100000)), 413,
                                              "payload_too_large", "voxel limit"),
    "MHA sizes whose int64 product wraps to 0": Hostile("v.mha", lambda: _mha_claiming((2**32, 2**32, 16)), 413,
                                                        "payload_too_large", "voxel limit"),
    "NRRD sizes past size_t": Hostile("v.nrrd", lambda: _nrrd_claiming((2**62, 4, 2)), 422, "invalid_volume",
                                      "too large"),
    "+inf voxel in a NIfTI": Hostile("v.nii.gz", lambda: _sitk_bytes(_with(np.inf), ".nii.gz", True), 422, "invalid_volume",
                                     "NaN or infinite"),
    "NaN voxel in an NRRD": Hostile("v.nrrd", lambda: _sitk_bytes(_with(np.nan), ".nrrd"), 422, "invalid_volume",
                                    "NaN or infinite"),
    "4D NRRD": Hostile("v.nrrd", lambda: _nrrd_claiming((16, 16, 8, 3), bytes(16 * 16 * 8 * 3 * 4)), 422,
                       "invalid_volume", "expected a 3D volume, got 4D"),
    "4D npz imgs": Hostile("v.npz", lambda: npz_bytes(imgs=np.zeros((8, 16, 16, 2), np.float32)), 422,
                           "invalid_volume", "expected a 3D volume, got 4D"),
    "DICOM zip with a ../ member (zip slip)": Hostile(
        "study.zip", lambda: _zip({**_dicom_series(), f"series/../../../{ESCAPED_NAME}": b"DICM"}), 422, "invalid_volume",
        "escapes the archive"),
    "DICOM zip with an absolute member": Hostile(
        "study.zip", lambda: _zip({**_dicom_series(), f"/tmp/{ESCAPED_NAME}": b"DICM"}), 422, "invalid_volume",
        "escapes the archive"),
    "DICOM zip with a drive-letter member": Hostile(
        "study.zip", lambda: _zip({**_dicom_series(), f"C:\\{ESCAPED_NAME}": b"DICM"}), 422, "invalid_volume",
        "escapes the archive"),
    "zip bomb: 128 MiB of zeros in one member": Hostile("study.zip", lambda: _zip_bomb(128 << 20), 413,
                                                        "payload_too_large", "zip bomb"),
    "zip bomb: 1000 small members of zeros": Hostile(
        "study.zip", lambda: _zip({f"series/{i}.dcm": bytes(100_000) for i in range(1000)}, level=9), 413,
        "payload_too_large", "zip bomb"),
    "zip declaring 3 GiB unpacked": Hostile("study.zip", lambda: _declaring(3 << 30, 1000), 413,
                                            "payload_too_large", "unpacks to more than"),
    "zip member inflating past its declared size": Hostile("study.zip", lambda: _declaring(100, 4 << 20), 422,
                                                           "invalid_volume", "corrupt zip member"),
    "zip of 5000 members": Hostile("study.zip", lambda: _zip({f"series/{i}.dcm": b"" for i in range(5000)}), 422,
                                   "invalid_volume", "5000 members"),
}


# --- the session that must not notice any of it ----------------------------------------------------------


@dataclass
class Bystander:
    """A session created before the hostile inputs; ``check_unharmed`` after each one."""

    url: str
    session_id: str
    token: str
    mask: bytes = b""
    version: str = ""
    clicks: int = field(default=0)

    @property
    def base(self) -> str:
        return f"{self.url}/v1/sessions/{self.session_id}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/stream"

    def record(self) -> None:
        r = httpx.get(f"{self.base}/objects/1/mask", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        self.mask, self.version = r.content, r.headers["X-Object-Version"]

    def check_unharmed(self, server: Server) -> None:
        assert server.process.poll() is None, f"the server died:\n{server.log_tail()}"
        assert httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200
        r = httpx.get(f"{self.base}/objects/1/mask", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        assert (r.content, r.headers["X-Object-Version"]) == (self.mask, self.version), "the bystander changed"
        point = [[10, 30, 30], [9, 25, 35]][self.clicks % 2]
        click = httpx.post(f"{self.base}/objects/1/clicks", json={"points": [point], "labels": [1], "mode": "gru"},
                           headers=self.headers, timeout=60)
        assert click.status_code == 200, click.text
        assert click.json()["version"] == int(self.version) + 1
        self.clicks += 1
        self.record()


@pytest.fixture(scope="module")
def bystander(server: Server) -> Iterator[Bystander]:
    created = upload(server.url)
    assert created.status_code == 201, created.text
    b = Bystander(server.url, created.json()["session_id"], created.json()["token"])
    r = httpx.post(f"{b.base}/objects/1/box", json={"box": [6, 20, 20, 17, 43, 43]}, headers=b.headers, timeout=60)
    assert r.status_code == 200, r.text
    b.record()
    yield b
    httpx.delete(b.base, headers=b.headers)


def _sessions(server: Server) -> int:
    return int(httpx.get(f"{server.url}/readyz", timeout=10).json()["sessions"])


# --- uploads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(HOSTILE_UPLOADS))
def test_hostile_upload_is_refused_and_harms_nothing(server: Server, bystander: Bystander, case: str) -> None:
    hostile = HOSTILE_UPLOADS[case]
    content = hostile.content()
    assert len(content) < 2 << 20, "must fit the test server's upload limit to reach the loader"
    before = _sessions(server)
    r = upload(server.url, filename=hostile.filename, content=content)
    assert r.status_code == hostile.status, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == hostile.code and error["field"] == "file", error
    assert error["message"].startswith("file: ") and hostile.says in error["message"], error
    assert "upload-" not in error["message"] and "unzip-" not in error["message"], "a server path leaked"
    assert _sessions(server) == before
    bystander.check_unharmed(server)


def test_zip_slip_wrote_nothing_outside_the_extraction_folder() -> None:
    """Runs after the zip-slip uploads (file order): nothing named like the escaping member exists."""
    tmp = Path(tempfile.gettempdir())
    for folder in (tmp, tmp.parent, Path("/")):
        assert not (folder / ESCAPED_NAME).exists(), folder


def test_the_same_dicom_zip_without_the_escaping_member_is_accepted(server: Server) -> None:
    """The zip-slip cases were refused for their one bad member, not for the series around it."""
    r = upload(server.url, filename="study.zip", content=_zip(_dicom_series()))
    assert r.status_code == 201, r.text
    assert r.json()["source_format"] == "dicom" and r.json()["shape"] == [synthetic_volume().shape[0], 32, 32]
    httpx.delete(f"{server.url}/v1/sessions/{r.json()['session_id']}",
                 headers={"Authorization": f"Bearer {r.json()['token']}"})


# --- WebSocket messages ----------------------------------------------------------------------------------

BAD_MESSAGES: dict[str, str | bytes] = {
    "binary garbage": np.random.default_rng(7).bytes(512),
    "text that is not JSON": "{this is not json",
    "JSON of an unknown type": json.dumps({"type": "explode", "object_id": 1}),
    "JSON that is not an object": json.dumps([1, 2, 3]),
    "resync with a string object id": json.dumps({"type": "resync", "object_id": "one"}),
    "text past 4096 chars": json.dumps({"type": "ping", "pad": "x" * 5000}),
}


def _hello(ws: ClientConnection) -> dict[str, object]:
    hello = json.loads(ws.recv(timeout=10))
    assert hello["type"] == "hello"
    return hello


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_bad_stream_message_gets_an_error_and_the_stream_stays_usable(server: Server, bystander: Bystander,
                                                                       name: str) -> None:
    with connect(bystander.ws_url, additional_headers=bystander.headers) as ws:
        _hello(ws)
        ws.send(BAD_MESSAGES[name])
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error", reply
        assert reply["error"]["code"] == "validation_error" and reply["error"]["field"] == "message", reply
        assert reply["error"]["message"].startswith("message: "), reply
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    bystander.check_unharmed(server)


def test_a_flood_of_bad_messages_closes_the_stream_with_4400(server: Server, bystander: Bystander) -> None:
    with connect(bystander.ws_url, additional_headers=bystander.headers) as ws:
        _hello(ws)
        for i in range(BAD_MESSAGES_BEFORE_CLOSE + 1):
            ws.send(f"garbage {i}")
        errors = 0
        with pytest.raises(ConnectionClosed):
            while True:
                assert json.loads(ws.recv(timeout=10))["type"] == "error"
                errors += 1
        assert errors == BAD_MESSAGES_BEFORE_CLOSE
        assert ws.close_code == StreamCloseCode.BAD_MESSAGE and ws.close_reason, (ws.close_code, ws.close_reason)
    bystander.check_unharmed(server)


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_a_message_past_the_size_limit_closes_the_stream_with_1009(server: Server, bystander: Bystander,
                                                                   kind: str) -> None:
    with connect(bystander.ws_url, additional_headers=bystander.headers, max_size=None) as ws:
        _hello(ws)
        ws.send("x" * (WS_MAX_SIZE + 1) if kind == "text" else bytes(WS_MAX_SIZE + 1))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == StreamCloseCode.MESSAGE_TOO_BIG, (ws.close_code, ws.close_reason)
    bystander.check_unharmed(server)
