"""3D Slicer's MONAI Label loop end to end: MONAI Label's own client class (``monailabel==0.8.5``'s
``MONAILabelClient``, which Slicer's MONAILabel module calls) against a real server process with a storage
directory: info, upload image, next sample, infer (deepgrow and deepedit), save label, datastore listing,
download label, training status; then a restart of the server on the same directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.e2e.conftest import Server, start_server, stop_server

client_module = pytest.importorskip("monailabel.client.client", reason="monailabel==0.8.5 (pip install --no-deps)")
MONAILabelClient = client_module.MONAILabelClient
MONAILabelClientException = client_module.MONAILabelClientException

pytestmark = pytest.mark.e2e

LABELS = ["liver", "lesion"]
SHAPE = (12, 40, 48)  # (D, H, W)
IMAGE_ID = "CT chest 1"  # Slicer's ids are volume node names: spaces are common


def _flags(storage: Path) -> tuple[str, ...]:
    return ("--no-warmup", "--monailabel", "--storage-dir", str(storage))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ml-storage")


@pytest.fixture(scope="module")
def server(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SEGSVC_MONAILABEL_LABELS": json.dumps(LABELS)}
    process = start_server(tmp_path_factory.mktemp("ml-slicer"), *_flags(storage), env=env)
    yield process
    stop_server(process)


def _volume_file(folder: Path, name: str = "volume.nrrd", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    array[3:9, 10:30, 12:36] += 300.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


def _read(path: str | Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_slicer_loop_with_the_monailabel_client(server: Server, storage: Path, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="user-xyz")

    info = client.info()
    assert info["labels"] == ["background", *LABELS]
    assert {m["type"] for m in info["models"].values()} == {"deepedit", "deepgrow"}
    assert info["strategies"], "Slicer's Next Sample needs a strategy"
    assert info["datastore"]["total"] == 0

    # Save first uploads the volume Slicer shows (PUT /datastore/?image=<volume node name>).
    volume = _volume_file(tmp_path)
    assert client.upload_image(str(volume), IMAGE_ID) == {"image": IMAGE_ID}
    assert client.info()["datastore"]["total"] == 1

    strategy = next(iter(info["strategies"]))
    sample = client.next_sample(strategy, {})
    assert sample["id"] == IMAGE_ID

    # Slicer's deepgrow: one label, value 1 in the result, whatever the label's index.
    result, params = client.infer("segvol_deepgrow", IMAGE_ID,
                                  {"label": "lesion", "foreground": [[24, 20, 6]], "background": []})
    labels, image = _read(result)
    assert labels.shape == SHAPE and set(np.unique(labels)) <= {0, 1}
    assert image.GetSpacing() == pytest.approx((0.8, 0.9, 2.5)) and image.GetOrigin() == pytest.approx(
        (-10.0, 5.0, 30.0))
    assert params["label_names"] == {"background": 0, "lesion": 1}
    assert params["segsvc"]["tracks"][0]["action"] == "created"

    # Slicer's deepedit (multi-label): every label of the model is named, with its value.
    result, params = client.infer("segvol", IMAGE_ID, {"liver": [[20, 18, 5]], "lesion": [[24, 20, 6]],
                                                       "background": [], "label": "liver"})
    assert params["label_names"] == {"background": 0, "liver": 1, "lesion": 2}
    labels, _ = _read(result)
    assert set(np.unique(labels)) <= {0, 1, 2}

    # Save label: the segmentation Slicer exports (a label map .nrrd of the image's geometry).
    saved = np.zeros(SHAPE, np.uint8)
    saved[3:9, 10:30, 12:36] = 1
    saved[5:7, 15:20, 20:25] = 2
    label_image = sitk.GetImageFromArray(saved)
    label_image.CopyInformation(sitk.ReadImage(str(volume)))
    label_path = tmp_path / "label.nrrd"
    sitk.WriteImage(label_image, str(label_path))
    label_info = [{"name": "liver", "idx": 1}, {"name": "lesion", "idx": 2}]
    reply = client.save_label(IMAGE_ID, str(label_path), params={"label_info": label_info, "model": "segvol"})
    assert reply == {"image": IMAGE_ID, "label": IMAGE_ID}

    listing = client.datastore()
    final = listing["objects"][IMAGE_ID]["labels"]["final"]
    assert final["ext"] == ".nrrd" and final["info"]["label_names"] == {"liver": 1, "lesion": 2}
    assert client.info()["datastore"]["completed"] == 1

    downloaded = client.download_label(IMAGE_ID, "final")
    assert Path(downloaded).read_bytes() == label_path.read_bytes()
    assert client.next_sample(strategy, {}) == {}  # every image has its label

    assert client.train_status(check_if_running=True) is False
    assert client.train_status()["status"] == "NOT_AVAILABLE"

    # A label that does not fit its image is refused, and the saved one stays.
    wrong = tmp_path / "wrong.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), str(wrong))
    with pytest.raises(MONAILabelClientException) as refused:
        client.save_label(IMAGE_ID, str(wrong))
    assert "label: shape" in refused.value.msg
    assert Path(client.download_label(IMAGE_ID, "final")).read_bytes() == label_path.read_bytes()

    # The datastore lives in the storage directory: a new server process on it serves the same label.
    stop_server(server)
    env = {"SEGSVC_MONAILABEL_LABELS": json.dumps(LABELS)}
    restarted = start_server(tmp_path_factory.mktemp("ml-slicer-restart"), *_flags(storage), env=env)
    try:
        again = MONAILabelClient(restarted.url, tmpdir=str(tmp_path))
        assert again.datastore()["objects"][IMAGE_ID]["labels"]["final"]["info"]["label_names"] == {
            "liver": 1, "lesion": 2}
        assert Path(again.download_label(IMAGE_ID, "final")).read_bytes() == label_path.read_bytes()
        result, params = again.infer("segvol_deepgrow", IMAGE_ID, {"label": "liver", "foreground": [[20, 18, 5]]})
        assert _read(result)[0].shape == SHAPE and params["label_names"] == {"background": 0, "liver": 1}
    finally:
        stop_server(restarted)
