"""The synthetic CT-like volume the simulated annotators upload, with the ground truth of every object.

One volume per run: an elliptic body in air, a few ellipsoidal blobs inside it (some brighter than the body,
some darker) and Gaussian noise, stored as int16 HU. Each blob is one object an annotator segments; its
ellipsoid is the truth the clicks are chosen against. Written as NIfTI with SimpleITK, the reader the server
uses, so voxel order and spacing round-trip exactly: arrays are (z, y, x), SimpleITK spacing is (x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SHAPE = (64, 192, 192)
DEFAULT_SPACING_ZYX = (2.5, 0.8, 0.8)


@dataclass(frozen=True)
class Blob:
    """One object: its truth mask (D, H, W) bool and its inclusive bounding box [z0, y0, x0, z1, y1, x1]."""

    truth: np.ndarray
    bbox: tuple[int, int, int, int, int, int]
    bright: bool


@dataclass(frozen=True)
class Workload:
    volume: np.ndarray
    spacing_zyx: tuple[float, float, float]
    blobs: list[Blob]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return (int(idx[0][0]), int(idx[1][0]), int(idx[2][0]), int(idx[0][-1]), int(idx[1][-1]), int(idx[2][-1]))


def synthetic_workload(shape: tuple[int, int, int] = DEFAULT_SHAPE, n_blobs: int = 6, seed: int = 0,
                       spacing_zyx: tuple[float, float, float] = DEFAULT_SPACING_ZYX) -> Workload:
    """A body with ``n_blobs`` non-overlapping ellipsoids (organ/lesion-sized, alternately bright and dark)."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij", sparse=True)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 < 1
    vol[np.broadcast_to(body, shape)] = 40.0
    occupied = np.zeros(shape, dtype=bool)
    blobs: list[Blob] = []
    for _ in range(500):
        if len(blobs) == n_blobs:
            break
        radii = np.array([rng.uniform(0.08, 0.16) * d, rng.uniform(0.05, 0.10) * h, rng.uniform(0.05, 0.10) * w])
        # Blob centres stay inside the body, away from its rim.
        centre = np.array([rng.uniform(radii[0] + 2, d - radii[0] - 2),
                           h / 2 + rng.uniform(-0.25, 0.25) * h, w / 2 + rng.uniform(-0.28, 0.28) * w])
        mask = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2) < 1
        margin = np.zeros(shape, dtype=bool)
        z0, y0, x0, z1, y1, x1 = _bbox(mask)
        margin[max(z0 - 2, 0):z1 + 3, max(y0 - 4, 0):y1 + 5, max(x0 - 4, 0):x1 + 5] = True
        if (margin & occupied).any() or not (mask & np.broadcast_to(body, shape)).sum() == mask.sum():
            continue
        occupied |= margin
        bright = len(blobs) % 2 == 0
        vol[mask] = rng.uniform(150.0, 250.0) if bright else rng.uniform(-120.0, -60.0)
        blobs.append(Blob(truth=mask, bbox=_bbox(mask), bright=bright))
    if len(blobs) < n_blobs:
        raise ValueError(f"n_blobs: could place only {len(blobs)} of {n_blobs} blobs in a volume of shape {shape}")
    vol += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return Workload(volume=np.clip(vol, -1024, 3071).astype(np.int16), spacing_zyx=spacing_zyx, blobs=blobs)


def write_nifti(workload: Workload, path: Path) -> Path:
    """Write the volume as ``.nii.gz`` (SimpleITK: spacing in (x, y, z) order)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(workload.volume)
    sz, sy, sx = workload.spacing_zyx
    image.SetSpacing((float(sx), float(sy), float(sz)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path
