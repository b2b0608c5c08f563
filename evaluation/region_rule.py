"""A simulated user who corrects with scribbles or lassos instead of clicks (``--prompts scribble|lasso``).

Each round starts from the challenge's own click (``click_rule.next_click``: the voxel deepest inside the
largest error component, labelled by the ground truth there) and draws on the axial slice of that click, inside
the error component's cross-section on that slice (the 8-connected part holding the click), shrunk by one
voxel so that the stroke stays inside what a user sees as wrong (never shrunk to nothing: the click is kept):

    lasso     the whole shrunk cross-section (a filled outline of the wrong area on that slice)
    scribble  the shrunk cross-section's voxels on the click's row (a horizontal stroke through the click)

The region carries the click's label. Deterministic, like the click rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import binary_erosion, label

from evaluation.click_rule import largest_error_component, next_click

RegionKind = Literal["scribble", "lasso"]
REGION_KINDS: tuple[str, ...] = ("scribble", "lasso")


@dataclass(frozen=True)
class RegionPrompt:
    """A simulated region: ``flat`` ascending flat voxel indices of the (D, H, W) volume, ``label`` 0/1."""

    flat: np.ndarray
    label: int


def next_region(prediction: np.ndarray, ground_truth: np.ndarray, kind: RegionKind) -> RegionPrompt | None:
    """The simulated scribble or lasso for one class, or None when the prediction is already perfect."""
    click = next_click(prediction, ground_truth)
    if click is None:
        return None
    if kind not in REGION_KINDS:
        raise ValueError(f"kind: expected one of {list(REGION_KINDS)}, got {kind!r}")
    error = np.asarray(prediction, dtype=bool) ^ np.asarray(ground_truth, dtype=bool)
    z, y, x = click.point
    section = largest_error_component(error)[z]
    parts, _ = label(section, structure=np.ones((3, 3), dtype=bool))
    part = parts == parts[y, x]
    shrunk = binary_erosion(part)
    shrunk[y, x] = True
    if kind == "scribble":
        stroke = np.zeros_like(shrunk)
        stroke[y] = shrunk[y]
        shrunk = stroke
    plane = np.zeros(error.shape, dtype=bool)
    plane[z] = shrunk
    return RegionPrompt(np.flatnonzero(plane.reshape(-1)).astype(np.int64), click.label)
