"""An object's logits over its ROI: read over a wider region, and diffed between two states of the object.

An object's mask is ``logits > 0`` over its ROI (background elsewhere); a ``Change`` carries exactly the voxels
whose value differs between two such states (ascending flat volume indices, new values, their box), which is
what the diff stream sends.
"""

from __future__ import annotations

import numpy as np
import torch

from app.coordinates import Bounds
from app.models import geometry as geo
from app.models.state import ObjectState


def logits_over(obj: ObjectState, roi: Bounds, background_logit: float, device: torch.device) -> torch.Tensor:
    """The object's logits on ``roi`` (which contains its current ROI), ``background_logit`` where it had none."""
    if obj.roi == roi and obj.logits is not None:
        return obj.logits
    out = torch.full(geo.bounds_shape(roi), background_logit, device=device)
    if obj.roi is not None and obj.logits is not None:
        rel = tuple(slice(obj.roi[a] - roi[a], obj.roi[a + 3] - roi[a]) for a in range(3))
        out[rel] = obj.logits
    return out


def local_flat(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    return (coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]


def _to_volume(coords: torch.Tensor, origin: Bounds, shape: tuple[int, int, int]
               ) -> tuple[np.ndarray, tuple[int, int, int, int, int, int] | None]:
    """Local (m, 3) coords in a region starting at origin -> ascending volume flat indices + inclusive bbox."""
    if coords.shape[0] == 0:
        return np.zeros(0, np.int64), None
    g = coords + torch.as_tensor(origin[:3], device=coords.device)
    flat = local_flat(g, shape).cpu().numpy().astype(np.int64)
    lo, hi = g.min(dim=0).values.tolist(), g.max(dim=0).values.tolist()
    return flat, (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def mask_diff(shape: tuple[int, int, int], old_roi: Bounds | None, old: torch.Tensor | None,
               new_roi: Bounds | None, new: torch.Tensor | None
               ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int, int, int] | None]:
    """Changed voxels of the binary mask (logits > 0) between two (ROI, logits) states of an object."""
    old_roi = old_roi if old is not None else None
    new_roi = new_roi if new is not None else None
    region = geo.bounds_union(old_roi, new_roi)
    if region is None:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), None
    device = (old if old is not None else new).device  # type: ignore[union-attr]
    size = geo.bounds_shape(region)
    masks = []
    for roi, logits in ((old_roi, old), (new_roi, new)):
        m = torch.zeros(size, dtype=torch.bool, device=device)
        if roi is not None and logits is not None:
            m[tuple(slice(roi[a] - region[a], roi[a + 3] - region[a]) for a in range(3))] = logits > 0
        masks.append(m)
    changed = masks[0] != masks[1]
    coords = torch.nonzero(changed)  # row-major order -> ascending volume flat indices
    values = masks[1][changed].to(torch.uint8).cpu().numpy()
    flat, bbox = _to_volume(coords, region, shape)
    return flat, values, bbox


def sparse_diff(shape: tuple[int, int, int], roi: Bounds, written: torch.Tensor, before: torch.Tensor,
                after: torch.Tensor) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int, int, int] | None]:
    """Diff of a step that only wrote the ROI voxels ``written`` of an unchanged ROI.

    Args:
        shape: (D, H, W) of the volume.
        roi: half-open (z0, y0, x0, z1, y1, x1).
        written: (m,) long flat (C-order) indices into the ROI, ascending.
        before, after: (m,) the logits there before and after the step.
    """
    changed = torch.nonzero((before > 0) != (after > 0)).squeeze(1)
    # The few changed voxels go to the host once; the index arithmetic on them is cheaper in numpy.
    local = written.index_select(0, changed).cpu().numpy().astype(np.int64)
    if local.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), None
    values = (after.index_select(0, changed) > 0).to(torch.uint8).cpu().numpy()
    _, rh, rw = geo.bounds_shape(roi)
    z, y, x = local // (rh * rw) + roi[0], (local // rw) % rh + roi[1], local % rw + roi[2]
    # A box's C-order is the volume's C-order restricted to it: ascending ROI indices stay ascending.
    flat = (z * shape[1] + y) * shape[2] + x
    bbox = (int(z.min()), int(y.min()), int(x.min()), int(z.max()), int(y.max()), int(x.max()))
    return flat, values, bbox
