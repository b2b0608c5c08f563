"""What the MONAI Label routes hand back: ``.seg.nrrd`` with Slicer's segment fields, a DICOM SEG from
``/infer`` (``output=dicom_seg``), the session's image, the session's own expiry, and errors that name the
form field at fault. A refused call leaves the labels as they were."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.dicomweb.conftest import INSIDE_IJK, ct_array
from tests.dicomweb.helpers import read_label_image
from tests.dicomweb.test_monailabel_access import make_client
from tests.io.test_dicom_seg import dicom_series_zip

LABELS = ["liver", "lesion"]


@pytest.fixture
def client(service_predictor) -> Iterator[TestClient]:  # noqa: ANN001
    with make_client(service_predictor, monailabel_enabled=True, monailabel_labels=LABELS,
                     idle_timeout_s=60.0) as c:
        yield c


def put_session(c: TestClient, name: str, data: bytes, **query: Any) -> dict[str, Any]:
    r = c.put("/session/", params=query, files=[("files", (name, data))])
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def nrrd_volume(tmp_path: Path) -> bytes:
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ct_array().astype(np.float32)), str(path))
    return path.read_bytes()


def post_infer(c: TestClient, sid: str, params: dict[str, Any], output: str) -> Any:
    return c.post("/infer/segvol", params={"session_id": sid, "output": output}, data={"params": json.dumps(params)})


def test_seg_nrrd_carries_slicers_segment_fields(client: TestClient, tmp_path: Path) -> None:
    sid = put_session(client, "volume.nrrd", nrrd_volume(tmp_path))["session_id"]
    params = {"lesion": [list(INSIDE_IJK)], "background": [], "result_extension": ".seg.nrrd"}
    r = post_infer(client, sid, params, "image")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].endswith('filename="label.seg.nrrd"')
    image = read_label_image(r.content, ".seg.nrrd")
    labels = sitk.GetArrayFromImage(image)
    fields = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    assert fields["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert [fields[f"Segment{n}_Name"] for n in (0, 1)] == LABELS  # every label, an empty one included
    assert [fields[f"Segment{n}_LabelValue"] for n in (0, 1)] == ["1", "2"]
    assert fields["Segment0_Extent"] == "0 -1 0 -1 0 -1"  # liver has no voxel
    z, y, x = np.nonzero(labels == 2)
    assert z.size and fields["Segment1_Extent"] == f"{x.min()} {x.max()} {y.min()} {y.max()} {z.min()} {z.max()}"


def test_infer_answers_a_dicom_seg_of_a_dicom_image(client: TestClient, tmp_path: Path) -> None:
    array = ct_array()
    sid = put_session(client, "series.zip", dicom_series_zip(array, tmp_path / "series"))["session_id"]
    r = post_infer(client, sid, {"lesion": [list(INSIDE_IJK)], "background": []}, "dicom_seg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    assert seg.SeriesDescription
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == ["lesion"]
    assert int(seg.NumberOfFrames) >= 1  # no segment without a frame


def test_refused_outputs_leave_the_labels_untouched(client: TestClient, tmp_path: Path) -> None:
    sid = put_session(client, "volume.nrrd", nrrd_volume(tmp_path))["session_id"]
    params = {"lesion": [list(INSIDE_IJK)], "background": []}
    r = post_infer(client, sid, params, "dicom_seg")  # not a DICOM image
    assert r.status_code == 422 and r.json()["error"]["field"] == "output"
    r = post_infer(client, sid, {**params, "result_extension": ".png"}, "all")
    assert r.status_code == 422 and r.json()["error"]["field"] == "params.result_extension"
    r = post_infer(client, sid, {**params, "result_dtype": "float32"}, "all")
    assert r.status_code == 422 and r.json()["error"]["field"] == "params.result_dtype"
    reply = post_infer(client, sid, params, "json").json()
    assert reply["segsvc"]["tracks"][0]["action"] == "created"  # none of the refused calls ran a click


def test_the_session_image_downloads_as_uploaded(client: TestClient, tmp_path: Path) -> None:
    data = nrrd_volume(tmp_path)
    sid = put_session(client, "volume.nrrd", data)["session_id"]
    r = client.get(f"/session/{sid}", params={"image": "true"})
    assert r.status_code == 200 and r.content == data
    assert 'filename="volume.nrrd"' in r.headers["content-disposition"]
    assert client.delete(f"/session/{sid}").status_code == 200
    assert client.get(f"/session/{sid}", params={"image": "true"}).status_code == 404


def test_expiry_is_honoured(client: TestClient, tmp_path: Path) -> None:
    created = put_session(client, "volume.nrrd", nrrd_volume(tmp_path), expiry=1)
    assert created["session_info"]["expiry"] <= 1
    kept = put_session(client, "volume.nrrd", nrrd_volume(tmp_path))  # the server's idle timeout
    assert kept["session_info"]["expiry"] > 50
    time.sleep(1.5)
    assert client.get(f"/session/{created['session_id']}").status_code == 404
    assert client.get(f"/session/{kept['session_id']}").status_code == 200
    r = client.put("/session/", params={"expiry": 61}, files=[("files", ("volume.nrrd", b"x"))])
    assert r.status_code == 422 and r.json()["error"]["field"] == "expiry" and "60" in r.json()["error"]["message"]


def test_upload_errors_name_the_form_field(client: TestClient) -> None:
    r = client.put("/session/", files=[("files", ("volume.nrrd", b"not an image"))])
    assert r.status_code == 422 and r.json()["error"]["field"] == "files", r.text
    assert r.json()["error"]["message"].startswith("files: ")
    r = client.put("/session/", files=[("files", ("volume.txt", b"x"))])
    assert r.status_code == 422 and r.json()["error"]["field"] == "files", r.text
