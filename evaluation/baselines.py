"""Training-free floors answering the same prompts: the box filled, and a seeded random walker.

``box_fill``       the box itself is the prediction, every round (clicks are ignored).
``random_walker``  scikit-image's random walker (Grady 2006) on a crop around the box: voxels outside the box
                   are background seeds, a core at the box centre (half the box's size, minus a zone around
                   each background click) and every foreground click are foreground seeds, background
                   clicks are background seeds; clicks seed small balls. Re-solved from all prompts on
                   every round. Large crops are solved on a grid of at most ``max_voxels`` and the
                   foreground probability is resized back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from skimage.segmentation import random_walker
from skimage.transform import resize

from app.models.label_map import paint_in_order
from evaluation.cases import Box
from evaluation.click_rule import Click

FG, BG = 1, 2  # random-walker seed labels
NO_BOX_MARGIN = 16  # crop margin (voxels) around the clicks when there is no box to size the object


def box_mask(shape: Sequence[int], box: Box) -> np.ndarray:
    """(D, H, W) boolean mask of an inclusive box."""
    mask = np.zeros(tuple(shape), dtype=bool)
    z0, y0, x0, z1, y1, x1 = box
    mask[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def _crop_window(
    shape: Sequence[int], box: Box | None, points: Sequence[tuple[int, int, int]], margin_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open (start, stop) of the box and points, grown by max(2, fraction * extent) voxels per axis
    (``NO_BOX_MARGIN`` without a box)."""
    corners = [np.array(p) for p in points]
    if box is not None:
        corners += [np.array(box[:3]), np.array(box[3:])]
    lo = np.min(corners, axis=0)
    hi = np.max(corners, axis=0) + 1
    margin = np.maximum(np.ceil((hi - lo) * margin_fraction).astype(int), 2 if box is not None else NO_BOX_MARGIN)
    start = np.maximum(lo - margin, 0)
    stop = np.minimum(hi + margin, np.asarray(shape))
    return start, stop


def random_walker_mask(
    image: np.ndarray,
    spacing: Sequence[float],
    box: Box | None,
    clicks: Sequence[Click],
    *,
    beta: float = 130.0,
    margin_fraction: float = 0.15,
    core_fraction: float = 0.5,
    click_radius: float = 2.0,
    core_clear: float = 4.0,
    max_voxels: int = 64**3,
) -> np.ndarray:
    """Binary (D, H, W) mask of one object from its box and clicks.

    Args:
        image: (D, H, W) volume (any real dtype).
        spacing: (sz, sy, sx) in mm; passed to the random walker so that edges follow physical distances.
        box: inclusive box, or None (then the crop border is the background seed).
        clicks: the clicks so far (label 1 foreground, 0 background).
        beta: random-walker edge penalty (scikit-image's default).
        margin_fraction: crop margin around the box and clicks, as a fraction of their extent.
        core_fraction: side of the central foreground seed as a fraction of the box extent (>= 1 voxel).
        click_radius: radius of each click's seed ball, in voxels of the solving grid.
        core_clear: a background click unseeds the centre core within ``core_clear * click_radius`` of it.
        max_voxels: solve on a grid of at most this many voxels.
    """
    out = np.zeros(image.shape, dtype=bool)
    points = [c.point for c in clicks]
    if box is None and not points:
        return out
    start, stop = _crop_window(image.shape, box, points, margin_fraction)
    crop_shape = stop - start
    scale = max(1.0, (float(np.prod(crop_shape)) / max_voxels) ** (1.0 / 3.0))
    grid = np.maximum(np.round(crop_shape / scale).astype(int), 1)
    step = crop_shape / grid  # crop voxels per grid voxel, per axis

    # Seeds on the grid: grid voxel i covers crop coordinates [i*step, (i+1)*step), its centre decides.
    centres = [start[a] + (np.arange(grid[a]) + 0.5) * step[a] - 0.5 for a in range(3)]
    seeds = np.zeros(tuple(grid), dtype=np.int32)
    if box is not None:
        lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
        seeds[~_outer(*[(c >= lo[a] - 0.5) & (c <= hi[a] + 0.5) for a, c in enumerate(centres)])] = BG
        centre = (lo + hi) / 2.0
        half = np.maximum((hi - lo + 1) * core_fraction / 2.0, 0.5)
        core = _outer(*[np.abs(c - centre[a]) <= half[a] for a, c in enumerate(centres)])
        if not core.any():
            core[tuple(_to_grid(np.round(centre).astype(int), start, step, grid))] = True
        for click in clicks:
            if not click.is_foreground:  # the box-centre prior is wrong around a background click
                core &= _distance2(click, start, step, grid) > (core_clear * click_radius) ** 2
        seeds[core] = FG
    else:
        border = np.ones(tuple(grid), dtype=bool)
        border[1:-1, 1:-1, 1:-1] = False
        seeds[border] = BG
    for click in clicks:  # balls (a single voxel barely pulls a 3D random walk); later clicks win
        seeds[_distance2(click, start, step, grid) <= click_radius**2] = FG if click.is_foreground else BG

    if not (seeds == BG).any():
        # the box covers the whole volume and no background click: nothing to contrast against
        out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = box is not None
        return out
    if not (seeds == FG).any():
        return out

    crop = image[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))].astype(np.float32)
    # beta acts on squared intensity differences: solve on intensities rescaled to [0, 1].
    crop = (crop - crop.min()) / max(float(crop.max() - crop.min()), 1e-6)
    if tuple(grid) != tuple(crop_shape):
        crop = resize(crop, tuple(grid), order=1, anti_aliasing=True, preserve_range=True)
    grid_spacing = np.asarray(spacing, dtype=np.float64) * step
    if (seeds == 0).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unseeded isolated regions, convergence notes
            prob = random_walker(
                crop, seeds, beta=beta, mode="cg_j", return_full_prob=True, spacing=grid_spacing / grid_spacing.min()
            )[0]
    else:  # every grid voxel is a seed: nothing to solve
        prob = (seeds == FG).astype(np.float64)
    if tuple(grid) != tuple(crop_shape):
        prob = resize(prob, tuple(crop_shape), order=1, preserve_range=True)
    out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = prob >= 0.5
    return out


def _outer(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(len z, len y, len x) mask that is True where all three 1D masks are."""
    return z[:, None, None] & y[None, :, None] & x[None, None, :]


def _distance2(click: Click, start: np.ndarray, step: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Squared distance, in grid voxels, of every grid voxel to the click's grid voxel."""
    g = _to_grid(np.asarray(click.point), start, step, grid)
    return sum(((np.arange(grid[a]) - g[a]) ** 2).reshape([-1 if b == a else 1 for b in range(3)]) for a in range(3))


def _to_grid(point: np.ndarray, start: np.ndarray, step: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.clip(((point - start) / step).astype(int), 0, grid - 1)


class _PaintedInOrder:
    """The baselines' label map: they have no confidences, so classes are painted in ascending order, a later
    class winning overlaps (``self._masks``: object id -> (D, H, W) bool mask)."""

    _masks: dict[int, np.ndarray]

    def label_map(self, object_ids: Sequence[int], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return paint_in_order(self._masks, sorted(o for o in object_ids if o in self._masks), shape, dtype)


@dataclass
class _ObjectPrompts:
    box: Box | None = None
    clicks: list[Click] = field(default_factory=list)


class RandomWalkerSession(_PaintedInOrder):
    """Keeps every object's prompts and re-solves the object's random walker after each one."""

    def __init__(self, image: np.ndarray, spacing: tuple[float, float, float], **options: float):
        self._image = image
        self._spacing = spacing
        self._options = options
        self._prompts: dict[int, _ObjectPrompts] = {}
        self._masks: dict[int, np.ndarray] = {}

    def add_box(self, object_id: int, box: Box) -> None:
        self._prompts[object_id] = _ObjectPrompts(box=tuple(int(v) for v in box))  # type: ignore[arg-type]
        self._solve(object_id)

    def add_click(self, object_id: int, click: Click) -> None:
        self._prompts.setdefault(object_id, _ObjectPrompts()).clicks.append(click)
        self._solve(object_id)

    def mask(self, object_id: int) -> np.ndarray:
        return self._masks[object_id]

    def close(self) -> None:
        self._masks.clear()

    def _solve(self, object_id: int) -> None:
        p = self._prompts[object_id]
        self._masks[object_id] = random_walker_mask(
            self._image, self._spacing, p.box, p.clicks, **self._options  # type: ignore[arg-type]
        )


class RandomWalkerMethod:
    """The classical floor: a random walker seeded by the box and the clicks."""

    name = "random_walker"

    def __init__(self, **options: float):
        self._options = options

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> RandomWalkerSession:
        return RandomWalkerSession(image, spacing, **self._options)


class BoxFillSession(_PaintedInOrder):
    """The box is the prediction; clicks change nothing."""

    def __init__(self, shape: tuple[int, ...]):
        self._shape = shape
        self._masks: dict[int, np.ndarray] = {}

    def add_box(self, object_id: int, box: Box) -> None:
        self._masks[object_id] = box_mask(self._shape, box)

    def add_click(self, object_id: int, click: Click) -> None:
        self._masks.setdefault(object_id, np.zeros(self._shape, dtype=bool))

    def mask(self, object_id: int) -> np.ndarray:
        return self._masks[object_id]

    def close(self) -> None:
        self._masks.clear()


class BoxFillMethod:
    name = "box_fill"

    def open(self, image: np.ndarray, spacing: tuple[float, float, float]) -> BoxFillSession:
        return BoxFillSession(tuple(image.shape))
