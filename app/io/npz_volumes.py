"""CVPR 2025 challenge ``.npz`` volumes (keys ``imgs`` and ``spacing``) and npz masks; the spacing order rule
is in ``app.io.volumes``' docstring.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from app.io.volume_checks import validated
from app.io.volume_types import (
    IDENTITY_DIRECTION,
    LoadedVolume,
    SpacingOrder,
    VolumeLimits,
    VolumeTooLargeError,
)

_NPZ_MODALITY_PREFIXES = ("CT", "MR", "PET", "US", "Microscopy", "Microscope", "XRay", "Endoscopy")


def load_npz(raw: bytes, filename: str, limits: VolumeLimits, spacing_order: SpacingOrder) -> LoadedVolume:
    imgs = npz_array(raw, filename, ("imgs",), limits, what="file")
    if imgs.ndim != 3:
        raise ValueError(f"file: expected a 3D volume, got {imgs.ndim}D 'imgs' of shape {imgs.shape}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            stored = np.asarray(npz["spacing"], dtype=np.float64) if "spacing" in npz.files else None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"file: could not read 'spacing' of {filename!r} ({exc})") from None
    if stored is None:
        spacing = (1.0, 1.0, 1.0)
    else:
        if stored.shape != (3,):
            raise ValueError(f"file: 'spacing' must hold 3 values, got shape {stored.shape}")
        order = spacing_order if spacing_order != "auto" else _guess_spacing_order(stored)
        values = stored[::-1] if order == "xyz" else stored
        spacing = (float(values[0]), float(values[1]), float(values[2]))
    stem = Path(filename).name
    modality = next((m for m in _NPZ_MODALITY_PREFIXES if stem.startswith(m + "_")), None)
    if modality in ("Microscope",):
        modality = "Microscopy"
    return validated(imgs, spacing, (0.0, 0.0, 0.0), IDENTITY_DIRECTION, modality, "npz", filename)


def _guess_spacing_order(spacing: np.ndarray) -> Literal["zyx", "xyz"]:
    """See the module docstring: the equal pair is the in-plane (y, x) spacing."""
    if np.isclose(spacing[1], spacing[2], rtol=1e-4):
        return "zyx"
    if np.isclose(spacing[0], spacing[1], rtol=1e-4):
        return "xyz"
    return "zyx"


def npz_array(raw: bytes, filename: str, keys: tuple[str, ...], limits: VolumeLimits, what: str,
               expect_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """One array of an npz, its size (and ``expect_shape``) checked from the .npy header before inflating."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
            key = next((k for k in keys if k in names), None)
            if key is None and what == "mask" and len(names) == 1:
                key = names[0]
            if key is None:
                raise ValueError(f"{what}: {filename!r} has no {' or '.join(repr(k) for k in keys)} array "
                                 f"(found {names})")
            with zf.open(key + ".npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise ValueError(f"{what}: {key!r} holds Python objects, expected a numeric array")
            n_voxels = math.prod(int(n) for n in shape)
            if n_voxels > limits.max_voxels or n_voxels * dtype.itemsize > limits.max_unzipped_bytes:
                raise VolumeTooLargeError(f"{what}: {key!r} of shape {shape} is over the "
                                          f"{limits.max_voxels}-voxel limit")
            if expect_shape is not None and tuple(shape) != tuple(expect_shape):
                raise ValueError(f"{what}: shape {tuple(shape)} does not match the volume's {tuple(expect_shape)}")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return np.asarray(npz[key])
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{what}: could not read {filename!r} as npz ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(f"{what}:"):
            raise
        raise ValueError(f"{what}: could not read {filename!r} as npz ({exc})") from None
