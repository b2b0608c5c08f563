"""The rules of SegVol's inference that the parity fixtures do not reach (``app.models.segvol_inference``).

The fixtures' random checkpoint predicts scattered voxels, so there the region is the whole crop and every
window holds zoom-out foreground. These tests pin the other cases on small inputs: a region smaller than the
crop, windows without foreground, the single-window box, the point draws, and the resampling rules against
PyTorch's and MONAI's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from torch.nn import functional as F

from app.models.segvol_inference import (
    NO_BOX,
    NO_POINT,
    _RoiGrid,
    _select_points,
    _window_prompt,
    foreground_region,
    frame_box,
    frame_points,
    window_starts,
)

FRAME = (32, 256, 256)


@pytest.mark.parametrize("size", [(112, 97, 122), (300, 512, 512), (20, 255, 257), (32, 256, 256)])
def test_legacy_nearest_gather_is_pytorchs_interpolate(size: tuple[int, int, int]) -> None:
    frame = (8, 16, 16)
    values = torch.randn(frame, generator=torch.Generator().manual_seed(0))
    grid = _RoiGrid.of(size, frame)
    expected = F.interpolate(values[None, None], size=size, mode="nearest")[0, 0]
    assert torch.equal(grid.gather(values, (0, 0, 0, *size)), expected)
    part = (3, 5, 7, size[0] - 2, size[1] - 1, size[2] - 4)
    assert torch.equal(grid.gather(values, part), expected[3 : size[0] - 2, 5 : size[1] - 1, 7 : size[2] - 4])


@pytest.mark.parametrize("size", [16, 17, 31, 32, 33, 97, 112, 255, 256, 257, 300, 512])
def test_window_starts_are_monai_dense_patch_slices(size: int) -> None:
    window = 32 if size < 128 else 256
    padded = max(size, window)
    interval = window if padded == window else window // 2  # MONAI 0.9.0 _get_scan_interval, overlap 0.5
    expected = [s[0].start for s in dense_patch_slices((padded,), (window,), (interval,))]
    assert window_starts(padded, window, 0.5) == expected


def test_frame_box_is_the_extent_of_the_nearest_exact_cube() -> None:
    crop = (0, 0, 0, 112, 97, 122)
    box = (66, 29, 70, 101, 54, 93)
    cube = torch.zeros(crop[3:])
    cube[66:102, 29:55, 70:94] = 1
    resized = F.interpolate(cube[None, None], size=FRAME, mode="nearest-exact")[0, 0]
    idx = torch.nonzero(resized)
    expected = (*idx.min(dim=0).values.tolist(), *idx.max(dim=0).values.tolist())
    assert frame_box(box, crop, FRAME) == tuple(float(v) for v in expected) == (19.0, 77.0, 147.0, 28.0, 144.0, 196.0)


def test_a_box_thinner_than_the_sampling_takes_the_nearest_frame_voxel() -> None:
    crop = (0, 0, 0, 300, 64, 64)  # 300 slices onto 32: most slices are read by no frame voxel
    src = F.interpolate(torch.arange(300.0)[None, None], size=32, mode="nearest-exact")[0, 0].long()
    unread = next(z for z in range(300) if z not in set(src.tolist()))
    got = frame_box((unread, 10, 10, unread, 20, 20), crop, FRAME)
    assert got[0] == got[3]
    assert abs(int(src[int(got[0])]) - unread) == int((src - unread).abs().min())


def test_user_points_map_to_the_frame_voxel_whose_block_holds_them() -> None:
    crop = (0, 4, 0, 112, 101, 122)
    pts = np.array([[83, 44, 83], [0, 4, 0], [111, 100, 121], [200, 0, 500]])
    fp = frame_points(pts, crop, FRAME)
    assert fp[0].tolist() == [23.0, 105.0, 174.0]  # the fixtures' ras-point case, shifted by the crop
    assert fp[3].tolist() == fp[2].tolist()[:1] + [0.0] + fp[2].tolist()[2:]  # outside: clamped to the crop first
    grid = _RoiGrid.of((112, 97, 122), FRAME)
    for p, f in zip(pts[:3], fp[:3], strict=True):
        q = p - np.array(crop[:3])
        assert all(int(grid.source[a][q[a]]) == int(f[a]) for a in range(3))


def test_region_is_the_foreground_box_grown_to_a_window_and_clipped_to_the_crop() -> None:
    size = (112, 97, 300)
    grid = _RoiGrid.of(size, FRAME)
    fg = torch.zeros(FRAME, dtype=torch.bool)
    fg[10:12, 100:110, 250:256] = True  # near the far x edge
    region = foreground_region(grid, fg, FRAME)
    assert region is not None
    roi_fg = F.interpolate(fg[None, None].float(), size=size, mode="nearest")[0, 0] > 0
    idx = torch.nonzero(roi_fg)
    lo, hi = idx.min(dim=0).values.tolist(), idx.max(dim=0).values.tolist()
    for ax in range(3):
        pad = max(0, FRAME[ax] - (hi[ax] - lo[ax] + 1))
        assert region[ax] == max(0, lo[ax] - pad // 2)
        assert region[ax + 3] == min(size[ax], hi[ax] + pad // 2 + 1)
    assert region[5] == 300  # clipped at the crop's end
    assert region[3] - region[0] < size[0]  # smaller than the crop along z
    assert foreground_region(grid, torch.zeros(FRAME, dtype=torch.bool), FRAME) is None


def _fg(shape: tuple[int, int, int], box: tuple[int, ...]) -> torch.Tensor:
    fg = torch.zeros(shape, dtype=torch.bool)
    fg[box[0] : box[3], box[1] : box[4], box[2] : box[5]] = True
    return fg


def test_one_window_box_prompt_is_the_unpadded_cube_box() -> None:
    rsize = (20, 97, 256)  # padded to one window: 6 slices before along z, 79 rows along y
    fg = _fg(rsize, (0, 0, 0, 20, 97, 256))
    inner = tuple(slice(0, r) for r in rsize)
    in_win = (slice(6, 26), slice(79, 176), slice(0, 256))
    cube = (2.0, 10.0, 30.0, 9.0, 50.0, 90.0)
    box, pts, labs = _window_prompt(True, False, True, cube, fg, inner, in_win, (0, 0, 0), FRAME,
                                    np.zeros((0, 3), np.int64), np.zeros((0, 3)))
    assert box == cube and pts is None and labs is None  # not shifted by the padding, as in the reference
    assert _window_prompt(True, False, True, None, fg, inner, in_win, (0, 0, 0), FRAME,
                          np.zeros((0, 3), np.int64), np.zeros((0, 3)))[0] == NO_BOX


def test_several_windows_box_prompt_is_the_foreground_box_or_none() -> None:
    rsize = (64, 97, 256)
    fg = _fg(rsize, (40, 10, 20, 50, 30, 40))
    args = (np.zeros((0, 3), np.int64), np.zeros((0, 3)))
    # window 0 covers region z 0..31: no foreground
    box0 = _window_prompt(True, False, False, None, fg, (slice(0, 32), slice(0, 97), slice(0, 256)),
                          (slice(0, 32), slice(79, 176), slice(0, 256)), (0, 0, 0), FRAME, *args)[0]
    assert box0 == NO_BOX
    # window at z 32..63: the foreground's box in padded window coordinates (rows shifted by 79)
    box1 = _window_prompt(True, False, False, None, fg, (slice(32, 64), slice(0, 97), slice(0, 256)),
                          (slice(0, 32), slice(79, 176), slice(0, 256)), (32, 0, 0), FRAME, *args)[0]
    assert box1 == (8.0, 89.0, 20.0, 17.0, 108.0, 39.0)


def test_point_branch_passes_the_block_in_unpadded_coordinates_and_the_foreground_box() -> None:
    rsize = (64, 97, 256)
    fg = _fg(rsize, (40, 10, 20, 50, 30, 40))
    positives = np.array([[41, 20, 30], [42, 20, 30], [43, 20, 30]])
    anchors = np.array([[43.0, 20.0, 30.0]])
    box, pts, labs = _window_prompt(False, True, False, None, fg, (slice(32, 64), slice(0, 97), slice(0, 256)),
                                    (slice(0, 32), slice(79, 176), slice(0, 256)), (32, 0, 0), FRAME,
                                    positives, anchors)
    assert box == (8.0, 89.0, 20.0, 17.0, 108.0, 39.0)
    assert pts[0] == (11.0, 20.0, 30.0)  # the drawn one: nearest the click; y not shifted by the padding
    assert sorted(pts) == sorted([(11.0, 20.0, 30.0), (9.0, 20.0, 30.0), (10.0, 20.0, 30.0), (11.0, 20.0, 30.0),
                                  NO_POINT])
    assert labs == [1.0, 1.0, 1.0, 1.0, -1.0]
    # a window without positives: one "no point"
    _, pts0, labs0 = _window_prompt(False, True, False, None, fg, (slice(0, 32), slice(0, 97), slice(0, 256)),
                                    (slice(0, 32), slice(79, 176), slice(0, 256)), (0, 0, 0), FRAME,
                                    positives[:0], anchors)
    assert pts0 == [NO_POINT] and labs0 == [-1.0]


def test_point_draw_takes_the_positives_nearest_the_clicks_when_there_are_more_than_four() -> None:
    positives = np.array([[z, 5, 5] for z in range(10)])
    pts, labs = _select_points(positives, np.array([[7.0, 5.0, 5.0]]))
    # the drawn one, then the 4 nearest (ties in index order): no padding needed
    assert [p[0] for p in pts] == [7.0, 7.0, 6.0, 8.0, 5.0]
    assert labs == [1.0] * 5


def test_segvol_base_runs_segvols_inference_unless_the_weights_say_otherwise() -> None:
    from app.models import PredictorConfig, get_model_config
    from app.models.build import resolve_inference

    default = get_model_config("segvol-base").default_zoom_in
    assert default == "segvol" and get_model_config("compact").default_zoom_in == "windows"
    assert resolve_inference(None, {}, default=default).zoom_in == "segvol"
    assert resolve_inference(None, {"inference": {"zoom_in": "resample"}}, default=default).zoom_in == "resample"
    assert resolve_inference(PredictorConfig(zoom_in="windows"), {}, default=default).zoom_in == "windows"
