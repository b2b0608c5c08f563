"""nnInteractive's remote protocol driven by the real ``nninteractive-client`` 2.6 against a real server process.

Mechanics run on the tiny random model; the acceptance run segments the lung lesion of the dev case
``pyradiomics_lung1`` with the shipped ``compact`` model through box, points, scribble, lasso and undo.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.config import hash_api_key
from tests.e2e.conftest import Server

remote = pytest.importorskip("nnInteractive.inference.remote")
RemoteSession = remote.nnInteractiveRemoteInferenceSession
SessionExpiredError = remote.SessionExpiredError
ServerAtCapacityError = remote.ServerAtCapacityError

pytestmark = pytest.mark.e2e

KEY = "nninteractive-test-key"
SHAPE = (24, 64, 64)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LUNG_CASE = DATA / "dev" / "pyradiomics_lung1" / "case.npz"


def _image() -> np.ndarray:
    rng = np.random.RandomState(0)
    img = rng.normal(0, 1, size=(1, *SHAPE)).astype(np.float32)
    img[0, 8:16, 20:40, 20:40] += 4.0
    return img


@pytest.fixture(scope="module")
def nni_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--nninteractive", "--no-warmup", "--max-sessions", "4")


@pytest.fixture(scope="module")
def strict_server(server_factory: Callable[..., Server]) -> Server:
    """One slot, a 2 s liveness clock and an API key: capacity, expiry and auth."""
    return server_factory("--nninteractive", "--no-warmup", "--max-sessions", "1",
                          "--nninteractive-liveness-timeout", "2", "--api-key-hash", hash_api_key(KEY))


@pytest.fixture
def session(nni_server: Server):  # noqa: ANN201 - the client's class
    s = RemoteSession(nni_server.url + "/nninteractive")
    s.set_image(_image(), {"spacing": [2.0, 1.0, 1.0]})
    s.set_target_buffer(np.zeros(SHAPE, np.uint8))
    yield s
    s.close()


def test_claim_capabilities_and_image(nni_server: Server) -> None:
    with RemoteSession(nni_server.url + "/nninteractive") as s:
        assert s.supported_interactions == {"scribble": True, "lasso": True, "points": True, "bbox2d": True,
                                            "bbox3d": True}
        assert s.supports_undo and s.liveness_timeout_seconds > 0 and s.ping()
        s.set_target_buffer(np.zeros(SHAPE, np.uint16))  # before the image is fine, as in nnInteractive
        s.set_image(_image(), {"spacing": [2.0, 1.0, 1.0]})
        assert s.original_image_shape == (1, *SHAPE)
        assert s.add_bbox_interaction([[8, 16], [20, 40], [20, 40]], True) is not None
        assert s.target_buffer.dtype == np.uint16 and s.target_buffer.any()
        with pytest.raises(httpx.HTTPStatusError) as info:  # two channels: our model reads one
            s.set_image(np.zeros((2, *SHAPE), np.float32))
        assert info.value.response.json()["error"]["field"] == "image"


def test_every_interaction_writes_the_server_mask_into_the_buffer(session) -> None:  # noqa: ANN001
    buf = session.target_buffer
    bbox = session.add_bbox_interaction([[8, 16], [20, 40], [20, 40]], include_interaction=True)
    assert bbox is not None and buf.any()
    session.add_point_interaction([12, 30, 30], include_interaction=True)
    scribble = np.zeros(SHAPE, np.uint8)
    scribble[12, 22:38, 30] = 1
    session.add_scribble_interaction(scribble, include_interaction=True)
    assert buf[12, 22:38, 30].all()  # the scribbled voxels end foreground
    lasso = np.zeros((1, 6, 6), np.uint8)
    lasso[0, 1:5, 1:5] = 1  # a filled 4 x 4 lasso, sent cropped to its interaction_bbox
    session.add_lasso_interaction(lasso, include_interaction=False, interaction_bbox=[[10, 11], [24, 30], [24, 30]])
    assert not buf[10, 25:29, 25:29].any()  # a negative lasso empties its region
    before = buf.copy()
    session.add_point_interaction([12, 30, 30], include_interaction=False)
    assert not np.array_equal(buf, before)
    assert session.undo() is True
    assert np.array_equal(buf, before)  # undo restores the buffer exactly


def test_queued_interactions_run_at_predict(session) -> None:  # noqa: ANN001
    buf = session.target_buffer
    assert session.add_bbox_interaction([[8, 16], [20, 40], [20, 40]], True, run_prediction=False) is None
    assert not buf.any()
    assert session._predict() is not None and buf.any()
    assert session._predict() is None  # nothing queued: nothing ran


def test_undo_of_a_two_step_point_and_reset(session) -> None:  # noqa: ANN001
    buf = session.target_buffer
    session.add_point_interaction([12, 30, 30], include_interaction=True)  # box from the click, then the click
    assert buf.any()
    assert session.undo() is True
    assert not buf.any()  # one undo reverts the whole interaction
    assert session.undo() is False  # nothing left
    session.add_bbox_interaction([[12, 13], [20, 40], [20, 40]], include_interaction=True)  # a 2D box
    assert buf[12].any()
    session.reset_interactions()
    assert not buf.any()
    assert session.undo() is True and buf.any()  # the reset is undoable


def test_initial_segmentation(session) -> None:  # noqa: ANN001
    seg = np.zeros(SHAPE, np.uint8)
    seg[10:14, 25:35, 25:35] = 1
    session.add_initial_seg_interaction(seg)
    assert np.array_equal(session.target_buffer, seg)
    session.add_point_interaction([12, 30, 30], include_interaction=False)
    assert session.undo() and np.array_equal(session.target_buffer, seg)


def test_bad_payloads_are_refused_and_change_nothing(session) -> None:  # noqa: ANN001
    buf = session.target_buffer
    session.add_bbox_interaction([[8, 16], [20, 40], [20, 40]], include_interaction=True)
    before = buf.copy()
    with pytest.raises(httpx.HTTPStatusError) as info:
        session.add_scribble_interaction(np.ones((3, 3, 3), np.uint8), True)  # not the image's shape
    assert info.value.response.status_code == 422 and info.value.response.json()["error"]["field"] == "mask"
    with pytest.raises(httpx.HTTPStatusError) as info:
        session.add_point_interaction([99, 0, 0], True)
    assert info.value.response.json()["error"]["field"] == "coordinates"
    with pytest.raises(httpx.HTTPStatusError):
        session.add_bbox_interaction([[5, 5], [0, 10], [0, 10]], True)  # zero extent
    r = session._http.post("/add_scribble_interaction", content=b"NNIA garbage",
                           headers={"X-Meta": "{not json", "Content-Type": "application/octet-stream"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "X-Meta"
    assert np.array_equal(buf, before)
    session.undo()
    assert not buf.any()  # the undo stack holds only the box: the refused calls left no trace


def test_released_lease_is_gone(nni_server: Server) -> None:
    s = RemoteSession(nni_server.url + "/nninteractive")
    token = s._lease_token
    s.close()
    r = httpx.post(nni_server.url + "/nninteractive/heartbeat", headers={"X-Lease-Token": token})
    assert r.status_code == 410
    other = RemoteSession(nni_server.url + "/nninteractive")
    httpx.post(nni_server.url + "/nninteractive/release", headers={"X-Lease-Token": other._lease_token})
    with pytest.raises(SessionExpiredError):
        other.heartbeat()  # the client's own call sees its lease gone
    other.close()


def test_disabled_server_has_no_protocol(server: Server) -> None:
    assert httpx.post(server.url + "/nninteractive/claim").status_code == 404


def test_auth_capacity_and_liveness(strict_server: Server) -> None:
    url = strict_server.url + "/nninteractive"
    r = httpx.post(url + "/claim")
    assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
    assert httpx.post(url + "/claim", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/healthz").status_code == 200  # open, like /healthz
    first = RemoteSession(url, api_key=KEY)
    with pytest.raises(ServerAtCapacityError):
        RemoteSession(url, api_key=KEY)
    r = httpx.post(url + "/claim", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    first.close()
    # A lease nobody keeps alive (raw HTTP: the client's heartbeat thread would) is reaped after 2 s.
    auth = {"Authorization": f"Bearer {KEY}"}
    token = httpx.post(url + "/claim", headers=auth).json()["lease_token"]
    lease = {**auth, "X-Lease-Token": token}
    assert httpx.post(url + "/heartbeat", headers=lease).json()["remaining_seconds"] > 0
    time.sleep(3.0)
    assert httpx.post(url + "/heartbeat", headers=lease).status_code == 410
    second = RemoteSession(url, api_key=KEY)  # the slot is free again
    second.close()


# --- acceptance: a real lung lesion with the shipped model ---------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def compact_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--nninteractive", "--max-sessions", "2", model_flags=())


@pytest.mark.slow
def test_lung_lesion_box_points_scribble_lasso_undo(compact_server: Server) -> None:
    if not LUNG_CASE.exists():
        pytest.skip(f"no {LUNG_CASE}")
    case = np.load(LUNG_CASE)
    image, gt, spacing = case["imgs"], case["gts"] > 0, case["spacing"]
    zs, ys, xs = np.nonzero(gt)
    box = [[int(v.min()), int(v.max()) + 1] for v in (zs, ys, xs)]
    mid = int(np.median(zs))
    centre = [mid, int(np.median(ys[zs == mid])), int(np.median(xs[zs == mid]))]
    dsc: dict[str, float] = {}
    with RemoteSession(compact_server.url + "/nninteractive", read_timeout=300) as s:
        s.set_image(image[None], {"spacing": [float(v) for v in spacing]})
        buf = np.zeros(gt.shape, np.uint8)
        s.set_target_buffer(buf)
        s.add_bbox_interaction(box, include_interaction=True)
        dsc["box"] = _dice(buf, gt)
        s.add_point_interaction(centre, include_interaction=True)
        dsc["point"] = _dice(buf, gt)
        # A scribble along the lesion's middle row on its middle slice.
        scribble = np.zeros(gt.shape, np.uint8)
        scribble[mid, centre[1], :] = gt[mid, centre[1], :]
        s.add_scribble_interaction(scribble, include_interaction=True)
        dsc["scribble"] = _dice(buf, gt)
        # A wrong negative point in the lesion, undone.
        kept = buf.copy()
        s.add_point_interaction(centre, include_interaction=False)
        assert s.undo() is True and np.array_equal(buf, kept)
        # A lasso around the lesion on its middle slice (the outline an annotator draws, filled).
        (y0, y1), (x0, x1) = [(int(v.min()), int(v.max()) + 1) for v in np.nonzero(gt[mid])]
        s.add_lasso_interaction(gt[mid:mid + 1, y0:y1, x0:x1].astype(np.uint8), include_interaction=True,
                                interaction_bbox=[[mid, mid + 1], [y0, y1], [x0, x1]])
        dsc["lasso"] = _dice(buf, gt)
        # A negative point in the lung next to the lesion, as an annotator trims a leak.
        outside = np.argwhere(buf.astype(bool) & ~gt)
        if len(outside):
            s.add_point_interaction([int(v) for v in outside[len(outside) // 2]], include_interaction=False)
        dsc["final"] = _dice(buf, gt)
    print("pyradiomics_lung1 DSC per interaction:", json.dumps({k: round(v, 4) for k, v in dsc.items()}))
    assert dsc["final"] >= 0.80, dsc
