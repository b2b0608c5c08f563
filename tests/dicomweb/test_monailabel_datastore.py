"""The MONAI Label datastore's refusals and file handling: bad uploads keep nothing, ids never become paths,
a replaced image drops its labels, and the index read back from disk is the one written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from app.io.monailabel_datastore import LabelDatastore
from tests.dicomweb.test_monailabel_access import make_client

SHAPE = (6, 12, 14)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "datastore"


@pytest.fixture
def client(service_predictor, root: Path) -> Iterator[TestClient]:  # noqa: ANN001
    with make_client(service_predictor, monailabel_enabled=True, monailabel_datastore=root) as c:
        yield c


def nrrd(tmp_path: Path, array: np.ndarray, name: str) -> bytes:
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path.read_bytes()


def upload(c: TestClient, image_id: str, data: bytes, filename: str = "image.nrrd") -> dict:
    r = c.put("/datastore/", params={"image": image_id}, files={"file": (filename, data)},
              data={"params": json.dumps({"client_id": "x", "note": "kept"})})
    return {"status": r.status_code, **r.json()}


def test_a_bad_upload_keeps_nothing(client: TestClient, root: Path) -> None:
    reply = upload(client, "ct", b"not an image")
    assert reply["status"] == 422 and reply["error"]["field"] == "file"
    reply = upload(client, "ct", b"x", filename="image.txt")
    assert reply["status"] == 422 and reply["error"]["field"] == "file"
    assert client.get("/datastore/").json()["total"] == 0
    assert not any((root / "images").iterdir())


def test_ids_never_become_paths(client: TestClient, root: Path, tmp_path: Path) -> None:
    image_id = "../../escape/ct 1"
    data = nrrd(tmp_path, np.zeros(SHAPE, np.float32), "v.nrrd")
    assert upload(client, image_id, data) == {"status": 200, "image": image_id}
    stored = list((root / "images").iterdir())
    assert len(stored) == 1 and stored[0].resolve().parent == (root / "images").resolve()
    assert not (root.parent / "escape").exists()
    r = client.get("/datastore/image", params={"image": image_id})
    assert r.status_code == 200 and r.content == data
    info = client.get("/datastore/", params={"output": "all"}).json()["objects"][image_id]["image"]["info"]
    assert info["note"] == "kept" and "client_id" not in info


def test_labels_are_checked_and_a_replaced_image_drops_them(client: TestClient, tmp_path: Path) -> None:
    image = nrrd(tmp_path, np.zeros(SHAPE, np.float32), "v.nrrd")
    upload(client, "ct", image)
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 2:5, 3:6] = 1
    files = {"label": ("label.nrrd", nrrd(tmp_path, label, "l.nrrd"))}
    r = client.put("/datastore/label", params={"image": "ct", "tag": "bad tag!"}, files=files)
    assert r.status_code == 422 and r.json()["error"]["field"] == "tag"
    r = client.put("/datastore/label", params={"image": "ct"}, files={"label": ("label.txt", b"x")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "label"
    r = client.put("/datastore/label", params={"image": "ct"}, files=files)
    assert r.status_code == 200 and r.json() == {"image": "ct", "label": "ct"}
    saved = client.get("/datastore/", params={"output": "all"}).json()["objects"]["ct"]["labels"]["final"]
    assert saved["info"]["label_names"] == {"object": 1}  # no label_info sent: the model's label of value 1
    assert client.get("/datastore/label", params={"label": "ct", "tag": "final"}).status_code == 200
    assert client.get("/datastore/label", params={"label": "ct", "tag": "original"}).status_code == 404
    upload(client, "ct", image)  # the same id again: a new image, the old label described other voxels
    assert client.get("/datastore/label", params={"label": "ct", "tag": "final"}).status_code == 404
    assert client.post("/activelearning/first", json={}).json()["id"] == "ct"
    assert client.post("/activelearning/nope", json={}).status_code == 404


def test_the_index_read_back_is_the_one_written(root: Path) -> None:
    store = LabelDatastore(root)
    store.add_image("a b", b"image-bytes", ".nrrd", {"k": 1})
    store.save_label("a b", b"label-bytes", ".nii.gz", "final", {"label_names": {"x": 1}})
    again = LabelDatastore(root)
    assert again.json() == store.json()
    found = again.label_file("a b", "final")
    assert found is not None and found.path.read_bytes() == b"label-bytes" and found.name.endswith(".nii.gz")
    assert again.status() == {"total": 1, "completed": 1, "label_tags": {"final": 1}, "train": 1}
    assert not list(root.rglob("*.tmp"))  # every write was renamed into place
