"""The CVPR 2025 challenge's simulated user: one corrective click per class and round.

From the previous prediction of one class: take the error (prediction xor ground truth), keep its largest
26-connected component, compute the Euclidean distance transform of that component inside its bounding box
padded by max(25 %, 1 voxel) per axis (padding and non-component voxels are the zero boundary; unit voxel
sampling, spacing is ignored as in the official code), and click the voxel farthest from the boundary. Ties go
to a uniform choice made with a fresh ``np.random.seed(42)`` stream, exactly as the official ``sample_coord``.
The click is background when the ground truth is background there (over-segmentation), else foreground.

Coordinates are voxel indices (z, y, x) of the (D, H, W) volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy.ndimage import distance_transform_edt

TIE_SEED = 42


@dataclass(frozen=True)
class Click:
    """One simulated click: ``point`` = (z, y, x) voxel index, ``label`` 1 = foreground, 0 = background."""

    point: tuple[int, int, int]
    label: int

    @property
    def is_foreground(self) -> bool:
        return self.label == 1


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open bounding box (start, stop) of the True voxels of a non-empty 3D mask."""
    coords = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    start = np.array([c[0] for c in coords])
    stop = np.array([c[-1] + 1 for c in coords])
    return start, stop


def largest_error_component(error: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a non-empty boolean (D, H, W) error mask, as a boolean mask.

    Equal sizes go to the component that cc3d numbers first (raster order), like ``np.argmax`` in the
    official code. Labelling runs on the error's bounding box only: translation keeps the raster order, so
    the numbering and hence the tie-break are the same as on the whole volume.
    """
    start, stop = _bbox(error)
    window = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    labels = cc3d.connected_components(error[window].astype(np.uint8), connectivity=26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = np.zeros(error.shape, dtype=bool)
    component[window] = labels == int(np.argmax(sizes))
    return component


def padded_crop_edt(component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EDT of a non-empty component over its bounding box, computed with the official padding.

    Returns ``(edt, origin)``: ``edt`` has the shape of the component's bounding box and ``origin`` is the
    (z, y, x) index of its first voxel in the volume. Outside the bounding box the official full-size EDT
    is 0, so this crop holds all of its positive values.
    """
    start, stop = _bbox(component)
    crop_shape = stop - start
    padding = np.maximum((crop_shape * 0.25).astype(int), 1)
    padded = np.zeros(crop_shape + 2 * padding, dtype=np.uint8)
    inner = tuple(slice(p, p + s) for p, s in zip(padding, crop_shape, strict=True))
    padded[inner] = component[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    edt = distance_transform_edt(padded)
    return edt[inner], start


def sample_max_coord(edt: np.ndarray) -> tuple[int, ...]:
    """Index of the maximum of ``edt``; ties broken uniformly with a fresh seed-42 legacy numpy stream.

    ``np.random.RandomState(42).choice(n)`` draws the same value as the official
    ``np.random.seed(42); np.random.choice(n)`` without touching numpy's global state. Candidates are listed
    in C order (``np.argwhere``), which a translation of the array does not change.
    """
    candidates = np.argwhere(edt == edt.max())
    chosen = candidates[np.random.RandomState(TIE_SEED).choice(len(candidates))]
    return tuple(int(i) for i in chosen)


def next_click(prediction: np.ndarray, ground_truth: np.ndarray) -> Click | None:
    """The official corrective click for one class, or None when the prediction is already perfect.

    Args:
        prediction: (D, H, W) boolean (or 0/1) mask of the class in the previous prediction.
        ground_truth: (D, H, W) boolean (or 0/1) mask of the class in the ground truth.
    """
    pred = np.asarray(prediction, dtype=bool)
    gt = np.asarray(ground_truth, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"prediction: shape {pred.shape} does not match ground truth {gt.shape} (3D)")
    error = pred ^ gt
    if not error.any():
        return None
    component = largest_error_component(error)
    edt, origin = padded_crop_edt(component)
    local = sample_max_coord(edt)
    point = (int(local[0] + origin[0]), int(local[1] + origin[1]), int(local[2] + origin[2]))
    return Click(point=point, label=int(gt[point]))
