"""Training views that match inference, boxes as users and the challenge give them, SegVol's augmentation.

Views (arrays (d, h, w) = the training frame):
    zoom-out  the whole foreground crop (``foreground_bounds``) resized to the frame with nearest
              interpolation (image and label), exactly as the predictor's zoom-out view;
    zoom-in   a frame-size window of the volume at native resolution containing (part of) the object, padded
              with zeros at the end when the volume is smaller than the frame, as the predictor pads;
    roi       the box grown by a random margin, clipped to the volume and resampled (trilinear) to the frame,
              as the predictor's ``zoom_in="resample"`` path sees a boxed object (the whole object, always
              at one scale, whatever its size).

Boxes are inclusive [z0, y0, x0, z1, y1, x1]: either the exact 3D box with each face jittered, or the
challenge's box (z_min..z_max and the 2D extent on slice z_mid). They are mapped into the view with the
predictor's own geometry (``box_to_frame``, ``box_in_window``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.models import geometry as geo
from app.models.preprocess import foreground_bounds, resample_to_frame
from training.config import DataConfig

Frame = tuple[int, int, int]


@dataclass
class View:
    """One training view.

    Attributes:
        image: (d, h, w) float32, normalised intensities (after augmentation they may leave [0, 1]).
        mask: (d, h, w) bool ground truth of the object in the view.
        box: (6,) float32 inclusive frame box [z0, y0, x0, z1, y1, x1].
        kind: "zoom_out", "zoom_in" or "roi".
        box_kind: "3d" (jittered exact box) or "mid_slice" (the challenge's box).
    """

    image: np.ndarray
    mask: np.ndarray
    box: np.ndarray
    kind: str
    box_kind: str


def challenge_box(mask: np.ndarray) -> geo.InclusiveBox:
    """The challenge's box as an inclusive 3D box: z_min..z_max and the tight 2D extent on slice z_mid.

    z_mid is the median of the object's distinct z indices truncated to an integer; when that slice does not
    hold the object, the nearest slice that does.
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("mask: empty object has no box")
    z_mid = int(np.median(zs))
    if z_mid not in set(zs.tolist()):
        z_mid = int(zs[np.argmin(np.abs(zs - z_mid))])
    ys, xs = np.nonzero(mask[z_mid])
    return (int(zs[0]), int(ys.min()), int(xs.min()), int(zs[-1]), int(ys.max()), int(xs.max()))


def exact_box(mask: np.ndarray) -> geo.InclusiveBox:
    bounds = geo.mask_bounds(mask)
    if bounds is None:
        raise ValueError("mask: empty object has no box")
    return (bounds[0], bounds[1], bounds[2], bounds[3] - 1, bounds[4] - 1, bounds[5] - 1)


def jitter_box(box: geo.InclusiveBox, shape: Frame, fraction: float, rng: np.random.Generator) -> geo.InclusiveBox:
    """Move each face by up to ``fraction`` of the extent (at least 1 voxel when fraction > 0), inside ``shape``."""
    out = list(box)
    for ax in range(3):
        extent = box[ax + 3] - box[ax] + 1
        limit = int(np.ceil(fraction * extent)) if fraction > 0 else 0
        lo = box[ax] + int(rng.integers(-limit, limit + 1))
        hi = box[ax + 3] + int(rng.integers(-limit, limit + 1))
        lo, hi = max(lo, 0), min(hi, shape[ax] - 1)
        if hi < lo:
            lo, hi = box[ax], box[ax + 3]
        out[ax], out[ax + 3] = lo, hi
    return tuple(out)  # type: ignore[return-value]


def nearest_resize(array: np.ndarray, size: Frame) -> np.ndarray:
    """``F.interpolate(mode="nearest")`` / MONAI ``Resize(mode="nearest")``: out index o reads floor(o * in / out)."""
    idx = [np.minimum((np.arange(o) * (i / o)).astype(np.int64), i - 1) for i, o in zip(array.shape, size, strict=True)]
    return array[np.ix_(*idx)]


def zoom_out_view(image: np.ndarray, mask: np.ndarray, box: geo.InclusiveBox, frame: Frame) -> View | None:
    """The foreground crop resized to ``frame``; None when the object vanishes in it (too small)."""
    crop = foreground_bounds(image)
    fbox = geo.box_to_frame(box, crop, frame)
    if fbox is None:
        return None
    sl = geo.slices_of(crop)
    view_mask = nearest_resize(mask[sl], frame)
    if not view_mask.any():
        return None
    view_image = nearest_resize(image[sl], frame).astype(np.float32)
    return View(view_image, view_mask, np.asarray(fbox, np.float32), "zoom_out", "")


def zoom_in_view(
    image: np.ndarray,
    mask: np.ndarray,
    box: geo.InclusiveBox,
    frame: Frame,
    rng: np.random.Generator,
    centre_on_voxel_prob: float,
) -> View:
    """A native-resolution window of size ``frame`` holding (part of) the object."""
    shape = np.asarray(image.shape)
    f = np.asarray(frame)
    if rng.random() < centre_on_voxel_prob:
        voxels = np.flatnonzero(mask)
        centre = np.asarray(np.unravel_index(int(voxels[rng.integers(voxels.size)]), mask.shape))
    else:
        centre = (np.asarray(box[:3]) + np.asarray(box[3:])) // 2
    jitter = np.asarray([int(rng.integers(-(n // 4), n // 4 + 1)) for n in frame])
    start = np.clip(centre - f // 2 + jitter, 0, np.maximum(shape - f, 0))
    # The centre voxel must stay inside (jitter is at most a quarter frame, so it does unless clipped).
    start = np.minimum(start, centre)
    start = np.maximum(start, centre - f + 1)
    start = np.clip(start, 0, np.maximum(shape - f, 0))
    window = (*[int(s) for s in start], *[int(s + n) for s, n in zip(start, f, strict=True)])
    inside = geo.bounds_intersection(window, (0, 0, 0, *image.shape))
    assert inside is not None  # the window starts inside the volume
    view_image = np.zeros(frame, np.float32)
    view_mask = np.zeros(frame, bool)
    src = geo.slices_of(inside)
    dst = tuple(slice(inside[a] - window[a], inside[a + 3] - window[a]) for a in range(3))
    view_image[dst] = image[src]
    view_mask[dst] = mask[src]
    wbox = geo.box_in_window(box, window)
    if wbox is None:  # cannot happen: the window holds an object voxel, which is inside the box
        wbox = tuple(float(v) for v in exact_box(view_mask))
    return View(view_image, view_mask, np.asarray(wbox, np.float32), "zoom_in", "")


def roi_view(image: np.ndarray, mask: np.ndarray, box: geo.InclusiveBox, frame: Frame,
             rng: np.random.Generator, margin_range: tuple[float, float]) -> View | None:
    """The box's ROI (margin drawn from ``margin_range``) resampled to ``frame``; None if the object vanishes."""
    roi = geo.roi_bounds(box, float(rng.uniform(*margin_range)), image.shape)  # type: ignore[arg-type]
    sl = geo.slices_of(roi)
    view_image = resample_to_frame(torch.from_numpy(np.ascontiguousarray(image[sl], np.float32)), frame)
    view_mask = resample_to_frame(torch.from_numpy(mask[sl].astype(np.float32)), frame) >= 0.5
    if not bool(view_mask.any()):
        return None
    fbox = geo.box_to_frame(box, roi, frame)
    assert fbox is not None  # the ROI contains the box
    return View(view_image.numpy(), view_mask.numpy(), np.asarray(fbox, np.float32), "roi", "")


def augment(view: View, cfg: DataConfig, rng: np.random.Generator) -> View:
    """SegVol's augmentation: flip each axis with p=flip_prob; scale / shift intensities with p=intensity_prob."""
    image, mask, box = view.image, view.mask, view.box.copy()
    for ax in range(3):
        if rng.random() < cfg.flip_prob:
            image, mask = np.flip(image, ax), np.flip(mask, ax)
            n = image.shape[ax] - 1
            box[ax], box[ax + 3] = n - box[ax + 3], n - box[ax]
    image = np.ascontiguousarray(image, dtype=np.float32)
    if rng.random() < cfg.intensity_prob:
        image = image * np.float32(1.0 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale))
    if rng.random() < cfg.intensity_prob:
        image = image + np.float32(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
    return View(image, np.ascontiguousarray(mask), box, view.kind, view.box_kind)


def make_view(
    image: np.ndarray,
    mask: np.ndarray,
    frame: Frame,
    cfg: DataConfig,
    rng: np.random.Generator,
    box_mask: np.ndarray | None = None,
) -> View:
    """A random view of one object: box kind, zoom-out or zoom-in, then augmentation.

    Args:
        image: (D, H, W) float32 normalised volume.
        mask: (D, H, W) bool object (non-empty).
        frame: the training frame (d, h, w).
        box_mask: (D, H, W) bool region the box is drawn around, holding ``mask`` (a nested target: the box
            covers a composite, the object is one part of it); None = the object itself.
    """
    boxed = mask if box_mask is None else box_mask
    if rng.random() < cfg.mid_slice_box_prob:
        box, box_kind = challenge_box(boxed), "mid_slice"
    else:
        box, box_kind = jitter_box(exact_box(boxed), image.shape, cfg.box_jitter, rng), "3d"  # type: ignore[arg-type]
    view = None
    # Drawn only when ROI views are on, so older configs keep their random stream.
    if cfg.roi_view_prob > 0 and rng.random() < cfg.roi_view_prob:
        view = roi_view(image, mask, box, frame, rng, (cfg.roi_margin_min, cfg.roi_margin_max))
    if view is None and rng.random() < cfg.zoom_out_prob:
        view = zoom_out_view(image, mask, box, frame)
    if view is None:
        view = zoom_in_view(image, mask, box, frame, rng, cfg.centre_on_voxel_prob)
    view.box_kind = box_kind
    return augment(view, cfg, rng)
