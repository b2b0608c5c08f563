"""Labels over the MONAI Label routes: ``label_names`` maps every label, deepgrow-style replies use value 1,
each label keeps its own state when the viewer switches labels, background-only and empty click sets are
answered as upstream answers them, and unknown labels / fractional clicks are refused (issue 18, item 14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.dicomweb.test_monailabel_access import make_client

LABELS = ["liver", "lesion"]
SHAPE = (10, 24, 32)  # (D, H, W)


@pytest.fixture
def client(service_predictor, tmp_path) -> Iterator[tuple[TestClient, str]]:  # noqa: ANN001
    import SimpleITK as sitk

    array = np.random.default_rng(3).normal(0, 9, SHAPE).astype(np.float32)
    array[2:8, 4:20, 6:26] += 300
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with make_client(service_predictor, monailabel_enabled=True, monailabel_labels=LABELS) as c:
        r = c.put("/session/", files=[("files", ("volume.nrrd", path.read_bytes()))])
        assert r.status_code == 200, r.text
        yield c, r.json()["session_id"]


def infer(c: TestClient, session_id: str, model: str, params: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"/infer/{model}", params={"session_id": session_id, "output": "json"},
               data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def labelmap(c: TestClient, session_id: str, model: str, params: dict[str, Any]) -> np.ndarray:
    import SimpleITK as sitk

    from tests.dicomweb.helpers import read_label_image

    r = c.post(f"/infer/{model}", params={"session_id": session_id, "output": "image"},
               data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    return sitk.GetArrayFromImage(read_label_image(r.content))


def tracks(reply: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {t["label"]: (t["action"], t["version"]) for t in reply["segsvc"]["tracks"]}


def test_deepgrow_answers_its_label_as_value_1(client: tuple[TestClient, str]) -> None:
    c, sid = client
    params = {"label": "lesion", "foreground": [[15, 10, 4]], "background": []}
    reply = infer(c, sid, "segvol_deepgrow", params)
    assert reply["label_names"] == {"background": 0, "lesion": 1}
    values = set(np.unique(labelmap(c, sid, "segvol_deepgrow", params)).tolist())
    assert values <= {0, 1} and 1 in values  # lesion is the second label, yet 1 as deepgrow clients expect


def test_deepedit_label_names_map_every_label_even_without_clicks(client: tuple[TestClient, str]) -> None:
    c, sid = client
    params = {"lesion": [[15, 10, 4]], "background": [], "label": "lesion"}
    reply = infer(c, sid, "segvol", params)
    assert reply["label_names"] == {"background": 0, "liver": 1, "lesion": 2}
    values = set(np.unique(labelmap(c, sid, "segvol", params)).tolist())
    assert values <= {0, 2} and 2 in values  # lesion's voxels carry lesion's value, not the first label's


def test_switching_labels_keeps_each_labels_state(client: tuple[TestClient, str]) -> None:
    c, sid = client
    liver = [[15, 10, 4]]
    lesion = [[20, 12, 5]]
    first = tracks(infer(c, sid, "segvol_deepgrow", {"label": "liver", "foreground": liver}))
    assert first["liver"][0] == "created"
    other = tracks(infer(c, sid, "segvol_deepgrow", {"label": "lesion", "foreground": lesion}))
    assert other["lesion"][0] == "created"
    # Back to liver with one more click: only the new click runs, liver's work was not replayed or lost.
    back = tracks(infer(c, sid, "segvol_deepgrow", {"label": "liver", "foreground": [*liver, [16, 11, 4]]}))
    assert back["liver"] == ("incremental", first["liver"][1] + 1)
    # And lesion, with the same clicks as before, is unchanged (same version).
    again = tracks(infer(c, sid, "segvol_deepgrow", {"label": "lesion", "foreground": lesion}))
    assert again["lesion"] == ("unchanged", other["lesion"][1])


def test_background_only_and_empty_click_sets_are_answered(client: tuple[TestClient, str]) -> None:
    c, sid = client
    # Background clicks alone on a new label outline nothing: an empty result, not an error.
    reply = infer(c, sid, "segvol_deepgrow", {"label": "liver", "foreground": [], "background": [[1, 1, 1]]})
    assert reply["segsvc"]["tracks"] == [] and reply["centroids"] == {}
    assert labelmap(c, sid, "segvol_deepgrow", {"label": "liver", "foreground": []}).max() == 0
    # deepedit with no click at all (upstream: automatic mode) answers every label, as they are.
    infer(c, sid, "segvol", {"lesion": [[15, 10, 4]], "background": []})
    reply = infer(c, sid, "segvol", {"background": []})
    assert reply["label_names"] == {"background": 0, "liver": 1, "lesion": 2} and "lesion" in reply["centroids"]
    # A label whose clicks the viewer removed is cleared.
    reply = infer(c, sid, "segvol", {"lesion": [], "background": []})
    assert tracks(reply)["lesion"][0] == "cleared" and reply["centroids"] == {}


@pytest.mark.parametrize("params", [{"label": "kidney", "foreground": [[1, 1, 1]]},
                                    {"kidney": [[1, 1, 1]], "label": "kidney"}])
def test_an_unknown_label_is_422_naming_params_label(client: tuple[TestClient, str], params: dict) -> None:
    c, sid = client
    model = "segvol_deepgrow" if "foreground" in params else "segvol"
    r = c.post(f"/infer/{model}", params={"session_id": sid}, data={"params": json.dumps(params)})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "params.label" and "kidney" in error["message"]


def test_a_fractional_click_is_422_not_rounded(client: tuple[TestClient, str]) -> None:
    c, sid = client
    r = c.post("/infer/segvol_deepgrow", params={"session_id": sid},
               data={"params": json.dumps({"label": "liver", "foreground": [[15.5, 10, 4]]})})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "params.foreground" and "whole voxel" in error["message"]
    reply = infer(c, sid, "segvol_deepgrow", {"label": "liver", "foreground": [[15, 10, 4]]})
    assert tracks(reply)["liver"][0] == "created"  # the refused call left nothing behind


def test_deepgrow_without_a_label_keeps_each_viewer_labels_object(client: tuple[TestClient, str]) -> None:
    """OHIF's deepgrow sends no label: switching labels in the viewer sends another label's clicks. Each first
    foreground click keeps its own object, so a switch neither replays nor overwrites the other's work."""
    c, sid = client
    liver, lesion = [[15, 10, 4]], [[22, 14, 6]]
    first = tracks(infer(c, sid, "segvol_deepgrow", {"foreground": liver, "background": []}))
    other = infer(c, sid, "segvol_deepgrow", {"foreground": lesion, "background": []})
    assert list(tracks(other).values())[0][0] == "created"  # a new object, not a replay of the first
    assert other["label_names"] == {"background": 0, "liver": 1}  # no label sent: the first label's name
    assert set(other["centroids"]) <= {"liver"}
    back = tracks(infer(c, sid, "segvol_deepgrow", {"foreground": [*liver, [16, 11, 4]], "background": []}))
    (key, (action, version)), = back.items()
    assert key in first and action == "incremental" and version == first[key][1] + 1
    empty = infer(c, sid, "segvol_deepgrow", {"foreground": [], "background": [[1, 1, 1]]})
    assert empty["segsvc"]["tracks"] == []  # nothing outlined, no object touched
