"""The click contract, measured: did a click do what it pointed at?

For one class and one click round, from the prediction before the click, the prediction after it and the
ground truth:

- "obeyed": the clicked voxel has the click's label afterwards (a foreground click leaves it in the class, a
  background click leaves it out);
- "region fixed": the share of the clicked error region that is right afterwards. The clicked error region is
  the 26-connected component of the previous error (prediction xor ground truth) that contains the click, the
  region the simulated user pointed at (the official click rule clicks the centre of the largest one). A click
  that dents a false-positive blob scores the dent's share; one that removes the blob scores 1.

Objects are grouped by their ground-truth size in voxels (``size_group``), the groups the issue reports on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from evaluation.click_rule import Click

SIZE_GROUPS: tuple[str, ...] = ("<1k", "1k-20k", ">20k")
"""Object size groups by ground-truth voxels: under 1,000, 1,000 to 20,000, larger."""

SMALL_MAX_VOXELS = 1_000
MEDIUM_MAX_VOXELS = 20_000


def size_group(n_voxels: int) -> str:
    """The size group of an object of ``n_voxels`` ground-truth voxels."""
    if n_voxels < SMALL_MAX_VOXELS:
        return SIZE_GROUPS[0]
    if n_voxels <= MEDIUM_MAX_VOXELS:
        return SIZE_GROUPS[1]
    return SIZE_GROUPS[2]


@dataclass(frozen=True)
class ClickOutcome:
    """What one click did: ``obeyed`` (1.0 or 0.0) and ``region_fixed`` (share in [0, 1])."""

    obeyed: float
    region_fixed: float


def clicked_error_region(before: np.ndarray, ground_truth: np.ndarray, point: tuple[int, int, int]) -> np.ndarray:
    """The 26-connected component of ``before xor ground_truth`` that contains ``point`` (boolean mask).

    Empty when the clicked voxel was not an error (a click rule other than the official one may do that).
    Labelling runs on the error's bounding box only, which keeps it cheap on large volumes.
    """
    error = np.asarray(before, dtype=bool) ^ np.asarray(ground_truth, dtype=bool)
    region = np.zeros(error.shape, dtype=bool)
    if not error[point]:
        return region
    hit = [np.flatnonzero(error.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    window = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hit)
    labels = cc3d.connected_components(error[window].astype(np.uint8), connectivity=26)
    local = tuple(p - w.start for p, w in zip(point, window, strict=True))
    region[window] = labels == labels[local]
    return region


def click_outcome(before: np.ndarray, after: np.ndarray, ground_truth: np.ndarray, click: Click) -> ClickOutcome:
    """Score one click of one class: ``before``/``after`` are the class's boolean masks around the click."""
    after = np.asarray(after, dtype=bool)
    gt = np.asarray(ground_truth, dtype=bool)
    if not (after.shape == gt.shape == np.shape(before)) or gt.ndim != 3:
        raise ValueError(f"after: shape {after.shape} does not match ground truth {gt.shape} (3D)")
    obeyed = float(after[click.point] == click.is_foreground)
    region = clicked_error_region(before, gt, click.point)
    n_region = int(region.sum())
    # A click on a voxel that was already right has no error region; count it fixed when it stays right.
    fixed = float((after[region] == gt[region]).sum()) / n_region if n_region else obeyed
    return ClickOutcome(obeyed=obeyed, region_fixed=fixed)
