"""Hostile files and WebSocket messages against a real server process.

Each one is refused (a 4xx naming ``file``, or an error message / a close code of ``StreamCloseCode`` on the
stream), and afterwards the server still answers ``/healthz`` and a session created before is untouched:
same mask, same version, and it still answers a click. ``test_bad_inputs.py`` covers the everyday bad
inputs (half a .nii.gz, 2D, a NaN npz, oversize body, bad prompts); these are the crafted ones.
Decompression bombs also have the server's peak resident memory measured (``VmHWM``) and kept under 2 GB.
``docs/security.md`` lists every input class with the test that shows what the server does.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import tempfile
import time
import uuid
import zipfile
import zlib
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


def _nifti_claiming(shape: tuple[int, int, int], dtype: type = np.float32) -> bytes:
    """A .nii.gz whose header declares ``shape`` voxels of ``dtype``, followed by 64 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
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


def _mha(*, fields: str = "", data: bytes | None = None, compressed: bytes | None = None) -> bytes:
    """A float MetaImage of SMALL's shape with extra header ``fields``; raw ``data`` or ``compressed`` bytes."""
    d, h, w = SMALL.shape
    text = f"ObjectType = Image\nNDims = 3\nDimSize = {w} {h} {d}\nElementType = MET_FLOAT\n{fields}"
    if compressed is not None:
        text += f"CompressedData = True\nCompressedDataSize = {len(compressed)}\n"
    body = compressed if compressed is not None else (data if data is not None else _small_float_bytes())
    return (text + "ElementDataFile = LOCAL\n").encode() + body


def _small_float_bytes() -> bytes:
    return (SMALL.astype(np.float32) + 1).tobytes()


def _corrupt_zlib() -> bytes:
    """A zlib stream of SMALL whose deflate data is damaged in the middle; the header stays consistent."""
    stream = bytearray(zlib.compress(_small_float_bytes()))
    for i in range(len(stream) // 2, len(stream) // 2 + 24):
        stream[i] ^= 0x5A
    return bytes(stream)


def _nrrd(fields: str) -> bytes:
    d, h, w = SMALL.shape
    text = f"NRRD0004\ntype: float\ndimension: 3\nsizes: {w} {h} {d}\n{fields}encoding: raw\nendian: little\n\n"
    return text.encode() + _small_float_bytes()


def _nifti_pixdim(first: float) -> bytes:
    """A valid .nii.gz of SMALL whose pixdim[1] is ``first`` as stored (nibabel's own checks would repair it)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(SMALL.shape[::-1])
    header["pixdim"] = [1.0, first, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    return gzip.compress(header.binaryblock + bytes(4) + SMALL.astype(np.float32).tobytes())  # x fastest


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
    # Geometry a world-coordinate prompt cannot invert, or that ITK would reject with a bare "(0 0 0)".
    "MHA with a singular TransformMatrix": Hostile("v.mha", lambda: _mha(fields="TransformMatrix = 1 0 0 0 1 0 0 1 0\n"),
                                                   422, "invalid_volume", "direction matrix (TransformMatrix"),
    "MHA with a near-singular TransformMatrix": Hostile(
        "v.mha", lambda: _mha(fields="TransformMatrix = 1 0 0 0 1 0 0 1 1e-9\n"), 422, "invalid_volume", "is singular"),
    "MHA with a sheared TransformMatrix": Hostile(
        "v.mha", lambda: _mha(fields="TransformMatrix = 1 0 0 0.5 1 0 0 0 1\n"), 422, "invalid_volume",
        "is not orthonormal"),
    "NRRD with sheared space directions": Hostile(
        "v.nrrd", lambda: _nrrd("space: left-posterior-superior\nspace directions: (1,0,0) (0.3,1,0) (0,0,2)\n"), 422,
        "invalid_volume", "is not orthonormal"),
    # Corrupt compressed voxels are never turned into an image.
    "MHA whose zlib stream is corrupt": Hostile("v.mha", lambda: _mha(compressed=_corrupt_zlib()), 422,
                                                "invalid_volume", "compressed voxel data"),
    "MHA whose zlib stream holds too few voxels": Hostile(
        "v.mha", lambda: _mha(compressed=zlib.compress(_small_float_bytes()[:-400])), 422, "invalid_volume",
        "inflates to"),
    # Spacing is never silently replaced by 1.0.
    **{f"NIfTI with pixdim {v}": Hostile("v.nii.gz", functools.partial(_nifti_pixdim, v), 422, "invalid_volume",
                                         "spacing (pixdim") for v in (0.0, -1.0, float("nan"), float("inf"))},
    "NRRD with a NaN spacing": Hostile("v.nrrd", lambda: _nrrd("spacings: nan 1 1\n"), 422, "invalid_volume",
                                       "spacing (spacings"),
    "NRRD with a negative spacing": Hostile("v.nrrd", lambda: _nrrd("spacings: -1 1 1\n"), 422, "invalid_volume",
                                            "spacing (spacings"),
    "MHA with a zero ElementSpacing": Hostile("v.mha", lambda: _mha(fields="ElementSpacing = 0 1 1\n"), 422,
                                              "invalid_volume", "spacing (ElementSpacing"),
    "NIfTI declaring 2 GiB of float64 voxels": Hostile(
        "v.nii.gz", lambda: _nifti_claiming((512, 512, 1024), np.float64), 413, "payload_too_large",
        "byte volume limit"),
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


# --- decompression bombs: refused before inflating, peak server memory measured --------------------------

PEAK_MEMORY_LIMIT_BYTES = 2 * 10**9
BOMB_SHAPE_XYZ = (512, 512, 1024)  # 2^28 float32 voxels: 1 GiB, at the default voxel and volume-byte limits
_ZEROS = bytes(16 << 20)


def _peak_rss_bytes(server: Server) -> int:
    """The server process's peak resident memory so far (VmHWM, which the kernel keeps for the process)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kib * 1024


def _gzip_zeros(n_bytes: int) -> bytes:
    """``n_bytes`` zero bytes as a valid multi-member gzip stream (members of 16 MiB, each ~16 KB): seconds
    to build instead of deflating a gigabyte."""
    member = gzip.compress(_ZEROS, 9)
    return member * (n_bytes // len(_ZEROS))


def _zlib_zeros(n_bytes: int) -> bytes:
    """``n_bytes`` zero bytes as one valid zlib stream: one deflated 16 MiB block, flushed so that it stands
    alone, repeated, then the stream's end and the Adler-32 of all of it."""
    deflater = zlib.compressobj(9)
    first = deflater.compress(_ZEROS) + deflater.flush(zlib.Z_FULL_FLUSH)
    block = deflater.compress(_ZEROS) + deflater.flush(zlib.Z_FULL_FLUSH)
    end = deflater.flush()[:-4]
    checksum = 1
    for _ in range(n_bytes // len(_ZEROS)):
        checksum = zlib.adler32(_ZEROS, checksum)
    return first + block * (n_bytes // len(_ZEROS) - 1) + end + checksum.to_bytes(4, "big")


def _nifti_bomb(shape_xyz: tuple[int, int, int] = BOMB_SHAPE_XYZ) -> bytes:
    """A valid .nii.gz of float32 zeros: every voxel is there, ~1000:1 compressed."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape_xyz)
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    return gzip.compress(header.binaryblock + bytes(4)) + _gzip_zeros(4 * int(np.prod(shape_xyz)))


def _mha_bomb() -> bytes:
    """A valid compressed .mha of float32 zeros, header and CompressedDataSize consistent."""
    data = _zlib_zeros(4 * int(np.prod(BOMB_SHAPE_XYZ)))
    text = (f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, BOMB_SHAPE_XYZ))}\n"
            f"ElementType = MET_FLOAT\nCompressedData = True\nCompressedDataSize = {len(data)}\n"
            "ElementDataFile = LOCAL\n")
    return text.encode() + data


def _nrrd_bomb() -> bytes:
    text = (f"NRRD0004\ntype: float\ndimension: 3\nsizes: {' '.join(map(str, BOMB_SHAPE_XYZ))}\n"
            "encoding: gzip\nendian: little\n\n")
    return text.encode() + _gzip_zeros(64 << 20)


BOMBS: dict[str, tuple[str, Callable[[], bytes]]] = {
    ".nii.gz of 1 GiB of zeros in 1 MB": ("bomb.nii.gz", _nifti_bomb),
    "compressed .mha of 1 GiB of zeros in 1 MB": ("bomb.mha", _mha_bomb),
    "gzip .nrrd declaring 1 GiB in 64 KB": ("bomb.nrrd", _nrrd_bomb),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_decompression_bomb_is_refused_before_inflating(server: Server, bystander: Bystander, case: str) -> None:
    filename, build = BOMBS[case]
    content = build()
    assert len(content) < 2 << 20, "must fit the test server's upload limit to reach the loader"
    r = upload(server.url, filename=filename, content=content)
    assert r.status_code == 413, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and error["field"] == "file", error
    assert "decompression bomb" in error["message"], error
    assert _peak_rss_bytes(server) < PEAK_MEMORY_LIMIT_BYTES, f"server peak RSS {_peak_rss_bytes(server)} bytes"
    bystander.check_unharmed(server)


def test_a_mask_upload_of_the_wrong_shape_is_refused_from_its_header(server: Server, bystander: Bystander) -> None:
    """A 1 GiB .nii.gz mask for a small session: its header says the shape, nothing is inflated."""
    created = upload(server.url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        r = httpx.put(f"{server.url}/v1/sessions/{sid}/objects/1/mask", headers=headers, timeout=120,
                      files={"file": ("mask.nii.gz", _nifti_bomb())})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "mask" and "does not match the volume's" in error["message"], error
        assert _peak_rss_bytes(server) < PEAK_MEMORY_LIMIT_BYTES, f"server peak RSS {_peak_rss_bytes(server)}"
    finally:
        httpx.delete(f"{server.url}/v1/sessions/{sid}", headers=headers)
    bystander.check_unharmed(server)


# --- request bodies --------------------------------------------------------------------------------------


def test_an_oversize_json_prompt_is_refused_with_413_before_it_is_parsed(server: Server, bystander: Bystander
                                                                          ) -> None:
    """1.5 MB of JSON: under the test server's 2 MB upload limit, far over the 1 MiB limit of other bodies."""
    body = json.dumps({"points": [[10, 30, 30]] * 100_000, "labels": [1] * 100_000}).encode()
    assert 1 << 20 < len(body) < 2 << 20
    r = httpx.post(f"{bystander.base}/objects/1/clicks", content=body, timeout=60,
                   headers={**bystander.headers, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error == {"code": "payload_too_large", "field": "body",
                     "message": f"body: the request body is over the {1 << 20}-byte request body limit"}, error
    bystander.check_unharmed(server)


def test_a_body_that_is_not_json_is_explained_in_words(server: Server, bystander: Bystander) -> None:
    r = httpx.post(f"{bystander.base}/objects/1/box", content=b'{"box": [1, 2,', timeout=30,
                   headers={**bystander.headers, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "body" and error["message"].startswith("body: not valid JSON ("), error
    assert "at character" in error["message"] and "JSON decode error" not in error["message"], error
    bystander.check_unharmed(server)


# --- resync flood ----------------------------------------------------------------------------------------

RESYNC_PER_S, RESYNC_BURST = 2.0, 4  # app.config.Settings defaults


def test_a_resync_flood_is_coalesced_per_session(server: Server, bystander: Bystander) -> None:
    """50 resyncs at once build the burst's snapshots, then one more for all the others (coalesced, once the
    budget refills): a handful, not 50 runs of the model thread every session shares. None is refused."""
    sent = 50
    with connect(bystander.ws_url, additional_headers=bystander.headers) as ws:
        _hello(ws)
        started = time.monotonic()
        for _ in range(sent):
            ws.send(json.dumps({"type": "resync", "object_id": 1}))
        ws.send(json.dumps({"type": "ping"}))
        snapshots, texts = 0, []
        with pytest.raises(TimeoutError):  # nothing more once 3 s pass in silence
            while True:
                message = ws.recv(timeout=3)
                if isinstance(message, bytes):
                    snapshots += 1
                else:
                    texts.append(json.loads(message))
        elapsed = time.monotonic() - started
    assert texts == [{"type": "pong"}], texts
    assert RESYNC_BURST + 1 <= snapshots <= RESYNC_BURST + RESYNC_PER_S * elapsed + 1, (snapshots, elapsed)
    bystander.check_unharmed(server)


# --- a server logging at info level, with a per-address rate limit ---------------------------------------


@pytest.fixture(scope="module")
def info_server(server_factory: Callable[..., Server]) -> Server:
    """Logs every request and WebSocket handshake; 0.2 requests/s per client address, burst 2."""
    return server_factory("--max-upload-bytes", str(2 << 20), "--no-warmup", "--log-level", "info",
                          "--rate-limit", "0.2", "--rate-limit-burst", "2")


def test_query_string_secrets_never_reach_the_log(info_server: Server) -> None:
    created = upload(info_server.url)
    assert created.status_code == 201, created.text
    sid, token = created.json()["session_id"], created.json()["token"]
    api_key = f"key-{uuid.uuid4().hex}"
    base = f"{info_server.url}/v1/sessions/{sid}"
    with connect(f"{base.replace('http://', 'ws://')}/stream?token={token}&api_key={api_key}") as ws:
        _hello(ws)
    httpx.get(f"{base}/objects?token={token}&api_key={api_key}", headers={"Authorization": f"Bearer {token}"})
    httpx.delete(base, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 10
    while "WebSocket" not in info_server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = info_server.log_path.read_text()
    assert "WebSocket" in log and "/objects?" in log, "the handshake and the request are logged at info level"
    assert token not in log and api_key not in log, "a secret reached the log"
    assert "token=[redacted]" in log and "api_key=[redacted]" in log


def test_x_forwarded_for_from_an_untrusted_peer_does_not_pick_the_rate_limit_bucket(info_server: Server) -> None:
    """Every request comes from 127.0.0.1 and claims another address: they share one bucket (burst 2)."""
    statuses = [
        httpx.post(f"{info_server.url}/v1/sessions", headers={"X-Forwarded-For": f"203.0.113.{i}"},
                   files={"file": ("v.npz", b"")}, timeout=30).status_code
        for i in range(1, 7)
    ]
    assert 429 in statuses, statuses
