"""MONAI Label compatibility and DICOMweb against a real Orthanc: infer by SeriesInstanceUID, incremental
clicks, uploaded sessions, multipart replies, SEGs stored back with STOW-RS (in-process app, real model)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import SimpleITK as sitk
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient

from app.io.dicomweb import DicomwebSource
from app.main import create_app
from app.sessions.monailabel_bridge import click_box
from tests.api.conftest import test_settings
from tests.dicomweb.conftest import INSIDE_IJK, SHAPE, CtSeries, Orthanc
from tests.dicomweb.helpers import ohif_parse, parse_multipart, read_label_image, seg_labelmap
from tests.io.test_dicom_seg import ORIGIN, SPACING_XYZ

DEEPGROW = "/infer/segvol_deepgrow"
DEEPEDIT = "/infer/segvol"


@pytest.fixture(scope="module")
def client(orthanc: Orthanc, service_predictor) -> Iterator[TestClient]:  # noqa: ANN001
    # Independent objects: these tests compare each label with a fresh one-object v1 session, while every label
    # of one image shares a session; in an exclusive session the other labels' clicks would enter the result
    # (what that does is tested in tests/models/test_exclusive_objects.py).
    # Each test clicks a label of its own (a label name outside these is refused: issue 18, item 14).
    settings = test_settings(monailabel_enabled=True, dicomweb_url=orthanc.dicomweb, max_sessions=8,
                             exclusive_objects=False, monailabel_labels=[
                                 "object", "placement", "placement2", "incremental", "upload-twin"])
    with TestClient(create_app(settings, predictor=service_predictor)) as c:
        yield c


def deepgrow(client: TestClient, series: CtSeries, foreground: list, background: list | None = None, *,
             label: str, output: str = "json"):  # noqa: ANN201 - httpx.Response
    params = {"foreground": foreground, "background": background or [], "label": label}
    return client.post(DEEPGROW, params={"image": series.series_uid, "output": output},
                       data={"params": json.dumps(params)})


def v1_reference(client: TestClient, series: CtSeries, points_zyx: list[list[int]]) -> np.ndarray:
    """The mask our own v1 API gives for the same clicks in (z, y, x), on a session of the same series: the
    box the bridge derives from the clicks, then the clicks."""
    r = client.post("/v1/sessions/dicomweb", data={"series_uid": series.series_uid})
    assert r.status_code == 201, r.text
    sid, auth = r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}
    box = click_box([tuple(p) for p in points_zyx], r.json()["spacing"], r.json()["shape"])
    assert client.post(f"/v1/sessions/{sid}/objects/1/box", headers=auth, json={"box": list(box)}).status_code == 200
    r = client.post(f"/v1/sessions/{sid}/objects/1/clicks", headers=auth,
                    json={"points": points_zyx, "labels": [1] * len(points_zyx), "mode": "decoder"})
    assert r.status_code == 200, r.text
    r = client.get(f"/v1/sessions/{sid}/objects/1/mask", params={"format": "npz"}, headers=auth)
    mask = np.load(io.BytesIO(r.content))["mask"]
    assert client.delete(f"/v1/sessions/{sid}", headers=auth).status_code == 204
    return mask


def bridge_of(client: TestClient):  # noqa: ANN201
    return client.app.state.monailabel_bridge[1]  # type: ignore[attr-defined]


def test_clicks_in_ijk_land_on_the_same_voxels_as_zyx_clicks_on_v1(client: TestClient, ct_series: CtSeries) -> None:
    i, j, k = INSIDE_IJK
    r = deepgrow(client, ct_series, [[i, j, k]], label="placement", output="image")
    assert r.status_code == 200, r.text
    image = read_label_image(r.content)
    assert image.GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])  # (i, j, k) sizes
    assert image.GetPixelID() == sitk.sitkUInt16  # what OHIF's reader expects by default
    assert np.allclose(image.GetSpacing(), SPACING_XYZ) and np.allclose(image.GetOrigin(), ORIGIN)
    result = sitk.GetArrayFromImage(image)
    assert set(np.unique(result)) <= {0, 1}
    reference = v1_reference(client, ct_series, [[k, j, i]])
    assert reference.any()
    assert np.array_equal(result != 0, reference != 0)
    # The same numbers read as (z, y, x) are another place: the test can tell the axes apart.
    i2, j2, k2 = 10, 14, 6
    r = deepgrow(client, ct_series, [[i2, j2, k2]], label="placement2", output="image")
    moved = sitk.GetArrayFromImage(read_label_image(r.content)) != 0
    assert np.array_equal(moved, v1_reference(client, ct_series, [[k2, j2, i2]]) != 0)
    assert not np.array_equal(moved, v1_reference(client, ct_series, [[i2, j2, k2]]) != 0)
    # (i, j, k) with k past the 16 slices: refused, naming the click.
    r = deepgrow(client, ct_series, [[k, j, i]], label="placement")
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "params.foreground" and "outside the image" in r.json()["error"]["message"]


def test_a_repeated_click_list_plus_one_click_is_one_incremental_step(client: TestClient, ct_series: CtSeries
                                                                      ) -> None:
    a, b, c = [40, 14, 6], [35, 12, 5], [45, 16, 7]
    first = deepgrow(client, ct_series, [a], label="incremental").json()["segsvc"]["tracks"][0]
    entry = bridge_of(client).keyed(f"dicomweb:{ct_series.series_uid}")
    session_id = entry.session.session_id
    second = deepgrow(client, ct_series, [a, b], label="incremental").json()["segsvc"]["tracks"][0]
    assert first["action"] == "created" and second["action"] == "incremental"
    assert second["object_id"] == first["object_id"] and second["version"] == first["version"] + 1
    assert second["new_clicks"] == 1
    third = deepgrow(client, ct_series, [a, b], [c], label="incremental").json()["segsvc"]["tracks"][0]
    assert third["action"] == "incremental" and third["version"] == second["version"] + 1
    same = deepgrow(client, ct_series, [a, b], [c], label="incremental").json()["segsvc"]["tracks"][0]
    assert same["action"] == "unchanged" and same["version"] == third["version"]
    assert bridge_of(client).keyed(f"dicomweb:{ct_series.series_uid}").session.session_id == session_id
    oid = first["object_id"]
    store = bridge_of(client).manager.store
    history = client.portal.call(store.prompt_history, session_id, oid)  # type: ignore[union-attr]
    assert [(p.op, p.args.get("mode"), p.args.get("points")) for p in history] == [
        ("box", None, None),  # the box derived from the first call's foreground clicks
        ("clicks", "decoder", [[6, 14, 40]]),  # all clicks of the first call, in (z, y, x)
        ("clicks", "gru", [[5, 12, 35]]),  # then only what was added
        ("clicks", "gru", [[7, 16, 45]]),
    ]
    # A click taken away: the object is rebuilt from the clicks the client shows.
    replayed = deepgrow(client, ct_series, [b], label="incremental").json()["segsvc"]["tracks"][0]
    assert replayed["action"] == "replayed" and replayed["object_id"] == oid
    history = client.portal.call(store.prompt_history, session_id, oid)  # type: ignore[union-attr]
    assert [p.op for p in history][-3:] == ["remove", "box", "clicks"] and history[-1].args["points"] == [[5, 12, 35]]


def test_output_all_is_the_multipart_reply_both_viewers_parse(client: TestClient, ct_series: CtSeries) -> None:
    i, j, k = INSIDE_IJK
    params = {"object": [[i, j, k]], "background": [[5, 5, 2]], "label": "object",  # deepedit style (OHIF)
              "result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": False,
              "restore_label_idx": False}
    r = client.post(DEEPEDIT, params={"image": ct_series.series_uid}, data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    content_type = r.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    parts = parse_multipart(content_type, r.content)
    filename, kind, payload = parts["params"]
    assert filename is None and kind == "application/json"  # a form field, not a file
    reply = json.loads(payload)
    assert reply["label_names"] == {"background": 0, "object": 1, "placement": 2, "placement2": 3,
                                    "incremental": 4, "upload-twin": 5}  # deepedit: every label of the model
    value, ci, cj, ck = reply["centroids"]["object"]
    assert value == 1 and 0 <= ci < SHAPE[2] and 0 <= cj < SHAPE[1] and 0 <= ck < SHAPE[0]
    filename, kind, payload = parts["image"]
    assert filename == "label.nrrd" and kind == "application/octet-stream"
    labels = sitk.GetArrayFromImage(read_label_image(payload))
    assert labels[k, j, i] in (0, 1) and labels.any()
    assert ohif_parse(content_type, r.content)["centroids"] == reply["centroids"]


def test_uploaded_session_then_infer_then_delete(client: TestClient, ct_series: CtSeries, tmp_path) -> None:  # noqa: ANN001
    image = sitk.GetImageFromArray(ct_series.array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN)
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(image, str(path))
    r = client.put("/session/", files=[("files", ("volume.nrrd", path.read_bytes()))], data={"client_id": "x"})
    assert r.status_code == 200, r.text
    session_id = r.json()["session_id"]
    assert r.json()["session_info"]["name"] == session_id
    assert client.get(f"/session/{session_id}").json()["meta"]["size_ijk"] == [SHAPE[2], SHAPE[1], SHAPE[0]]
    i, j, k = INSIDE_IJK
    params = {"foreground": [[i, j, k]], "background": [], "label": "object"}
    r = client.post(DEEPGROW, params={"image": "volume", "session_id": session_id, "output": "image"},
                    data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    from_upload = sitk.GetArrayFromImage(read_label_image(r.content))
    r = deepgrow(client, ct_series, [[i, j, k]], label="upload-twin", output="image")
    assert np.array_equal(from_upload, sitk.GetArrayFromImage(read_label_image(r.content)))  # same image, same voxels
    assert client.delete(f"/session/{session_id}").status_code == 200
    assert client.get(f"/session/{session_id}").status_code == 404
    r = client.post(DEEPGROW, params={"session_id": session_id}, data={"params": json.dumps(params)})
    assert r.status_code == 404 and r.json()["error"]["field"] == "session_id"


def test_saved_label_is_stored_as_seg_on_the_dicomweb_server(client: TestClient, orthanc: Orthanc,
                                                             ct_series: CtSeries) -> None:
    r = deepgrow(client, ct_series, [list(INSIDE_IJK)], label="object", output="image")
    labels = sitk.GetArrayFromImage(read_label_image(r.content)).astype(np.uint8)
    assert labels.any()
    raw = labels.tobytes()  # OHIF's label.bin: uint8, i fastest (C order of the (k, j, i) array)
    r = client.put("/datastore/label", params={"image": ct_series.series_uid},
                   files={"label": ("label.bin", raw)},
                   data={"params": json.dumps({"label_info": [{"name": "liver", "idx": 1}]})})
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["image"] == ct_series.series_uid and saved["label"] == saved["sop_instance_uid"]
    assert saved["study_instance_uid"] == ct_series.study_uid
    source = DicomwebSource(orthanc.dicomweb)
    assert source.instances_of_series(saved["study_instance_uid"], saved["series_instance_uid"]) == [
        saved["sop_instance_uid"]]  # QIDO-RS finds it
    stored = DICOMwebClient(orthanc.dicomweb).retrieve_instance(
        saved["study_instance_uid"], saved["series_instance_uid"], saved["sop_instance_uid"])
    buf = io.BytesIO()
    stored.save_as(buf)
    assert stored.SegmentSequence[0].SegmentLabel == "liver"
    assert np.array_equal(seg_labelmap(buf.getvalue(), ct_series.sop_uids), labels)
    r = client.put("/datastore/label", params={"image": ct_series.series_uid}, files={"label": ("label.bin", raw[1:])})
    assert r.status_code == 422 and r.json()["error"]["field"] == "label"
    r = client.put("/datastore/label", params={"image": ct_series.series_uid},
                   files={"label": ("label.bin", bytes(len(raw)))})
    assert r.status_code == 422 and r.json()["error"]["field"] == "label"


def test_v1_session_from_dicomweb_stores_its_seg_with_stow(client: TestClient, orthanc: Orthanc,
                                                           ct_series: CtSeries) -> None:
    r = client.post("/v1/sessions/dicomweb", data={"series_uid": ct_series.series_uid})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["shape"] == list(SHAPE) and created["source_format"] == "dicom"
    sid, auth = created["session_id"], {"Authorization": f"Bearer {created['token']}"}
    i, j, k = INSIDE_IJK
    for oid in (2, 3):
        assert client.post(f"/v1/sessions/{sid}/objects/{oid}/clicks", headers=auth,
                           json={"points": [[k, j, i - 10 * (oid - 2)]], "labels": [1], "mode": "decoder"}
                           ).status_code == 200
    r = client.post(f"/v1/sessions/{sid}/dicomweb/store", params={"object_id": 3}, headers=auth)
    assert r.status_code == 200, r.text
    stored = r.json()
    mask = np.load(io.BytesIO(client.get(f"/v1/sessions/{sid}/objects/3/mask", headers=auth).content))["mask"]
    seg = DICOMwebClient(orthanc.dicomweb).retrieve_instance(
        stored["study_instance_uid"], stored["series_instance_uid"], stored["sop_instance_uid"])
    buf = io.BytesIO()
    seg.save_as(buf)
    assert np.array_equal(seg_labelmap(buf.getvalue(), ct_series.sop_uids) != 0, mask != 0)
    r = client.post(f"/v1/sessions/{sid}/dicomweb/store", headers=auth)  # every object, one segment each
    assert r.status_code == 200
    assert client.post(f"/v1/sessions/{sid}/dicomweb/store", params={"object_id": 9}, headers=auth).status_code == 404
    assert client.post(f"/v1/sessions/{sid}/dicomweb/store", params={"object_id": 3}).status_code == 401
    client.delete(f"/v1/sessions/{sid}", headers=auth)


def test_bad_requests_name_their_field(client: TestClient, ct_series: CtSeries) -> None:
    r = client.post(DEEPGROW, params={"image": "1.2.3.999"}, data={"params": json.dumps({"foreground": [[1, 1, 1]]})})
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    r = client.post(DEEPGROW, params={"image": "not a uid"}, data={"params": "{}"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    r = client.post(DEEPGROW, params={"image": ct_series.series_uid}, data={"params": "{not json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "params"
    r = client.post(DEEPGROW, params={"image": ct_series.series_uid},
                    data={"params": json.dumps({"foreground": [[1, 1, 1.5]]})})
    assert r.status_code == 422 and r.json()["error"]["field"] == "params.foreground"
    assert client.post("/infer/nope", params={"image": ct_series.series_uid}).status_code == 404
    assert client.post(DEEPGROW, data={"params": "{}"}).status_code == 422
    r = client.post("/v1/sessions/dicomweb", data={"series_uid": "1.2.3.999"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "series_uid"
