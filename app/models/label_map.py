"""One (D, H, W) label map from many binary objects: the two overlap rules.

Objects of one session are segmented independently, so their masks may overlap (a box around a whole tumour
and a box around its necrotic core both claim the core). A label map holds one value per voxel, so overlaps
need a rule:

- ``"confidence"`` (the default everywhere): a voxel claimed by several objects goes to the one with the
  highest logit there, i.e. the per-voxel argmax over the objects' posteriors, as a multi-class model decides.
  An object predicted "filled" with low confidence no longer erases a nested object segmented with high
  confidence. Ties (e.g. two uploaded masks, both at ``PredictorConfig.mask_logit``) go to the object later
  in the given order.
- ``"recent"``: objects are painted in the given order, a later one wins every overlap (no confidences
  needed; what the service did before, and what masks without logits, like the baselines', can only do).

Only voxels an object claims (logit > 0, i.e. its own binary mask) can take its label: composing never
grows an object, it only resolves overlaps. Written by hand because no library composes per-object ROIs of
logits; it is a few array operations. numpy only (no torch), so that the evaluation harness can compose its
baselines' masks with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from app.coordinates import Bounds
from client.wire.vocab import OVERLAP_RULES, OverlapRuleName

OverlapRule = OverlapRuleName  # the rule's name as the model takes it (the wire's ``OverlapRule`` values)


def check_overlap_rule(overlap: str) -> None:
    """``ValueError`` naming ``overlap`` unless it is one of ``OVERLAP_RULES``."""
    if overlap not in OVERLAP_RULES:
        raise ValueError(f"overlap: expected one of {list(OVERLAP_RULES)}, got {overlap!r}")


def label_dtype(object_ids: Iterable[int]) -> np.dtype:
    """uint8 when every id fits, else uint16 (ids are at most 65535)."""
    return np.dtype(np.uint8) if all(oid <= 255 for oid in object_ids) else np.dtype(np.uint16)


def paint_in_order(masks: Mapping[int, np.ndarray], order: Sequence[int], shape: tuple[int, ...],
                   dtype: np.dtype) -> np.ndarray:
    """The ``"recent"`` rule on full-volume masks: objects painted in ``order``, later ones overwrite."""
    labels = np.zeros(shape, dtype=dtype)
    for oid in order:
        labels[np.asarray(masks[oid], dtype=bool)] = oid
    return labels


def paint_by_confidence(logits: Iterable[tuple[int, Bounds, np.ndarray]], shape: tuple[int, int, int],
                        dtype: np.dtype) -> np.ndarray:
    """The ``"confidence"`` rule on per-object ROI logits.

    Args:
        logits: (object id, half-open ROI, (d, h, w) float logits over that ROI), in tie-break order
            (on equal logits the later object wins).
        shape: the volume's (D, H, W).
        dtype: the label map's dtype.

    Returns:
        (D, H, W) label map; 0 where no object has a positive logit.
    """
    items = list(logits)
    labels = np.zeros(shape, dtype=dtype)
    if not items:
        return labels
    # The winning logit so far (0 = nobody claims the voxel), only over the ROIs' union: a full float32
    # volume would cost 4 bytes a voxel (0.6 GB for a 512x512x600 CT) for a few small objects.
    lo = np.min([roi[:3] for _, roi, _ in items], axis=0)
    hi = np.max([roi[3:] for _, roi, _ in items], axis=0)
    best = np.zeros(tuple(int(v) for v in hi - lo), dtype=np.float32)
    for oid, roi, roi_logits in items:
        z0, y0, x0, z1, y1, x1 = roi
        lab = labels[z0:z1, y0:y1, x0:x1]
        top = best[z0 - lo[0]:z1 - lo[0], y0 - lo[1]:y1 - lo[1], x0 - lo[2]:x1 - lo[2]]
        wins = (roi_logits > 0) & (roi_logits >= top)
        lab[wins] = oid
        top[wins] = roi_logits[wins]
    return labels
