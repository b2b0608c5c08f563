"""Intensity normalisation and foreground crop, as SegVol's inference pipeline does it.

SegVol: ForegroundNorm (threshold = volume mean; clip to the 0.05 / 99.95 percentiles of the voxels above it;
z-score with the mean/std of those voxels, taken before clipping as the reference code does) -> min-max to
[0, 1] -> crop the foreground (voxels > 0 after min-max; MONAI's CropForeground default).

ForegroundNorm is written here because MONAI has no transform with this exact statistic (its
``NormalizeIntensity(nonzero=True)`` thresholds at 0, not at the mean, and does not clip); min-max uses MONAI's
``ScaleIntensity`` and the crop box MONAI's ``generate_spatial_bounding_box``.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import ScaleIntensity
from monai.transforms.utils import generate_spatial_bounding_box

from app.coordinates import Bounds


def foreground_norm(volume: np.ndarray) -> np.ndarray:
    """SegVol's ForegroundNormalization. (D, H, W) any real dtype -> (D, H, W) float32, z-scored."""
    v = np.asarray(volume, dtype=np.float32)
    flat = v.reshape(-1)
    fg = flat[flat > flat.mean()]
    if fg.size == 0:  # constant volume: nothing is above the mean
        return np.zeros_like(v)
    lower, upper = (float(q) for q in np.percentile(fg, [0.05, 99.95]))  # python floats keep float32
    mean, std = float(fg.mean()), float(fg.std())
    out = np.clip(v, lower, upper)
    out -= mean
    out /= max(std, 1e-8)
    return out


def normalize_intensity(volume: np.ndarray) -> np.ndarray:
    """ForegroundNorm then min-max to [0, 1]. (D, H, W) -> (D, H, W) float32 in [0, 1]."""
    z = foreground_norm(volume)
    if float(z.max()) <= float(z.min()):
        return np.zeros(z.shape, dtype=np.float32)
    scaled = ScaleIntensity(minv=0.0, maxv=1.0)(torch.from_numpy(z)[None])
    return np.asarray(scaled[0], dtype=np.float32)


def foreground_bounds(normalized: np.ndarray) -> Bounds:
    """Half-open bounds of the voxels > 0 of a min-max normalised volume; the whole volume when none."""
    start, end = generate_spatial_bounding_box(normalized[None], select_fn=lambda x: x > 0)
    if any(e <= s for s, e in zip(start, end, strict=True)):
        d, h, w = normalized.shape
        return (0, 0, 0, d, h, w)
    return (int(start[0]), int(start[1]), int(start[2]), int(end[0]), int(end[1]), int(end[2]))


def resample_to_frame(array: torch.Tensor, frame: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize (align_corners=False) of a (d, h, w) float tensor to ``frame``.

    The one resampling of the ROI view: the predictor's ``zoom_in="resample"`` path and the training's ROI
    views both call it, so the model sees at run time exactly the interpolation it was trained on.
    """
    if tuple(array.shape) == tuple(frame):
        return array
    out = torch.nn.functional.interpolate(array[None, None].float(), size=tuple(frame), mode="trilinear",
                                          align_corners=False)
    return out[0, 0]
