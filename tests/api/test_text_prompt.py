"""``POST .../objects/{oid}/text``: SegVol's text prompt over REST, and the prompt kinds in ``/readyz``.

A real app (in-process, real lifespan) on the tiny ``segvol-test`` SegVol with random weights: with the CLIP
text branch and SegVol's inference, and without it (the default test model), which answers 422.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.conftest import create, test_settings

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_predictor():  # noqa: ANN201
    from app.models import PredictorConfig, build_predictor
    from app.models.clip_tokenizer import packaged_vocabulary

    try:
        packaged_vocabulary()
    except FileNotFoundError:
        pytest.skip("CLIP's vocabulary (open-clip-torch, the 'text' extra) is not installed")
    return build_predictor("segvol-test", weights=None, with_text=True, predictor_config=PredictorConfig(zoom_in="segvol"))


@pytest.fixture
def text_client(text_predictor) -> Iterator[TestClient]:  # noqa: ANN001
    with TestClient(create_app(test_settings(), predictor=text_predictor)) as c:
        yield c


def test_a_name_with_a_box_segments_and_decoder_clicks_keep_it(text_client: TestClient) -> None:
    assert "text" in text_client.get("/readyz").json()["prompt_kinds"]
    sid, auth = create(text_client)
    r = text_client.post(f"/v1/sessions/{sid}/objects/1/text", json={"text": "liver", "box": [6, 20, 20, 17, 43, 43]},
                         headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["steps"][0]["step"] == "decoder"
    r = text_client.post(f"/v1/sessions/{sid}/objects/1/clicks", json={"points": [[12, 30, 30]], "labels": [1],
                                                                       "mode": "decoder"}, headers=auth)
    assert r.status_code == 200, r.text
    obj = text_client.app.state.services.manager.get(sid).state.objects[1]
    assert obj.text == "liver" and obj.box == (6, 20, 20, 17, 43, 43)  # the decoder click kept the name


@pytest.mark.parametrize("body, field", [({"text": ""}, "text"), ({"text": "liver", "box": [0, 0, 0, 99, 1, 1]}, "box"),
                                         ({"text": "liver", "points": [[1, 1, 1]]}, "labels")])
def test_bad_text_requests_name_the_field(text_client: TestClient, body: dict, field: str) -> None:
    sid, auth = create(text_client)
    r = text_client.post(f"/v1/sessions/{sid}/objects/1/text", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(field)


def test_a_model_without_the_text_branch_answers_422(client: TestClient) -> None:
    assert client.get("/readyz").json()["prompt_kinds"] == ["box", "points"]
    sid, auth = create(client)
    r = client.post(f"/v1/sessions/{sid}/objects/1/text", json={"text": "liver"}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "text"
    assert client.app.state.services.manager.get(sid).state.objects == {}  # state untouched


def test_monai_label_uses_the_label_name_as_the_text_prompt(text_predictor, tmp_path) -> None:  # noqa: ANN001
    import json

    import numpy as np
    import SimpleITK as sitk

    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 9, (24, 64, 64)).astype(np.float32)),
                    str(path))
    app = create_app(test_settings(monailabel_enabled=True, monailabel_labels=["liver", "spleen"]),
                     predictor=text_predictor)
    with TestClient(app) as c:
        r = c.post("/infer/segvol_deepgrow", params={"output": "json"}, files={"file": ("volume.nrrd", path.read_bytes())},
                   data={"params": json.dumps({"foreground": [[30, 30, 12]], "label": "spleen"})})
        assert r.status_code == 200, r.text
        track = r.json()["segsvc"]["tracks"][0]
        manager = c.app.state.services.manager
        (sid,) = manager.session_ids()  # the facade's one session for the uploaded image
        session = manager.get(sid)
        assert session.state.objects[track["object_id"]].text == "spleen"
