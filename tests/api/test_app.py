"""The HTTP/WebSocket surface in-process: health, metrics, OpenAPI, downloads, object removal, stream messages."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas.frames import apply_diff, decode_diff
from tests.api.conftest import SHAPE, UPLOAD_LIMIT, create, npz_bytes, test_settings, volume

BOX = {"box": [6, 20, 20, 17, 43, 43]}


def _npz(content: bytes, key: str) -> np.ndarray:
    with np.load(io.BytesIO(content)) as npz:
        return npz[key]


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "segvol-test" and ready["store"] == "in_process"
    assert ready["click_propagation_reach"] == 15.0
    sid, auth = create(client)
    assert client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth).status_code == 200
    assert client.post(f"/v1/sessions/{sid}/objects/1/clicks", json={"points": [[10, 30, 30]], "labels": [1]},
                       headers=auth).status_code == 200
    text = client.get("/metrics").text
    route = "/v1/sessions/{session_id}/objects/{object_id}/clicks"
    assert f'segsvc_http_request_duration_seconds_count{{method="POST",route="{route}",status="200"}} 1.0' in text
    assert 'segsvc_model_stage_duration_seconds_count{stage="zoom_in",step="box"}' in text
    assert 'segsvc_prompts_total{op="clicks"} 1.0' in text
    assert "segsvc_sessions 1.0" in text
    device_bytes = [line for line in text.splitlines() if line.startswith("segsvc_session_device_bytes ")]
    assert float(device_bytes[0].split()[1]) > 0


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        "/v1/sessions": {"post"},
        "/v1/sessions/{session_id}": {"get", "delete"},
        "/v1/sessions/{session_id}/segmentation": {"get"},
        "/v1/sessions/{session_id}/objects/{object_id}": {"delete"},
        "/v1/sessions/{session_id}/objects/{object_id}/box": {"post"},
        "/v1/sessions/{session_id}/objects/{object_id}/clicks": {"post"},
        "/v1/sessions/{session_id}/objects/{object_id}/undo": {"post"},
        "/v1/sessions/{session_id}/objects/{object_id}/reset": {"post"},
        "/v1/sessions/{session_id}/objects/{object_id}/mask": {"get", "put"},
        "/healthz": {"get"}, "/readyz": {"get"}, "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(spec["paths"][path]), path
    assert "ErrorBody" in spec["components"]["schemas"]


def test_mask_downloads_carry_the_volume_geometry(client: TestClient) -> None:
    sid, auth = create(client, spacing=(2.5, 0.75, 0.5))
    client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth)
    r = client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth)
    assert r.headers["X-Object-Version"] == "1"
    mask = _npz(r.content, "mask")
    assert mask.dtype == np.uint8 and mask.shape == SHAPE and mask.any()
    for fmt in ("nii.gz", "nrrd"):
        r = client.get(f"/v1/sessions/{sid}/objects/1/mask", params={"format": fmt}, headers=auth)
        assert r.status_code == 200
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"m.{fmt}"
            path.write_bytes(r.content)
            image = sitk.ReadImage(str(path))
        assert np.array_equal(sitk.GetArrayFromImage(image), mask)
        assert np.allclose(image.GetSpacing(), (0.5, 0.75, 2.5))  # ITK order (x, y, z)


def test_put_mask_then_segmentation_label_map(client: TestClient) -> None:
    sid, auth = create(client)
    first = np.zeros(SHAPE, np.uint8)
    first[2:10, 5:25, 5:25] = 1
    second = np.zeros(SHAPE, np.uint8)
    second[8:20, 20:40, 20:40] = 1
    for oid, m in ((5, first), (9, second)):
        r = client.put(f"/v1/sessions/{sid}/objects/{oid}/mask", files={"file": ("m.npz", npz_bytes(mask=m))},
                       headers=auth)
        assert r.status_code == 200 and r.json()["changed"] == int(m.sum())
        assert np.array_equal(_npz(client.get(f"/v1/sessions/{sid}/objects/{oid}/mask", headers=auth).content,
                                   "mask"), m)
    expected = np.where(second == 1, 9, np.where(first == 1, 5, 0))  # object 9 changed last: wins overlaps
    for params in ({}, {"overlap": "confidence"}, {"overlap": "recent"}):  # equal confidences: the tie rule
        r = client.get(f"/v1/sessions/{sid}/segmentation", params=params, headers=auth)
        assert np.array_equal(_npz(r.content, "segs"), expected)
    r = client.get(f"/v1/sessions/{sid}/segmentation", params={"overlap": "newest"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "overlap", r.text


@pytest.mark.parametrize("exclusive", [True, False])
def test_sessions_report_whether_their_objects_are_exclusive(service_predictor, exclusive: bool) -> None:  # noqa: ANN001
    app = create_app(test_settings(exclusive_objects=exclusive), predictor=service_predictor)
    with TestClient(app) as c:
        r = c.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.ones(3)))})
        assert r.status_code == 201 and r.json()["exclusive_objects"] is exclusive
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        info = c.get(f"/v1/sessions/{r.json()['session_id']}", headers=auth)
        assert info.status_code == 200 and info.json()["exclusive_objects"] is exclusive
        # A session may choose otherwise; a value that is not a bool names the field.
        r = c.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.ones(3)))},
                   data={"exclusive_objects": "false" if exclusive else "true"})
        assert r.status_code == 201 and r.json()["exclusive_objects"] is not exclusive
        manager = c.app.state.services.manager  # type: ignore[attr-defined]
        assert manager.get(r.json()["session_id"]).state.exclusive_objects is not exclusive
        r = c.post("/v1/sessions", files={"file": ("v.npz", npz_bytes(imgs=volume(), spacing=np.ones(3)))},
                   data={"exclusive_objects": "sometimes"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "exclusive_objects", r.text


def test_world_box_matches_the_voxel_box(client: TestClient) -> None:
    sid, auth = create(client, spacing=(2.0, 1.0, 1.0))
    voxel = client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth).json()
    # Identity direction, zero origin: LPS (x, y, z) mm = (x * sx, y * sy, z * sz).
    z0, y0, x0, z1, y1, x1 = BOX["box"]
    world = {"box": [x0 * 1.0, y0 * 1.0, z0 * 2.0, x1 * 1.0, y1 * 1.0, z1 * 2.0], "world": True}
    r = client.post(f"/v1/sessions/{sid}/objects/2/box", json=world, headers=auth)
    assert r.status_code == 200, r.text
    m1 = _npz(client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth).content, "mask")
    m2 = _npz(client.get(f"/v1/sessions/{sid}/objects/2/mask", headers=auth).content, "mask")
    assert r.json()["changed"] == voxel["changed"] and np.array_equal(m1, m2)


def test_stream_messages(client: TestClient) -> None:
    sid, auth = create(client)
    client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth)
    with client.websocket_connect(f"/v1/sessions/{sid}/stream", headers=auth) as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["objects"] == {"1": 1} and hello["frame_version"] == 1
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
        ws.send_text("not json")
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["field"] == "message"
        ws.send_json({"type": "resync", "object_id": 3})
        error = ws.receive_json()
        assert error["error"]["code"] == "object_not_found"
        ws.send_json({"type": "resync", "object_id": None})  # every object
        mask = np.zeros(SHAPE, np.uint8)
        frame = decode_diff(ws.receive_bytes())
        apply_diff(mask, frame)
        expected = _npz(client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth).content, "mask")
        assert frame.object_id == 1 and frame.version == 1 and np.array_equal(mask, expected)
        # Removing an object is announced, and a new object on the same id starts over at version 1.
        assert client.delete(f"/v1/sessions/{sid}/objects/1", headers=auth).status_code == 204
        removed = ws.receive_json()
        assert removed["type"] == "removed" and removed["object_id"] == 1
        assert client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth).status_code == 404
        r = client.post(f"/v1/sessions/{sid}/objects/1/box", json=BOX, headers=auth)
        assert r.json()["version"] == 1
        frame = decode_diff(ws.receive_bytes())
        assert frame.base_version == 0 and frame.version == 1
    info = client.get(f"/v1/sessions/{sid}", headers=auth).json()
    assert [(o["object_id"], o["version"], o["n_prompts"]) for o in info["objects"]] == [(1, 1, 3)]


def test_stream_of_deleted_session_is_closed(client: TestClient) -> None:
    sid, auth = create(client)
    with client.websocket_connect(f"/v1/sessions/{sid}/stream?token={auth['Authorization'][7:]}") as ws:
        assert ws.receive_json()["type"] == "hello"
        assert client.delete(f"/v1/sessions/{sid}", headers=auth).status_code == 204
        message = ws.receive()
        assert message["type"] == "websocket.close" and message["code"] == 4410


def test_body_over_the_limit_is_refused_while_streaming(client: TestClient) -> None:
    def chunks():  # noqa: ANN202 - no Content-Length: the limit is enforced on the streamed bytes
        for _ in range(40):
            yield b"\0" * 65536

    r = client.post("/v1/sessions", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large" and r.json()["error"]["field"] == "file"
    r = client.post("/v1/sessions", files={"file": ("v.npz", b"\0" * (UPLOAD_LIMIT + 70_000))})
    assert r.status_code == 413
    assert client.get("/readyz").json()["sessions"] == 0


def test_unknown_route_uses_the_error_body(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert json.loads(r.text)["error"]["message"]
