"""Who reaches the MONAI Label routes (off by default; API keys unless opened) and the /info/ shape the
viewers parse. No DICOMweb server needed."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.config import hash_api_key
from app.main import create_app
from tests.api.conftest import test_settings

KEY = "monai-test-key"


def make_client(service_predictor, **overrides: object) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(test_settings(**overrides), predictor=service_predictor))


def test_routes_answer_404_until_enabled(service_predictor) -> None:  # noqa: ANN001
    with make_client(service_predictor) as c:
        assert c.get("/info/").status_code == 404
        r = c.post("/infer/segvol", params={"image": "1.2.3"}, data={"params": "{}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.put("/session/", files=[("files", ("v.nrrd", b"x"))]).status_code == 404
        assert c.put("/datastore/label", params={"image": "1.2.3"}).status_code == 404
        assert c.get("/datastore/").status_code == 404
        assert c.post("/activelearning/first", json={}).status_code == 404
        assert c.get("/train/").status_code == 404
        assert c.get("/healthz").status_code == 200


def test_api_keys_apply_unless_the_routes_are_opened(service_predictor) -> None:  # noqa: ANN001
    keys = {"api_key_hashes": [hash_api_key(KEY)], "monailabel_enabled": True}
    with make_client(service_predictor, **keys) as c:
        r = c.get("/info/")
        assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_required"
        assert c.get("/info/", headers={"X-API-Key": "wrong"}).json()["error"]["code"] == "invalid_api_key"
        assert c.get("/info/", headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/infer/segvol", data={"params": "{}"}).status_code == 401
        for path in ("/datastore/", "/train/"):  # Slicer's datastore and training calls are gated alike
            assert c.get(path).status_code == 401
        assert c.post("/activelearning/first", json={}).status_code == 401
    with make_client(service_predictor, **keys, monailabel_open=True) as c:
        assert c.get("/info/").status_code == 200  # opened: no key asked
        assert c.post("/v1/sessions").status_code == 401  # the v1 API still needs one


def test_info_has_what_ohif_and_slicer_read(service_predictor) -> None:  # noqa: ANN001
    with make_client(service_predictor, monailabel_enabled=True, monailabel_labels=["liver", "spleen"]) as c:
        info = c.get("/info/").json()
    assert info["labels"] == ["background", "liver", "spleen"]  # OHIF drops the first entry
    types = {m["type"] for m in info["models"].values()}
    assert types == {"deepedit", "deepgrow"}  # Slicer lists both kinds; OHIF's point prompts too
    for model in info["models"].values():
        assert model["dimension"] == 3 and model["labels"] == {"background": 0, "liver": 1, "spleen": 2}
        assert model["description"]
    assert isinstance(info["config"], dict) and info["datastore"]["total"] == 0  # Slicer reads both
    for key in ("name", "version", "trainers", "strategies", "scoring", "train_stats"):
        assert key in info


def test_without_dicomweb_an_image_id_needs_an_uploaded_session(service_predictor) -> None:  # noqa: ANN001
    with make_client(service_predictor, monailabel_enabled=True) as c:
        r = c.post("/infer/segvol", params={"image": "1.2.3"},
                   data={"params": json.dumps({"foreground": [[1, 1, 1]]})})
        assert r.status_code == 422 and "dicomweb_url" in r.json()["error"]["message"]
        r = c.put("/datastore/label", params={"image": "1.2.3"}, files={"label": ("label.bin", b"\0")})
        error = r.json()["error"]  # neither in a datastore (there is none) nor on a DICOMweb server
        assert r.status_code == 422 and error["field"] == "image" and "dicomweb_url" in error["message"]
        assert c.get("/datastore/").status_code == 404  # no storage_dir: no datastore
        r = c.post("/v1/sessions/dicomweb", data={"series_uid": "1.2.3"})
        assert r.status_code == 404


def test_an_image_sent_inline_keeps_its_clicks_incremental(service_predictor, tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 9, (10, 20, 30)).astype(np.float32)),
                    str(path))
    data = path.read_bytes()
    with make_client(service_predictor, monailabel_enabled=True) as c:
        actions = []
        # (i, j, k) at 1 mm: the label's box is the first click +- 10 voxels; the second click is inside it,
        # the third leaves it (the label is rebuilt with a wider box).
        for fg in ([[25, 3, 2]], [[25, 3, 2], [20, 8, 5]], [[25, 3, 2], [20, 8, 5], [2, 15, 8]]):
            r = c.post("/infer/segvol_deepgrow", params={"output": "json"}, files={"file": ("volume.nrrd", data)},
                       data={"params": json.dumps({"foreground": fg})})
            assert r.status_code == 200, r.text
            actions.append(r.json()["segsvc"]["tracks"][0]["action"])
        assert actions == ["created", "incremental", "replayed"]
        r = c.post("/infer/segvol_deepgrow", files={"file": ("volume.nrrd", data)},
                   data={"params": json.dumps({"foreground": [[2, 25, 3]]})})  # (i, j, k) with j past 20 rows
        assert r.status_code == 422 and r.json()["error"]["field"] == "params.foreground"


def test_a_full_server_closes_the_least_recently_used_idle_image(service_predictor, tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(2).normal(0, 9, (8, 16, 16)).astype(np.float32)),
                    str(path))
    with make_client(service_predictor, monailabel_enabled=True, max_sessions=1) as c:
        first = c.put("/session/", files=[("files", ("a.nrrd", path.read_bytes()))]).json()["session_id"]
        second = c.put("/session/", files=[("files", ("b.nrrd", path.read_bytes()))])
        assert second.status_code == 200, second.text
        assert c.get(f"/session/{first}").status_code == 404  # made room
        assert c.get(f"/session/{second.json()['session_id']}").status_code == 200
        r = c.post("/v1/sessions", files={"file": ("v.nrrd", path.read_bytes())})
        assert r.status_code == 503  # v1 sessions are never evicted for (or by) the bridge; it is full
