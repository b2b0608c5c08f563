"""The corrector (gru) step of a click prompt, and the clicks every click step sees.

gru step (paper section 2.2-2.5): sample uncertain + error points (Algorithm 1) -> GRU corrector with the
object's hidden state -> logit-domain update at the valid sampled points only.
Exclusive objects (``SessionState.exclusive_objects``, the default): both click steps also take the other
objects' foreground clicks inside the object's ROI as background clicks (``exclusion_clicks``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from app.models import geometry as geo
from app.models.corrector import GRUCorrector, corrected_voxels
from app.models.predictor_config import PredictorConfig
from app.models.roi_logits import logits_over, mask_diff, sparse_diff
from app.models.sampling import build_corrector_input
from app.models.stage_timer import StageTimer
from app.models.state import Change, Click, ObjectState, SessionState
from app.models.uncertain_band import band_of, carry_band


def exclusion_clicks(state: SessionState, obj: ObjectState) -> list[Click]:
    """The other objects' foreground clicks that ``obj``'s click steps also take, as background clicks.

    In an exclusive session (``SessionState.exclusive_objects``) a foreground click says "this voxel is
    that object", hence not this one: a nested object's click tells its container to leave it out. Only
    clicks inside ``obj``'s current ROI count (one far away would grow the ROI and coarsen the object's
    resampled view for nothing), and none on a voxel ``obj`` has a click of its own (its own click wins).
    They are read at each step, not stored: undoing another object's click changes this object at its
    next step, and a replay of the prompt log in order rebuilds the same results. The steps put them
    before the object's own clicks, so where their error-sampling balls overlap (the GRU step labels a
    voxel by the latest click covering it) the object's own clicks win.
    """
    if not state.exclusive_objects or obj.roi is None:
        return []
    z0, y0, x0, z1, y1, x1 = obj.roi
    own = {(c.z, c.y, c.x) for c in obj.clicks}
    out: dict[tuple[int, int, int], Click] = {}
    for other in state.objects.values():
        if other is obj:
            continue
        for c in other.clicks:
            key = (c.z, c.y, c.x)
            if c.label == 1 and key not in own and z0 <= c.z < z1 and y0 <= c.y < y1 and x0 <= c.x < x1:
                out.setdefault(key, Click(c.z, c.y, c.x, 0))
    return list(out.values())


def gru_step(corrector: GRUCorrector, config: PredictorConfig, state: SessionState, obj: ObjectState) -> Change:
    """One corrector round on the object (paper section 2.2-2.5); the caller has pushed the undo entry."""
    timer = StageTimer(state.device)
    clicks, labels = click_arrays(exclusion_clicks(state, obj) + obj.clicks)
    old_roi, old_logits = obj.roi, obj.logits
    roi = geo.bounds_union(old_roi, geo.ball_bounds(clicks, config.radius, state.shape))
    assert roi is not None  # there is at least one click
    logits = logits_over(obj, roi, config.background_logit, state.device)
    # The object's first click; the box centre before any click (SPEC section 2.3).
    anchor = obj.first_click if obj.first_click is not None else _box_centre(obj.box)  # type: ignore[arg-type]
    gen = torch.Generator(device=state.device).manual_seed(_round_seed(state.seed, obj.object_id, obj.rounds))
    sampling = config.sampling
    candidates = band_of(obj.band, logits, sampling.tau)
    inp = build_corrector_input(
        logits, roi, state.shape,
        torch.as_tensor(clicks, device=state.device), torch.as_tensor(labels, device=state.device),
        anchor, sampling, gen, candidates,
    )
    timer.lap("sample")
    out = corrector(inp.features[None], obj.hidden)
    timer.lap("corrector")
    delta_c = out.delta_c[0] if (config.use_offsets and out.delta_c is not None) else None
    voxels, written = corrected_voxels(logits, roi, state.shape, inp.coords, inp.valid, out.delta_p[0], delta_c)
    entry = obj.undo_stack[-1]
    # On an unchanged ROI the step changes the written voxels only: the diff compares them, not the whole ROI.
    same_roi = roi == old_roi and old_logits is not None
    before = logits.reshape(-1).index_select(0, voxels) if same_roi else None  # a gather: a new tensor
    sparse = same_roi and entry.step in _SPARSE_UNDO_STEPS
    if sparse:
        # Keep only the overwritten values instead of a second full copy of the ROI; with the entry holding no
        # tensor, the object may own ``logits`` alone, and then the step writes its few voxels in place.
        obj.undo_stack[-1] = replace(entry, logits=None, sparse_index=voxels, sparse_values=before)
    # ``logits`` is the step's own when ``logits_over`` made it for a grown ROI (or a first click).
    own = logits is not old_logits or (sparse and _owns(obj, logits))
    new_logits = logits if own else logits.clone(memory_format=torch.contiguous_format)
    new_logits.view(-1).index_copy_(0, voxels, written)
    obj.band = carry_band(candidates, new_logits, voxels, sampling.tau)
    obj.own_logits = weakref.ref(new_logits)
    obj.hidden, obj.rounds = out.hidden, obj.rounds + 1
    obj.roi, obj.logits = roi, new_logits
    timer.lap("update")
    if before is not None:
        indices, values, bbox = sparse_diff(state.shape, roi, voxels, before, written)
    else:
        indices, values, bbox = mask_diff(state.shape, old_roi, old_logits, roi, new_logits)
    timer.lap("diff")
    obj.version += 1
    return Change(obj.object_id, obj.version, "gru", indices, values, bbox, timer.ms)


_SPARSE_UNDO_STEPS = frozenset({"clicks:gru", "clicks:both"})
"""Click steps whose GRU step keeps a sparse undo record (a both click's decoder step makes it whole again)."""


def _owns(obj: ObjectState, logits: torch.Tensor) -> bool:
    """Whether a GRU step may write into ``logits`` in place: a tensor an earlier step of this object made
    (``ObjectState.own_logits``) that no undo entry holds (undo entries keep their tensors unchanged)."""
    return (obj.own_logits is not None and obj.own_logits() is logits
            and all(e.logits is not logits for e in obj.undo_stack))


def click_arrays(clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) int64 points (z, y, x) and (N,) int64 labels of ``clicks``."""
    points = np.array([[c.z, c.y, c.x] for c in clicks], dtype=np.int64).reshape(-1, 3)
    return points, np.array([c.label for c in clicks], dtype=np.int64)


def _box_centre(box: geo.InclusiveBox) -> tuple[int, int, int]:
    return ((box[0] + box[3]) // 2, (box[1] + box[4]) // 2, (box[2] + box[5]) // 2)


def _round_seed(seed: int, object_id: int, rounds: int) -> int:
    """A distinct, reproducible seed per (session seed, object, corrector round)."""
    return (seed * 1_000_003 + int(object_id) * 10_007 + rounds) % (2**62)

