"""The predictor's ``zoom_in="resample"`` path: the boxed ROI resampled to one frame, as training's ROI views.

Random compact weights: these tests check geometry, caching, undo and the train/run-time match, not quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.models import Predictor, PredictorConfig, SessionState, get_model_config
from app.models import geometry as geo
from app.models.build import build_predictor, resolve_inference
from app.models.preprocess import normalize_intensity
from app.models.weights import save_checkpoint
from training.sampler import roi_view

SHAPE = (30, 70, 60)
ROI_FRAME = (8, 32, 32)  # divisible by the compact strides (8, 16, 16)
BOX = (8, 20, 15, 19, 45, 40)


def _volume() -> np.ndarray:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[8:20, 20:46, 15:41] += 4.0
    return vol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    cfg = PredictorConfig(zoom_in="resample", roi_frame=ROI_FRAME, roi_margin=0.5, k=50)
    return build_predictor("compact", weights=None, predictor_config=cfg)


def _count_encodes(p: Predictor, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    encode = p.roi_backbone.encode

    def spy(image: torch.Tensor):  # type: ignore[no-untyped-def]
        seen.append(image.clone())
        return encode(image)

    monkeypatch.setattr(p.roi_backbone, "encode", spy)
    return seen


def _boxed(p: Predictor) -> SessionState:
    """A session on the test volume with object 1 started from ``BOX``."""
    st = p.init_state(_volume(), (2.0, 1.0, 1.0))
    p.add_box(st, 1, BOX)
    return st


def test_box_decodes_the_grown_box_once_and_clicks_reuse_the_cached_embedding(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_encodes(predictor, monkeypatch)
    st = _boxed(predictor)
    roi = geo.roi_bounds(BOX, 0.5, SHAPE)
    assert st.objects[1].roi == roi and len(seen) == 1 and tuple(seen[0].shape[2:]) == ROI_FRAME
    mask = predictor.get_mask(st, 1)
    outside = np.ones(SHAPE, bool)
    outside[geo.slices_of(roi)] = False
    assert not mask[outside].any()
    predictor.add_clicks(st, 1, [[12, 30, 25]], [1], mode="decoder")  # inside the ROI: same crop, cached
    assert len(seen) == 1 and st.objects[1].roi == roi


def test_a_click_outside_the_roi_grows_it_and_undo_restores_the_mask(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_encodes(predictor, monkeypatch)
    st = _boxed(predictor)
    before = predictor.get_mask(st, 1)
    predictor.add_clicks(st, 1, [[28, 66, 57]], [1], mode="both")
    grown = st.objects[1].roi
    assert grown is not None and grown[3:] == SHAPE  # the click ball reaches the far corner
    assert len(seen) == 2  # a new crop, a new embedding
    predictor.undo(st, 1)
    assert np.array_equal(predictor.get_mask(st, 1), before)


def test_the_encoder_sees_exactly_the_training_roi_view(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_encodes(predictor, monkeypatch)
    decoded: list[torch.Tensor | None] = []
    decode = predictor.roi_backbone.decode

    def spy(emb, boxes=None, points=None, point_labels=None, mask_logits=None):  # type: ignore[no-untyped-def]
        decoded.append(boxes)
        return decode(emb, boxes, points, point_labels, mask_logits)

    monkeypatch.setattr(predictor.roi_backbone, "decode", spy)
    vol = _volume()
    st = predictor.init_state(vol, (2.0, 1.0, 1.0))
    predictor.add_box(st, 1, BOX)
    mask = np.zeros(SHAPE, bool)
    mask[9:19, 22:44, 17:39] = True
    view = roi_view(normalize_intensity(vol), mask, BOX, ROI_FRAME, np.random.default_rng(0), (0.5, 0.5))
    assert view is not None and view.kind == "roi"
    np.testing.assert_allclose(seen[0][0, 0].numpy(), view.image, atol=1e-6)
    assert decoded[0] is not None and decoded[0][0].tolist() == view.box.tolist()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="zoom_in"):
        PredictorConfig(zoom_in="crop")
    with pytest.raises(ValueError, match="roi_frame"):
        PredictorConfig(roi_frame=(8, 0, 32))
    with pytest.raises(ValueError, match="roi_margin"):
        PredictorConfig(roi_margin=-0.1)
    base = build_predictor("compact", weights=None)
    with pytest.raises(ValueError, match="roi_frame"):  # a backbone set up for another frame
        Predictor(base.backbone, base.corrector, PredictorConfig(zoom_in="resample", roi_frame=ROI_FRAME))


def test_weights_trained_on_roi_views_run_resampled_unless_told_otherwise(tmp_path: Path) -> None:
    cfg = get_model_config("compact")
    base = build_predictor("compact", weights=None)
    path = tmp_path / "roi.pt"
    meta = {"inference": {"zoom_in": "resample", "roi_frame": list(ROI_FRAME)}}
    save_checkpoint(path, cfg.name, base.backbone, base.corrector, meta=meta)
    auto = build_predictor("compact", weights=path)
    assert auto.resample and auto.roi_frame == ROI_FRAME and tuple(auto.roi_backbone.frame) == ROI_FRAME
    told = build_predictor("compact", weights=path, predictor_config=PredictorConfig(zoom_in="windows"))
    assert not told.resample
    assert resolve_inference(None, {}).zoom_in == "windows"  # no metadata: SegVol's windows
    with pytest.raises(ValueError, match="inference"):
        resolve_inference(None, {"inference": "resample"})
