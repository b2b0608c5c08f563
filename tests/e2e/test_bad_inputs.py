"""Every bad input gets a 4xx naming the problem, and leaves the server and the session exactly as they were."""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.e2e.conftest import SHAPE, Server, npz_bytes, synthetic_volume, upload

pytestmark = pytest.mark.e2e


def _nifti_bytes(array: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.nii.gz"
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
        return path.read_bytes()


def _sitk_nifti_bytes(array: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        return path.read_bytes()


def _sitk_bytes(array: np.ndarray, suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=False)
        return path.read_bytes()


_VALID_NIFTI = _sitk_nifti_bytes(synthetic_volume()[:, :32, :32])
_VALID_RAW_NIFTI = _sitk_bytes(synthetic_volume()[:, :32, :32], ".nii")

BAD_UPLOADS = {
    "truncated nii": ("volume.nii", _VALID_RAW_NIFTI[: len(_VALID_RAW_NIFTI) // 2], 422, "file"),
    "truncated nii.gz": ("volume.nii.gz", _VALID_NIFTI[: len(_VALID_NIFTI) // 2], 422, "file"),
    "gzip of garbage": ("volume.nii.gz", gzip.compress(b"not a nifti header" * 50), 422, "file"),
    "text file": ("notes.txt", b"hello, I am not an image", 422, "file"),
    "random bytes as nrrd": ("volume.nrrd", np.random.default_rng(0).bytes(4096), 422, "file"),
    "2D volume": ("volume.npz", npz_bytes(imgs=np.zeros((64, 64), np.float32), spacing=np.ones(2)), 422, "file"),
    "4D volume": ("volume.nii.gz", _nifti_bytes(np.zeros((16, 16, 8, 3), np.float32)), 422, "file"),
    "NaN volume": ("volume.npz", npz_bytes(imgs=np.full((8, 16, 16), np.nan, np.float32), spacing=np.ones(3)),
                   422, "file"),
    "oversize upload": ("volume.npz", np.random.default_rng(1).bytes(3 << 20), 413, "file"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_creates_nothing(server: Server, case: str) -> None:
    filename, content, status, field = BAD_UPLOADS[case]
    before = httpx.get(f"{server.url}/readyz").json()["sessions"]
    r = upload(server.url, filename=filename, content=content)
    assert r.status_code == status, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}:"), error
    assert httpx.get(f"{server.url}/readyz").json()["sessions"] == before


def test_upload_without_file_names_the_field(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/sessions", data={"modality": "CT"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"


@pytest.fixture(scope="module")
def prepared(server: Server) -> Iterator[tuple[str, dict[str, str]]]:
    """A session with object 1 (box + a click)."""
    created = upload(server.url).json()
    base = f"{server.url}/v1/sessions/{created['session_id']}"
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert httpx.post(f"{base}/objects/1/box", json={"box": [6, 20, 20, 17, 43, 43]},
                      headers=headers).status_code == 200
    assert httpx.post(f"{base}/objects/1/clicks", json={"points": [[10, 30, 30]], "labels": [1]},
                      headers=headers).status_code == 200
    yield base, headers
    httpx.delete(base, headers=headers)


def _state(base: str, headers: dict[str, str]) -> tuple[bytes, str, list[dict[str, object]]]:
    mask = httpx.get(f"{base}/objects/1/mask", headers=headers)
    info = httpx.get(base, headers=headers).json()
    return mask.content, mask.headers["X-Object-Version"], info["objects"]


def _mask_npz(array: np.ndarray) -> bytes:
    return npz_bytes(mask=array)


GOOD_MASK = np.zeros(SHAPE, np.uint8)
GOOD_MASK[8:12, 30:40, 30:40] = 1

# (case, method, path, request kwargs, status, error code, field)
BAD_PROMPTS = [
    ("box past the volume", "POST", "/objects/1/box", {"json": {"box": [0, 0, 0, 24, 10, 10]}}, 422,
     "validation_error", "box"),
    ("box negative", "POST", "/objects/1/box", {"json": {"box": [-1, 0, 0, 5, 10, 10]}}, 422,
     "validation_error", "box"),
    ("inverted box", "POST", "/objects/1/box", {"json": {"box": [10, 0, 0, 5, 10, 10]}}, 422,
     "validation_error", "box"),
    ("box of 5 values", "POST", "/objects/1/box", {"json": {"box": [0, 0, 0, 5, 10]}}, 422,
     "validation_error", "box"),
    ("box of strings", "POST", "/objects/1/box", {"json": {"box": ["a"] * 6}}, 422, "validation_error", "box"),
    ("click outside", "POST", "/objects/1/clicks", {"json": {"points": [[5, 64, 10]], "labels": [1]}}, 422,
     "validation_error", "points"),
    ("click negative", "POST", "/objects/1/clicks", {"json": {"points": [[5, -1, 10]], "labels": [1]}}, 422,
     "validation_error", "points"),
    ("wrong label value", "POST", "/objects/1/clicks", {"json": {"points": [[5, 5, 10]], "labels": [2]}}, 422,
     "validation_error", "labels"),
    ("labels count mismatch", "POST", "/objects/1/clicks",
     {"json": {"points": [[5, 5, 10], [6, 6, 6]], "labels": [1]}}, 422, "validation_error", "labels"),
    ("unknown mode", "POST", "/objects/1/clicks", {"json": {"points": [[5, 5, 10]], "labels": [1], "mode": "x"}},
     422, "validation_error", "mode"),
    ("no clicks", "POST", "/objects/1/clicks", {"json": {"points": [], "labels": []}}, 422,
     "validation_error", "points"),
    ("malformed JSON", "POST", "/objects/1/clicks",
     {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, "validation_error", None),
    ("object id 0", "POST", "/objects/0/box", {"json": {"box": [0, 0, 0, 5, 5, 5]}}, 422, "validation_error",
     "object_id"),
    ("object id not a number", "POST", "/objects/abc/box", {"json": {"box": [0, 0, 0, 5, 5, 5]}}, 422,
     "validation_error", "object_id"),
    ("undo unknown object", "POST", "/objects/7/undo", {}, 404, "object_not_found", "object_id"),
    ("reset unknown object", "POST", "/objects/7/reset", {}, 404, "object_not_found", "object_id"),
    ("mask of unknown object", "GET", "/objects/7/mask", {}, 404, "object_not_found", "object_id"),
    ("remove unknown object", "DELETE", "/objects/7", {}, 404, "object_not_found", "object_id"),
    ("unknown mask format", "GET", "/objects/1/mask?format=png", {}, 422, "validation_error", "format"),
    ("mask of wrong shape", "PUT", "/objects/1/mask",
     {"files": {"file": ("m.npz", _mask_npz(np.zeros((4, 4, 4), np.uint8)))}}, 422, "validation_error", "mask"),
    ("mask with label 2", "PUT", "/objects/1/mask",
     {"files": {"file": ("m.npz", _mask_npz(GOOD_MASK * 2))}}, 422, "validation_error", "mask"),
    ("mask not a file type", "PUT", "/objects/1/mask", {"files": {"file": ("m.png", b"\x89PNG....")}}, 422,
     "validation_error", "file"),
]


@pytest.mark.parametrize("case", BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_names_the_problem_and_changes_nothing(prepared: tuple[str, dict[str, str]], case: tuple
                                                          ) -> None:
    base, headers = prepared
    name, method, path, kwargs, status, code, field = case
    before = _state(base, headers)
    kwargs = dict(kwargs)
    extra_headers = kwargs.pop("headers", {})
    r = httpx.request(method, base + path, headers={**headers, **extra_headers}, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field and error["message"].startswith(field), error
    assert _state(base, headers) == before, f"{name} changed the session"


def test_nothing_to_undo_is_409_and_changes_nothing(prepared: tuple[str, dict[str, str]]) -> None:
    base, headers = prepared
    before = _state(base, headers)
    r = httpx.post(f"{base}/objects/2/box", json={"box": [0, 0, 0, 3, 3, 3]}, headers=headers)
    assert r.status_code == 200
    assert httpx.post(f"{base}/objects/2/undo", headers=headers).status_code == 200
    r = httpx.post(f"{base}/objects/2/undo", headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_undo"
    assert _state(base, headers)[:2] == before[:2]
