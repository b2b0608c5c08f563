"""The shared, stateless predictor: verbs on an explicit ``SessionState`` (SAM 2's video predictor shape).

    predictor = build_predictor("compact")
    state = predictor.init_state(volume, spacing)              # normalises, encodes the zoom-out view once
    change = predictor.add_box(state, 1, [z0, y0, x0, z1, y1, x1])
    changes = predictor.add_clicks(state, 1, [[z, y, x]], [1], mode="both")
    predictor.undo(state, 1); predictor.reset(state, 1)

Every verb validates its arguments first (``ValueError`` naming the argument; the state is untouched), then
returns exactly what changed in the object's binary mask (``Change``). Methods block: call them off the event
loop, one at a time per session (the service holds a session lock and a device lock).

This module is the facade: it checks arguments, keeps each object's prompts and undo stack, and composes the
stages, each in its own module (SPEC section 1-2):
    ``preparation``     the volume normalised and its zoom-out view encoded (``init_state``)
    ``decoding``        the box / decoder step (``zoom_in`` "segvol", "windows" or "resample")
    ``corrector_step``  the gru step of a click, and the other objects' clicks every click step sees
    ``region_prompts``  the constraint of a scribble or lasso
    ``text_prompts``    SegVol's text prompt embeddings
    ``roi_logits``      an object's logits over its ROI, and the diff of a step (``Change``)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from app.coordinates import Bounds
from app.models import geometry as geo
from app.models import regions
from app.models.backbone import Backbone
from app.models.clip_tokenizer import validate_name
from app.models.corrector import GRUCorrector
from app.models.corrector_step import click_arrays, exclusion_clicks, gru_step
from app.models.decoding import Decoder
from app.models.label_map import (
    OverlapRule,
    check_overlap_rule,
    label_dtype,
    paint_by_confidence,
    paint_in_order,
)
from app.models.predictor_config import PredictorConfig
from app.models.preparation import prepare_state
from app.models.region_prompts import constrain
from app.models.roi_logits import mask_diff
from app.models.stage_timer import StageTimer
from app.models.state import Change, Click, ObjectState, SessionState, UndoEntry
from app.models.text_prompts import TextEmbeddings
from app.models.uncertain_band import band_for
from client.wire.vocab import REFINE_MODES, REGION_MODES

OnChange = Callable[[Change], None]


class UnknownObjectError(KeyError):
    """The session has no object with that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object_id: unknown object"


class Predictor:
    """A backbone + corrector shared by all sessions; all per-session data lives in ``SessionState``."""

    def __init__(
        self,
        backbone: Backbone,
        corrector: GRUCorrector | None,
        config: PredictorConfig | None = None,
        device: torch.device | str = "cpu",
        config_name: str = "custom",
        roi_backbone: Backbone | None = None,
    ) -> None:
        """``roi_backbone``: ``backbone`` set up for ``config.roi_frame`` (``build.frame_view``), needed when
        ``zoom_in="resample"`` and the ROI frame is not the backbone's own."""
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.corrector = corrector.to(self.device).eval() if corrector is not None else None
        self.config = config or PredictorConfig()
        self.config_name = config_name
        self.roi_backbone = roi_backbone.to(self.device).eval() if roi_backbone is not None else self.backbone
        self.text = TextEmbeddings(self.backbone, self.config.text_tokenizer, self.device)
        self.decoder = Decoder(self.backbone, self.roi_backbone, self.config, self.device, self.text)
        self.frame, self.roi_frame = self.decoder.frame, self.decoder.roi_frame
        self.segvol, self.resample = self.decoder.segvol, self.decoder.resample

    # --- session ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(self, volume: np.ndarray, spacing: Sequence[float], *, seed: int = 0,
                   exclusive_objects: bool = True) -> SessionState:
        """Normalise the volume, move it to the device and encode the zoom-out view once.

        Args:
            volume: (D, H, W) real-valued array, any dtype.
            spacing: (sz, sy, sx) in mm.
            seed: base seed of the corrector's error sampling (same seed + same prompts = same result).
            exclusive_objects: the objects are the labels of one label map (``SessionState``).
        """
        return prepare_state(self.backbone, self.device, volume, spacing, seed=seed,
                             exclusive_objects=exclusive_objects, segvol=self.segvol)

    def object_ids(self, state: SessionState) -> list[int]:
        return sorted(state.objects)

    # --- prompts ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def add_box(self, state: SessionState, object_id: int, box: Sequence[int]) -> Change:
        """Segment an object from an inclusive box [z0, y0, x0, z1, y1, x1]; restarts the object if it exists."""
        _check_object_id(object_id)
        b = geo.validate_box(box, state.shape)
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        timer = StageTimer(self.device)
        roi, logits = self.decoder.decode(state, obj, b, np.zeros((0, 3), np.int64), np.zeros(0, np.int64), timer,
                                   use_old=False)
        self._push_undo(obj, "box")
        old_roi, old_logits = obj.roi, obj.logits
        obj.box, obj.clicks, obj.first_click, obj.hidden, obj.rounds = b, [], None, None, 0
        obj.text = None
        obj.roi, obj.logits = roi, logits
        state.objects[object_id] = obj
        return self._finish(state, obj, "box", old_roi, old_logits, timer)

    @property
    def supports_text(self) -> bool:
        """Text prompts need SegVol's text branch and SegVol's own inference (``zoom_in="segvol"``)."""
        return self.segvol and bool(getattr(self.backbone, "with_text", False))

    @property
    def prompt_kinds(self) -> list[str]:
        """The prompt kinds this model takes: "box", "points", and "text" when ``supports_text``."""
        return ["box", "points", *(["text"] if self.supports_text else [])]

    @torch.inference_mode()
    def add_text(self, state: SessionState, object_id: int, text: str, box: Sequence[int] | None = None,
                 points: Sequence[Sequence[int]] | np.ndarray | None = None,
                 labels: Sequence[int] | np.ndarray | None = None) -> Change:
        """Segment an object by its name ("liver", "left kidney"), alone or with a box and/or clicks.

        SegVol's text prompt: the name in SegVol's sentence, CLIP-encoded, given to every decode of SegVol's
        inference. Restarts the object (as ``add_box``); later decoder clicks keep the name. Needs a model with
        the text branch (``supports_text``); otherwise a ``ValueError`` naming ``text``.
        """
        _check_object_id(object_id)
        name = validate_name(text)
        if not self.supports_text:
            raise ValueError(f"text: the loaded model ({self.config_name}, zoom_in={self.config.zoom_in!r}) takes "
                             f"no text prompts; it takes {self.prompt_kinds}")
        b = geo.validate_box(box, state.shape) if box is not None else None
        pts, labs = np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
        if points is not None or labels is not None:
            pts, labs = geo.validate_points(points, labels, state.shape)
        embedding = self.text.embedding(name)
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        timer = StageTimer(self.device)
        roi, logits = self.decoder.decode_segvol(state, b, pts, labs, timer, embedding)
        self._push_undo(obj, "text")
        old_roi, old_logits = obj.roi, obj.logits
        clicks = [Click(int(p[0]), int(p[1]), int(p[2]), int(lab)) for p, lab in zip(pts, labs, strict=True)]
        obj.box, obj.clicks, obj.hidden, obj.rounds, obj.text = b, clicks, None, 0, name
        obj.first_click = (clicks[0].z, clicks[0].y, clicks[0].x) if clicks else None
        obj.roi, obj.logits = roi, logits
        state.objects[object_id] = obj
        return self._finish(state, obj, "decoder", old_roi, old_logits, timer)  # a decoder run; the wire format has no text step

    @torch.inference_mode()
    def add_clicks(
        self,
        state: SessionState,
        object_id: int,
        points: Sequence[Sequence[int]] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        mode: str = "both",
        on_change: OnChange | None = None,
        *,
        refine: bool = True,
    ) -> list[Change]:
        """Refine an object with clicks (label 1 = foreground, 0 = background).

        ``mode``: "gru" (the paper's sparse corrector step), "decoder" (re-run prompt encoder + mask decoder
        on the cached embeddings with the box and all clicks) or "both" (GRU first, streamed, then decoder).
        ``refine=False`` stops a "both" prompt after its GRU step: its decoder step is a later ``refine`` call
        (the service runs it off the click's path and once for several clicks); the result is the same.
        Returns one Change per step; ``on_change`` is called right after each step.
        """
        _check_object_id(object_id)
        pts, labs = geo.validate_points(points, labels, state.shape)
        if mode not in REFINE_MODES:
            raise ValueError(f"mode: expected one of {list(REFINE_MODES)}, got {mode!r}")
        if mode in ("gru", "both") and self.corrector is None:
            raise ValueError(f"mode: {mode!r} needs a corrector, and this predictor has none")
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        state.objects[object_id] = obj
        self._push_undo(obj, f"clicks:{mode}")
        new_clicks = [Click(int(p[0]), int(p[1]), int(p[2]), int(lab)) for p, lab in zip(pts, labs, strict=True)]
        if obj.first_click is None:
            obj.first_click = (new_clicks[0].z, new_clicks[0].y, new_clicks[0].x)
        obj.clicks = obj.clicks + new_clicks
        changes: list[Change] = []
        if mode in ("gru", "both"):
            changes.append(gru_step(self.corrector, self.config, state, obj))
            if on_change is not None:
                on_change(changes[-1])
        if mode == "decoder" or (mode == "both" and refine):
            changes.append(self._decoder_step(state, obj))
            if on_change is not None:
                on_change(changes[-1])
        return changes

    def trim_idle(self, state: SessionState) -> int:
        """Drop the session's rebuildable caches (window / ROI embeddings, geodesic click reaches); return the
        bytes freed. For a session nobody uses now: its next decoder step re-encodes its ROI once (tens of ms).
        Results do not change: every cache entry is a pure function of the image and its key, which is why a
        replay (cold caches) lands on the same masks as the session that had them warm."""
        before = state.nbytes
        state.window_cache.clear()
        state.geodesic_cache.clear()
        return before - state.nbytes

    @torch.inference_mode()
    def refine(self, state: SessionState, object_id: int) -> Change:
        """The decoder step of the object's clicks so far: the step a ``both`` click sent with ``refine=False``
        left out. No undo entry of its own: one undo still reverts the click and its refinement together."""
        obj = self._object(state, object_id)
        if not obj.clicks:
            raise ValueError(f"object_id: object {object_id} has no clicks to refine")
        return self._decoder_step(state, obj)

    def _decoder_step(self, state: SessionState, obj: ObjectState) -> Change:
        """Prompt encoder + mask decoder with the box, every click and the current logits as the mask prompt."""
        timer = StageTimer(self.device)
        if obj.undo_stack and obj.undo_stack[-1].logits is None and obj.undo_stack[-1].sparse_index is not None:
            # A sparse undo entry (a gru or both click's GRU step) is relative to the GRU step's logits, which the
            # decoder replaces: make it whole (here, on the decoder's lane, not on the click's).
            entry = obj.undo_stack[-1]
            assert obj.logits is not None and entry.sparse_values is not None
            restored = obj.logits.clone()
            restored.view(-1)[entry.sparse_index] = entry.sparse_values
            obj.undo_stack[-1] = replace(entry, logits=restored, sparse_index=None, sparse_values=None)
        all_pts, all_labs = click_arrays(exclusion_clicks(state, obj) + obj.clicks)
        roi, logits = self.decoder.decode(state, obj, obj.box, all_pts, all_labs, timer, use_old=True)
        old_roi, old_logits = obj.roi, obj.logits
        obj.roi, obj.logits = roi, logits
        return self._finish(state, obj, "decoder", old_roi, old_logits, timer)

    @torch.inference_mode()
    def add_region(
        self,
        state: SessionState,
        object_id: int,
        region: np.ndarray,
        label: int,
        mode: str = "both",
        on_change: OnChange | None = None,
    ) -> list[Change]:
        """Refine an object with a region prompt (a scribble's voxels or a filled lasso, ``app.models.regions``).

        The region is fed as clicks are: ``regions.sample_clicks`` voxels of it join the object's clicks with
        ``label`` (1 = foreground, 0 = background) and run the ``mode`` steps; the decoder step's result is then
        constrained so that every voxel of the region has ``label`` (the user drew those voxels: the model may
        decide the rest, not them). ``mode``: "decoder" or "both" (the constraint rides on the decoder step).
        An object without a box or mask that gets a foreground region is given the region's grown bounding box
        (``regions.box_around``) first, as the boxed models need one. One undo reverts the whole prompt.
        """
        _check_object_id(object_id)
        flat = regions.normalise(region, state.shape)
        if label not in (0, 1):
            raise ValueError(f"label: expected 0 or 1, got {label!r}")
        if mode not in REGION_MODES:
            raise ValueError(f"mode: expected one of {list(REGION_MODES)} for a region, got {mode!r}")
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        if obj.logits is None:
            mode = "decoder"  # nothing for the corrector to correct yet
        if mode == "both" and self.corrector is None:
            raise ValueError("mode: 'both' needs a corrector, and this predictor has none")
        state.objects[object_id] = obj
        self._push_undo(obj, f"region:{mode}")
        if obj.box is None and obj.logits is None and label == 1:
            obj.box = regions.box_around(flat, state.shape, state.spacing)
        picked = regions.sample_clicks(flat, state.shape)
        new_clicks = [Click(int(z), int(y), int(x), int(label)) for z, y, x in picked]
        if obj.first_click is None:
            obj.first_click = (new_clicks[0].z, new_clicks[0].y, new_clicks[0].x)
        obj.clicks = obj.clicks + new_clicks
        changes: list[Change] = []
        if mode == "both":
            changes.append(gru_step(self.corrector, self.config, state, obj))
            if on_change is not None:
                on_change(changes[-1])
        timer = StageTimer(self.device)
        all_pts, all_labs = click_arrays(exclusion_clicks(state, obj) + obj.clicks)
        roi, logits = self.decoder.decode(state, obj, obj.box, all_pts, all_labs, timer, use_old=True)
        roi, logits = constrain(state, roi, logits, flat, label, self.config)
        timer.lap("constrain")
        old_roi, old_logits = obj.roi, obj.logits
        obj.roi, obj.logits = roi, logits
        changes.append(self._finish(state, obj, "decoder", old_roi, old_logits, timer))
        if on_change is not None:
            on_change(changes[-1])
        return changes

    @torch.inference_mode()
    def set_mask(self, state: SessionState, object_id: int, mask: np.ndarray) -> Change:
        """Start an object from an existing (D, H, W) binary mask (clears its prompts and memory; undoable)."""
        _check_object_id(object_id)
        m = np.asarray(mask)
        if m.shape != state.shape:
            raise ValueError(f"mask: shape {list(m.shape)} does not match the volume {list(state.shape)}")
        if not (m.dtype == np.bool_ or np.issubdtype(m.dtype, np.integer)) or not np.isin(m, (0, 1)).all():
            raise ValueError("mask: expected a binary mask of 0/1 values")
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        timer = StageTimer(self.device)
        fb = geo.mask_bounds(m)
        roi = geo.grow_bounds(fb, 1, state.shape) if fb is not None else None
        logits = None
        if roi is not None:
            sub = torch.from_numpy(np.ascontiguousarray(m[geo.slices_of(roi)]).astype(bool)).to(self.device)
            logits = torch.where(sub, self.config.mask_logit, -self.config.mask_logit).float()
        self._push_undo(obj, "mask")
        old_roi, old_logits = obj.roi, obj.logits
        obj.box, obj.clicks, obj.first_click, obj.hidden, obj.rounds = None, [], None, None, 0
        obj.text = None
        obj.roi, obj.logits = roi, logits
        state.objects[object_id] = obj
        timer.lap("set_mask")
        return self._finish(state, obj, "mask", old_roi, old_logits, timer)

    @torch.inference_mode()
    def undo(self, state: SessionState, object_id: int) -> Change:
        """Put the object back exactly as it was before its last prompt (box, clicks, mask or reset)."""
        obj = self._object(state, object_id)
        if not obj.undo_stack:
            raise ValueError(f"object_id: nothing to undo for object {object_id}")
        timer = StageTimer(self.device)
        entry = obj.undo_stack.pop()
        old_roi, old_logits = obj.roi, obj.logits
        if entry.sparse_index is not None:
            assert obj.logits is not None and entry.sparse_values is not None  # invariant of _push_undo
            restored = obj.logits.clone()
            restored.view(-1)[entry.sparse_index] = entry.sparse_values
            obj.logits = restored
        else:
            obj.logits = entry.logits
        obj.roi, obj.box, obj.clicks, obj.text = entry.roi, entry.box, list(entry.clicks), entry.text
        obj.first_click, obj.hidden, obj.rounds = entry.first_click, entry.hidden, entry.rounds
        timer.lap("restore")
        return self._finish(state, obj, "undo", old_roi, old_logits, timer)

    @torch.inference_mode()
    def reset(self, state: SessionState, object_id: int) -> Change:
        """Empty the object (no box, clicks, mask or memory); undoable."""
        obj = self._object(state, object_id)
        timer = StageTimer(self.device)
        self._push_undo(obj, "reset")
        old_roi, old_logits = obj.roi, obj.logits
        obj.box, obj.clicks, obj.first_click, obj.hidden, obj.rounds = None, [], None, None, 0
        obj.text = None
        obj.roi, obj.logits = None, None
        timer.lap("reset")
        return self._finish(state, obj, "reset", old_roi, old_logits, timer)

    @torch.inference_mode()
    def remove_object(self, state: SessionState, object_id: int) -> Change:
        """Clear the object's mask and forget it (not undoable)."""
        obj = self._object(state, object_id)
        timer = StageTimer(self.device)
        indices, values, bbox = mask_diff(state.shape, obj.roi, obj.logits, None, None)
        del state.objects[object_id]
        timer.lap("diff")
        return Change(object_id, obj.version + 1, "reset", indices, values, bbox, timer.ms)

    # --- reading ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def get_mask(self, state: SessionState, object_id: int) -> np.ndarray:
        """The object's binary mask, (D, H, W) uint8."""
        obj = self._object(state, object_id)
        out = np.zeros(state.shape, dtype=np.uint8)
        if obj.roi is not None and obj.logits is not None:
            out[geo.slices_of(obj.roi)] = (obj.logits > 0).to(torch.uint8).cpu().numpy()
        return out

    @torch.inference_mode()
    def get_label_map(self, state: SessionState, order: Sequence[int] | None = None,
                      overlap: OverlapRule = "confidence") -> np.ndarray:
        """All (or the listed) objects as one (D, H, W) label map, value = object id (uint8, or uint16 past 255).

        ``order`` lists the objects to paint (default: all, ascending ids); it breaks ties under
        ``overlap="confidence"`` (the highest logit wins, then the later object) and is the paint order under
        ``"recent"`` (the later object wins). See ``app.models.label_map``.
        """
        check_overlap_rule(overlap)
        ids = self.object_ids(state) if order is None else list(order)
        objects = [self._object(state, oid) for oid in ids]  # unknown ids fail before any work
        dtype = label_dtype(ids)
        if overlap == "recent":
            return paint_in_order({o.object_id: self.get_mask(state, o.object_id) for o in objects}, ids,
                                  state.shape, dtype)
        rois = ((o.object_id, o.roi, o.logits.float().cpu().numpy()) for o in objects
                if o.roi is not None and o.logits is not None)
        return paint_by_confidence(rois, state.shape, dtype)
    # --- internals ----------------------------------------------------------------------------------------------

    def _object(self, state: SessionState, object_id: int) -> ObjectState:
        _check_object_id(object_id)
        try:
            return state.objects[object_id]
        except KeyError:
            raise UnknownObjectError(f"object_id: no object {object_id} in this session") from None

    def _push_undo(self, obj: ObjectState, step: str) -> None:
        # The old logits tensor is referenced, not copied: every step builds a new tensor. GRU-only steps
        # (<= 2K voxels written) turn this into a sparse record in corrector_step.gru_step.
        obj.undo_stack.append(UndoEntry(step=step, box=obj.box, clicks=list(obj.clicks), first_click=obj.first_click,
                                        roi=obj.roi, logits=obj.logits, hidden=obj.hidden, rounds=obj.rounds,
                                        text=obj.text))
        del obj.undo_stack[: -self.config.undo_depth]

    def _finish(self, state: SessionState, obj: ObjectState, step: str, old_roi: Bounds | None,
                old_logits: torch.Tensor | None, timer: StageTimer) -> Change:
        if step in _NEW_LOGITS_STEPS and self.corrector is not None and obj.logits is not None:
            # The next GRU click of the object needs the band of these logits: find it here, off the click's path
            # (a decoder step runs on the bulk lane and costs a hundred times more), not on the instant lane.
            obj.band = band_for(obj.band, obj.logits, self.config.tau)
            obj.own_logits = weakref.ref(obj.logits)  # made here, held by the object alone (see gru_step)
            timer.lap("band")
        indices, values, bbox = mask_diff(state.shape, old_roi, old_logits, obj.roi, obj.logits)
        timer.lap("diff")
        obj.version += 1
        return Change(obj.object_id, obj.version, step, indices, values, bbox, timer.ms)


# --- helpers ----------------------------------------------------------------------------------------------------


_NEW_LOGITS_STEPS = frozenset({"box", "decoder", "mask"})
"""The steps that give an object logits no GRU step has seen (an undo's are an earlier state's, found on use)."""


def _check_object_id(object_id: int) -> None:
    if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)) or not 1 <= object_id < 2**31:
        raise ValueError(f"object_id: expected an integer in [1, 2^31), got {object_id!r}")

