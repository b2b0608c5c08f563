"""format=dcm over HTTP: a session from a DICOM series zip exports its objects as a DICOM SEG."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
from fastapi.testclient import TestClient

from tests.api.conftest import SHAPE, create, npz_bytes, volume
from tests.io.test_dicom_seg import SERIES_UID, STUDY_UID, dicom_series_zip, seg_voxels


def test_masks_and_segmentation_download_as_dicom_seg(client: TestClient, tmp_path: Path) -> None:
    series = dicom_series_zip(np.round(volume()).astype(np.int16), tmp_path / "series")
    r = client.post("/v1/sessions", files={"file": ("series.zip", series)})
    assert r.status_code == 201, r.text
    assert r.json()["source_format"] == "dicom" and tuple(r.json()["shape"]) == SHAPE
    sid, auth = r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}
    base = f"/v1/sessions/{sid}"
    r = client.get(f"{base}/segmentation", params={"format": "dcm"}, headers=auth)
    assert r.status_code == 422 and "at least one object" in r.json()["error"]["message"]

    masks = {oid: np.zeros(SHAPE, np.uint8) for oid in (1, 4)}
    masks[1][6:18, 20:44, 20:44] = 1
    masks[4][2:5, 50:60, 5:15] = 1
    for oid, mask in masks.items():
        r = client.put(f"{base}/objects/{oid}/mask", files={"file": ("m.npz", npz_bytes(mask=mask))}, headers=auth)
        assert r.status_code == 200, r.text
    sop_uids = [f"{SERIES_UID}.{k + 1}" for k in range(SHAPE[0])]  # slice k of the volume

    r = client.get(f"{base}/segmentation", params={"format": "dcm"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    assert r.headers["content-disposition"].endswith('segmentation.dcm"')
    seg = hd.seg.segread(io.BytesIO(r.content))
    assert seg.StudyInstanceUID == STUDY_UID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert seg.get_segment_numbers() == [1, 2]
    for number, oid in ((1, 1), (2, 4)):
        assert seg.get_segment_description(number).segment_label == f"object {oid}"
        np.testing.assert_array_equal(seg_voxels(seg, sop_uids, number), masks[oid] != 0)

    r = client.get(f"{base}/objects/4/mask", params={"format": "dcm"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom" and r.headers["X-Object-Version"] == "1"
    seg = hd.seg.segread(io.BytesIO(r.content))
    assert seg.get_segment_numbers() == [1]
    assert seg.get_segment_description(1).segment_label == "object 4"
    np.testing.assert_array_equal(seg_voxels(seg, sop_uids, 1), masks[4] != 0)


def test_dcm_needs_a_session_created_from_dicom(client: TestClient) -> None:
    sid, auth = create(client)  # an npz upload
    m = np.zeros(SHAPE, np.uint8)
    m[8:12, 30:34, 30:34] = 1
    assert client.put(f"/v1/sessions/{sid}/objects/1/mask", files={"file": ("m.npz", npz_bytes(mask=m))},
                      headers=auth).status_code == 200
    for url in (f"/v1/sessions/{sid}/objects/1/mask", f"/v1/sessions/{sid}/segmentation"):
        r = client.get(url, params={"format": "dcm"}, headers=auth)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "format" and error["message"].startswith("format: 'dcm' (DICOM SEG) needs")
        assert "npz upload" in error["message"]
    assert client.get(f"/v1/sessions/{sid}/segmentation", params={"format": "nrrd"}, headers=auth).status_code == 200
