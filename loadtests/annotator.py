"""What a simulated annotator does with its eyes: draw a box around an object and pick the next click.

The box is the object's true bounding box with a hand's imprecision (each face moved by up to a couple of
voxels). The click follows the CVPR 2025 simulated user (``evaluation.click_rule``): inside the largest
error component of the current mask against the truth, at the voxel farthest from its border; foreground
where the truth is foreground. After an undo the annotator does not repeat the click it just took back: it
clicks elsewhere in the same component, at a random voxel at least half as deep as the deepest one.
"""

from __future__ import annotations

import numpy as np

from evaluation.click_rule import Click, largest_error_component, next_click, padded_crop_edt


def jittered_box(bbox: tuple[int, int, int, int, int, int], shape: tuple[int, int, int],
                 rng: np.random.Generator, max_shift: tuple[int, int, int] = (1, 3, 3)) -> list[int]:
    """The inclusive box ``bbox`` with every face moved by up to ``max_shift`` voxels, kept in the volume."""
    lo = [int(np.clip(bbox[a] + rng.integers(-max_shift[a], max_shift[a] + 1), 0, shape[a] - 1)) for a in range(3)]
    hi = [int(np.clip(bbox[a + 3] + rng.integers(-max_shift[a], max_shift[a] + 1), lo[a], shape[a] - 1))
          for a in range(3)]
    return lo + hi


def choose_click(mask: np.ndarray, truth: np.ndarray, rng: np.random.Generator, *, avoid_deepest: bool = False
                 ) -> Click | None:
    """The next corrective click on ``mask`` (None when it equals ``truth``).

    ``avoid_deepest``: pick a random voxel of the error component whose depth is at least half the maximum
    instead of the official deepest voxel (used right after an undo, so the same click is not sent again).
    """
    if not avoid_deepest:
        return next_click(mask, truth)
    pred = np.asarray(mask, dtype=bool)
    gt = np.asarray(truth, dtype=bool)
    error = pred ^ gt
    if not error.any():
        return None
    edt, origin = padded_crop_edt(largest_error_component(error))
    candidates = np.argwhere(edt >= 0.5 * edt.max())
    local = candidates[rng.integers(len(candidates))]
    point = (int(local[0] + origin[0]), int(local[1] + origin[1]), int(local[2] + origin[2]))
    return Click(point=point, label=int(gt[point]))


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(mask, dtype=bool)
    b = np.asarray(truth, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
