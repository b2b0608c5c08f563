"""SegVol's intensity normalisation and foreground crop."""

from __future__ import annotations

import numpy as np
import pytest

from app.models.preprocess import foreground_bounds, foreground_norm, normalize_intensity


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64, np.bool_])
def test_output_is_float32_in_unit_range(dtype) -> None:
    v = np.zeros((6, 7, 8), dtype=dtype)
    v[2:4] = 1
    out = normalize_intensity(v)
    assert out.dtype == np.float32 and out.shape == v.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_constant_volume_is_all_zero() -> None:
    assert not normalize_intensity(np.full((4, 4, 4), 7.0)).any()


def test_foreground_norm_clips_to_foreground_percentiles_and_zscores() -> None:
    rng = np.random.default_rng(0)
    v = np.full((20, 20, 20), -1000.0, np.float32)
    v[5:15, 5:15, 5:15] = rng.normal(50, 10, (10, 10, 10))
    v[10, 10, 10] = 1e6  # an outlier above the 99.95th foreground percentile is clipped
    fg = v[v > v.mean()]
    lo, hi = np.percentile(fg, [0.05, 99.95])
    out = foreground_norm(v)
    assert out.max() == pytest.approx((hi - fg.mean()) / fg.std(), rel=1e-4)
    assert out.min() == pytest.approx((lo - fg.mean()) / fg.std(), rel=1e-4)


def test_foreground_bounds_crop_the_minimum_valued_border() -> None:
    v = np.zeros((10, 12, 14), np.float32)
    v[2:5, 3:9, 4:6] = np.arange(1, 3 * 6 * 2 + 1).reshape(3, 6, 2)
    assert foreground_bounds(normalize_intensity(v)) == (2, 3, 4, 5, 9, 6)
    assert foreground_bounds(np.zeros((3, 4, 5), np.float32)) == (0, 0, 0, 3, 4, 5)
