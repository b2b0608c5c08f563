"""A synthetic CT to try the service on: ``python -m app sample-volume ct.nii.gz``.

A new user has no medical volume at hand, and the labelled cases we develop on are not part of the
package (several are licensed for evaluation only). This writes a small abdominal-looking CT in Hounsfield
units: air around an elliptic body of soft tissue, a vertebra behind, and one contrast-enhanced organ whose
voxel extent is ``ORGAN_BOX``. The README's SDK snippet prompts inside that box, so it works on this file as
written. Synthetic, deterministic (fixed seed), and free of any patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (48, 128, 128)
"""(D, H, W): small enough to upload and encode in seconds on a CPU."""
SPACING = (3.0, 1.5, 1.5)
"""(sz, sy, sx) mm, a typical abdominal CT slice thickness and in-plane spacing."""
ORGAN_CENTER = (24, 60, 72)
"""(z, y, x) voxel of the organ's centre: a click there is a foreground click."""
ORGAN_RADII = (10, 20, 24)
"""Semi-axes of the organ ellipsoid, voxels (z, y, x)."""
ORGAN_BOX = tuple(c - r for c, r in zip(ORGAN_CENTER, ORGAN_RADII, strict=True)) + tuple(
    c + r for c, r in zip(ORGAN_CENTER, ORGAN_RADII, strict=True)
)
"""Inclusive [z0, y0, x0, z1, y1, x1] voxel box around the organ."""
FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")
"""File name endings written (SimpleITK picks the writer from the ending; the server reads each)."""

_AIR_HU, _TISSUE_HU, _ORGAN_HU, _BONE_HU = -1000.0, 40.0, 160.0, 700.0
_NOISE_HU = 12.0
_SEED = 20260101


def sample_ct() -> np.ndarray:
    """The synthetic CT, int16 Hounsfield units, (D, H, W) = ``SHAPE``."""
    zz, yy, xx = np.indices(SHAPE, dtype=np.float32)
    height, width = SHAPE[1], SHAPE[2]
    ct = np.full(SHAPE, _AIR_HU, dtype=np.float32)
    body = ((yy - height / 2) / (0.42 * height)) ** 2 + ((xx - width / 2) / (0.47 * width)) ** 2 <= 1.0
    ct[body] = _TISSUE_HU
    organ = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), ORGAN_CENTER, ORGAN_RADII, strict=True)) <= 1.0
    ct[organ] = _ORGAN_HU
    vertebra = ((yy - 0.78 * height) / 9.0) ** 2 + ((xx - width / 2) / 9.0) ** 2 <= 1.0
    ct[vertebra] = _BONE_HU
    ct += np.random.default_rng(_SEED).normal(0.0, _NOISE_HU, SHAPE).astype(np.float32)
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


def write_sample_volume(path: str | Path) -> Path:
    """Write the synthetic CT to ``path`` (format from its ending, one of ``FORMATS``); returns the path."""
    out = Path(path)
    if not out.name.lower().endswith(FORMATS):
        raise ValueError(f"path: expected a name ending in one of {', '.join(FORMATS)}, got {out.name!r}")
    image = sitk.GetImageFromArray(sample_ct())
    image.SetSpacing(tuple(float(s) for s in reversed(SPACING)))  # SimpleITK wants (sx, sy, sz)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out), useCompression=True)
    return out
