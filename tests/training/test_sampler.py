from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig
from training.engine import DataEngine
from training.sampler import challenge_box, make_view, zoom_in_view, zoom_out_view

FRAME = (8, 32, 32)


def _object(shape=(20, 60, 70)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 0.9, size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[5:15, 10:50, 20:40] = True
    return image, mask


def _box_inside(box: np.ndarray, frame: tuple[int, int, int]) -> bool:
    return bool((box[:3] >= 0).all() and (box[3:] <= np.asarray(frame) - 1).all() and (box[3:] >= box[:3]).all())


def _mask_inside_box(mask: np.ndarray, box: np.ndarray) -> bool:
    idx = np.argwhere(mask)
    return bool((idx >= box[:3]).all() and (idx <= box[3:]).all())


def test_challenge_box_uses_the_mid_slice_extent() -> None:
    mask = np.zeros((10, 20, 20), bool)
    mask[2:8, 5:10, 5:10] = True
    mask[4, 2:15, 3:18] = True  # z_mid = median of {2..7} = 4.5 -> 4: the wide slice
    assert challenge_box(mask) == (2, 2, 3, 7, 14, 17)


def test_zoom_out_view_is_the_resized_foreground_with_the_box_around_the_object() -> None:
    image, mask = _object()
    view = zoom_out_view(image, mask, (5, 10, 20, 14, 49, 39), FRAME)
    assert view is not None and view.kind == "zoom_out"
    assert view.image.shape == FRAME and view.mask.shape == FRAME and view.mask.any()
    assert _box_inside(view.box, FRAME) and _mask_inside_box(view.mask, view.box)


def test_zoom_in_window_is_native_resolution() -> None:
    image, mask = _object()
    rng = np.random.default_rng(1)
    for _ in range(20):
        view = zoom_in_view(image, mask, (5, 10, 20, 14, 49, 39), FRAME, rng, 0.5)
        assert view.image.shape == FRAME and view.mask.any()
        assert _box_inside(view.box, FRAME) and _mask_inside_box(view.mask, view.box)
        # Native resolution: the window is a verbatim crop of the volume somewhere.
        z, y, x = np.argwhere(view.mask)[0]
        assert view.image[z, y, x] in image[mask]


def test_zoom_in_pads_small_volumes() -> None:
    image, mask = _object(shape=(6, 40, 40))
    mask[:] = False
    mask[1:5, 10:20, 10:20] = True
    view = zoom_in_view(image, mask, (1, 10, 10, 4, 19, 19), FRAME, np.random.default_rng(0), 1.0)
    assert view.image.shape == FRAME and (view.image[6:] == 0).all() and view.mask.sum() == mask.sum()


@pytest.mark.parametrize("seed", range(10))
def test_random_views_have_frame_shape_and_box_inside(seed: int) -> None:
    image, mask = _object()
    cfg = DataConfig(box_jitter=0.0, mid_slice_box_prob=0.0, flip_prob=0.5, zoom_out_prob=0.5)
    view = make_view(image, mask, FRAME, cfg, np.random.default_rng(seed))
    assert view.image.shape == FRAME and view.mask.shape == FRAME and view.image.dtype == np.float32
    assert _box_inside(view.box, FRAME) and _mask_inside_box(view.mask, view.box)  # flips move the box too


def test_engine_views_from_every_source(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    for source in ("labelled", "synthetic", "pseudo"):
        weights = {s: float(s == source) for s in ("labelled", "synthetic", "pseudo")}
        engine = DataEngine(DataConfig(root=str(data_root), source_weights=weights, pseudo_pool_size=2), rng)
        for _ in range(4):
            view, got = engine.sample(FRAME, rng)
            assert got == source and view.image.shape == FRAME and view.mask.any()
            assert _box_inside(view.box, FRAME)


def test_roi_view_is_the_grown_box_resampled_with_the_object_inside_the_box() -> None:
    from app.models import geometry as geo
    from training.sampler import roi_view

    image, mask = _object()
    box = (5, 10, 20, 14, 49, 39)
    view = roi_view(image, mask, box, FRAME, np.random.default_rng(0), (0.25, 0.25))
    assert view is not None and view.kind == "roi" and view.image.shape == FRAME
    # The box maps with the nearest-resize rule (``box_to_frame``) and the mask resamples trilinearly: they
    # agree to one frame voxel (the same rule in training and in the predictor, so the model learns it).
    slack = np.array([-1, -1, -1, 1, 1, 1], np.float32)
    assert _box_inside(view.box, FRAME) and _mask_inside_box(view.mask, view.box + slack)
    roi = geo.roi_bounds(box, 0.25, image.shape)
    assert roi == (2, 0, 14, 18, 60, 46)  # each side grown by round(0.25 * extent) + 1, clipped to the volume
    # The whole object is in view, at one scale: its share of the frame is its share of the ROI.
    assert view.mask.mean() == pytest.approx(mask[geo.slices_of(roi)].mean(), rel=0.25)


def test_roi_views_are_drawn_only_when_switched_on() -> None:
    image, mask = _object()
    on = DataConfig(roi_view_prob=1.0, mid_slice_box_prob=0.0)
    assert make_view(image, mask, FRAME, on, np.random.default_rng(0)).kind == "roi"
    # Off (the default): the random stream of older configs is unchanged, so the same draw as before.
    off = DataConfig(zoom_out_prob=0.0, mid_slice_box_prob=0.0)
    assert make_view(image, mask, FRAME, off, np.random.default_rng(0)).kind == "zoom_in"
