"""Scribble and lasso prompts over REST: the region ends with its label, one undo reverts it, bad input is refused
by name and changes nothing, and a restart replays them (the history holds them as runs)."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient

from app.models import regions
from tests.api.conftest import SHAPE, create


def _mask(client: TestClient, sid: str, auth: dict[str, str]) -> np.ndarray:
    r = client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth)
    assert r.status_code == 200
    return np.load(io.BytesIO(r.content))["mask"]


def test_scribble_and_lasso_end_with_their_label(client: TestClient) -> None:
    sid, auth = create(client)
    base = f"/v1/sessions/{sid}/objects/1"
    z = SHAPE[0] // 2
    voxels = [[z, SHAPE[1] // 2, x] for x in range(SHAPE[2] // 4, SHAPE[2] // 2)]
    r = client.post(base + "/scribble", json={"voxels": voxels, "label": 1, "mode": "decoder"}, headers=auth)
    assert r.status_code == 200, r.text
    assert [s["step"] for s in r.json()["steps"]] == ["decoder"]
    mask = _mask(client, sid, auth)
    assert all(mask[tuple(v)] for v in voxels)
    square = [[4, 4], [4, 12], [12, 12], [12, 4]]  # (y, x) on slice z
    r = client.post(base + "/lasso", json={"axis": 0, "index": z, "contour": square, "label": 0}, headers=auth)
    assert r.status_code == 200, r.text
    assert [s["step"] for s in r.json()["steps"]] == ["gru", "decoder"]
    assert not _mask(client, sid, auth)[z, 4:13, 4:13].any()
    assert client.post(base + "/undo", headers=auth).status_code == 200
    assert np.array_equal(_mask(client, sid, auth), mask)


def test_bad_regions_are_refused_by_name_and_change_nothing(client: TestClient) -> None:
    sid, auth = create(client)
    base = f"/v1/sessions/{sid}/objects/1"
    cases = [
        ("/scribble", {"voxels": [[0, 0, SHAPE[2]]], "label": 1}, "voxels"),
        ("/scribble", {"voxels": [], "label": 1}, "voxels"),
        ("/scribble", {"voxels": [[0, 0, 0]], "label": 2}, "label"),
        ("/scribble", {"voxels": [[0, 0, 0]], "label": 1, "mode": "gru"}, "mode"),
        ("/lasso", {"axis": 0, "index": SHAPE[0], "contour": [[0, 0], [0, 5], [5, 5]], "label": 1}, "index"),
        ("/lasso", {"axis": 3, "index": 0, "contour": [[0, 0], [0, 5], [5, 5]], "label": 1}, "axis"),
        ("/lasso", {"axis": 0, "index": 0, "contour": [[0, 0], [0, 5]], "label": 1}, "contour"),
        ("/lasso", {"axis": 0, "index": 0, "contour": [[-50, -50], [-50, -40], [-40, -40]], "label": 1}, "contour"),
        ("/lasso", {"axis": 0, "index": 0, "contour": [[0, 0], [0, 5], [1e300, 5]], "label": 1}, "contour"),
    ]
    for path, body, field in cases:
        r = client.post(base + path, json=body, headers=auth)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["error"]["field"] == field, (body, r.json())
    assert client.get(f"/v1/sessions/{sid}/objects/1/mask", headers=auth).status_code == 404  # no object made


def test_region_history_replays(service_predictor) -> None:  # noqa: ANN001
    from app.sessions.persistence import replay_history
    from app.sessions.store import PromptRecord

    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=(20, 40, 40)).astype(np.float32)
    flat = regions.fill_lasso(0, 10, [[10, 10], [10, 25], [25, 25]], (20, 40, 40))
    live = service_predictor.init_state(vol, (2.0, 1.0, 1.0), seed=3)
    service_predictor.add_box(live, 1, [5, 8, 8, 15, 30, 30])
    changes = service_predictor.add_region(live, 1, flat, 1, mode="both")
    history = [
        PromptRecord(op="box", object_id=1, args={"box": [5, 8, 8, 15, 30, 30]}, version=1, at=0.0),
        PromptRecord(op="region", object_id=1, args={"runs": regions.to_runs(flat), "label": 1, "mode": "both"},
                     version=changes[-1].version, at=0.0),
    ]
    fresh = service_predictor.init_state(vol, (2.0, 1.0, 1.0), seed=3)
    replay_history(service_predictor, fresh, history, load_mask=lambda _: None)
    assert np.array_equal(service_predictor.get_mask(fresh, 1), service_predictor.get_mask(live, 1))
