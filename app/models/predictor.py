"""The shared, stateless predictor: verbs on an explicit ``SessionState`` (SAM 2's video predictor shape).

    predictor = build_predictor("compact")
    state = predictor.init_state(volume, spacing)              # normalises, encodes the zoom-out view once
    change = predictor.add_box(state, 1, [z0, y0, x0, z1, y1, x1])
    changes = predictor.add_clicks(state, 1, [[z, y, x]], [1], mode="both")
    predictor.undo(state, 1); predictor.reset(state, 1)

Every verb validates its arguments first (``ValueError`` naming the argument; the state is untouched), then
returns exactly what changed in the object's binary mask (``Change``). Methods block: call them off the event
loop, one at a time per session (the service holds a session lock and a device lock).

Pipeline (SPEC section 1-2):
    box / decoder step, ``zoom_in="segvol"`` (SegVol's own algorithm, ``app.models.segvol_inference``; the
        default of ``segvol-base``): zoom-out on the nearest-exact crop view -> region = the zoom-out
        foreground's box grown to about one window -> every window of the evenly zero-padded region decoded
        with SegVol's per-window prompts, averaged -> the region's logits are the object's. Each call starts
        from the object's current prompts alone (SegVol has no memory of earlier calls).
    box / decoder step, ``zoom_in="windows"`` (the project's variant of SegVol's zoom-in, which does not give
        SegVol's masks; ``docs/segvol-parity.md``): zoom-out decode of the cached frame embedding -> ROI =
        bbox(zoom-out > 0.5) U box U click balls, at least one window -> zoom-in: MONAI sliding windows (overlap
        0.5) at native resolution, each window's embedding cached in the session -> the ROI's logits replace
        the object's.
    box / decoder step, ``zoom_in="resample"`` (objects with a box): ROI = the box grown by ``roi_margin`` U
        click balls U the object's ROI -> resampled (trilinear) to ``roi_frame``, its embedding cached in the
        session -> one decode with the box, clicks and previous mask -> logits resampled back over the ROI.
        The model sees every object whole and at one scale, as it was trained (``training.sampler.roi_view``).
        Prompts without a box take the windows path.
    gru step: sample uncertain + error points (Algorithm 1) -> GRU corrector with the object's hidden state
        -> logit-domain update at the valid sampled points only.
    exclusive objects (``SessionState.exclusive_objects``, the default): both click steps also take the other
        objects' foreground clicks inside the object's ROI as background clicks (``exclusion_clicks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import Resize
from torch.nn import functional as F

from app.models import geometry as geo
from app.models import regions
from app.models.backbone import Backbone
from app.models.click_regions import RegionConfig, apply_click_regions
from app.models.clip_tokenizer import tokenize, validate_name
from app.models.corrector import GRUCorrector, apply_correction
from app.models.label_map import (
    OverlapRule,
    check_overlap_rule,
    label_dtype,
    paint_by_confidence,
    paint_in_order,
)
from app.models.preprocess import foreground_bounds, normalize_intensity, resample_to_frame
from app.models.propagation import PropagationConfig, frame_sampling, propagate_clicks
from app.models.sampling import SamplingConfig, build_corrector_input
from app.models.segvol_inference import SegVolPrompt, segment, zoom_out_view
from app.models.state import (
    REFINE_MODES,
    Bounds,
    Change,
    Click,
    ObjectState,
    SessionState,
    UndoEntry,
)

OnChange = Callable[[Change], None]
ZOOM_IN_MODES = ("auto", "segvol", "windows", "resample")
TEXT_CACHE_NAMES = 256  # text embeddings kept per predictor (3 KB each for segvol-base)
REGION_MODES = ("decoder", "both")
"""Modes of a region prompt: its constraint rides on the decoder step, which therefore always runs."""


class UnknownObjectError(KeyError):
    """The session has no object with that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object_id: unknown object"


@dataclass(frozen=True)
class PredictorConfig:
    """Run-time settings of the predictor (the model's hyper-parameters live in ``app.models.build``).

    Attributes:
        tau: uncertainty band |p - 0.5| < tau (paper: 0.1; the authors' code effectively used 0.4).
        k: points per set (uncertain, error) fed to the corrector.
        radius: error-sampling radius around each click, in voxels of the volume grid.
        overlap: zoom-in sliding-window overlap.
        undo_depth: undo levels kept per object.
        use_offsets: apply the corrector's coordinate-offset head.
        background_logit: logit given to voxels newly added to an object's ROI (p ~ 4.5e-5).
        mask_logit: |logit| used when an object starts from a given mask.
        roi_box_margin: ``zoom_in="windows"`` only: when a box is given, the zoom-out prediction only widens the
            zoom-in ROI up to this fraction of the box extent on each side (None: the whole zoom-out prediction
            united with the box); an unbounded union lets one stray zoom-out blob turn a small box into dozens of
            zoom-in windows, which costs seconds per prompt on a CPU, while the user's box already bounds the
            object. (SegVol's own region, ``zoom_in="segvol"``, is the zoom-out foreground's box alone.)
        zoom_in: "segvol" (SegVol's own inference, ``app.models.segvol_inference``: what the published
            weights were trained and evaluated with), "windows" (the project's variant: a ROI bounded by the
            box and clicks, windows widened with real voxels, windows without a prompt skipped), "resample"
            (the boxed ROI resampled to ``roi_frame``; for weights trained on ROI views) or "auto" (what the
            weights' metadata says they were trained for, else the configuration's default; resolved by
            ``build_predictor``).
        roi_frame: the frame the ROI is resampled to (None = the weights' metadata, else the backbone frame).
        roi_margin: the resampled ROI is the box grown by this fraction of its extent on each side.
        propagation_reach, propagation_tolerance, propagation_gain: geodesic click propagation on the
            resampled ROI path (``app.models.propagation``); reach 0 turns it off.
        click_region_reach, click_region_foreground_reach, click_region_tolerance, click_region_gain,
        click_region_confident: click regions on the resampled ROI path (a click flips the coherent error
            region it points at, ``app.models.click_regions``; not the region prompts of ``add_region``): the
            reach of background and of foreground clicks' regions (0 turns them off), the intensity tolerance,
            the logit written and the logit magnitude of the other label a region leaves alone.
        text_tokenizer: CLIP tokenizer files for text prompts (a ``tokenizer.json`` or a folder holding one);
            None = CLIP's vocabulary from the ``open-clip-torch`` package (``app.models.clip_tokenizer``).
    """

    tau: float = 0.1
    k: int = 200
    radius: float = 4.0
    overlap: float = 0.5
    undo_depth: int = 16
    use_offsets: bool = True
    background_logit: float = -10.0
    mask_logit: float = 10.0
    roi_box_margin: float | None = 0.5
    zoom_in: str = "auto"
    roi_frame: tuple[int, int, int] | None = None
    roi_margin: float = 0.3
    propagation_reach: float = PropagationConfig.reach
    propagation_tolerance: float = PropagationConfig.tolerance
    propagation_gain: float = PropagationConfig.gain
    click_region_reach: float = RegionConfig.reach
    click_region_foreground_reach: float = RegionConfig.foreground_reach
    click_region_tolerance: float = RegionConfig.tolerance
    click_region_gain: float = RegionConfig.gain
    click_region_confident: float = RegionConfig.confident
    text_tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.zoom_in not in ZOOM_IN_MODES:
            raise ValueError(f"zoom_in: expected one of {list(ZOOM_IN_MODES)}, got {self.zoom_in!r}")
        if self.roi_frame is not None and (len(self.roi_frame) != 3 or min(self.roi_frame) < 1):
            raise ValueError(f"roi_frame: expected three positive sizes, got {self.roi_frame!r}")
        if self.roi_margin < 0:
            raise ValueError(f"roi_margin: must be >= 0, got {self.roi_margin}")
        if self.roi_box_margin is not None and self.roi_box_margin < 0:
            raise ValueError(f"roi_box_margin: must be >= 0 or None, got {self.roi_box_margin}")
        SamplingConfig(tau=self.tau, k=self.k, radius=self.radius)  # validates tau, k, radius
        try:
            self.propagation  # noqa: B018  (validates the propagation fields)
        except ValueError as exc:
            raise ValueError(f"propagation_{exc}") from None
        try:
            self.click_regions  # noqa: B018  (validates the click region fields)
        except ValueError as exc:
            raise ValueError(f"click_region_{exc}") from None
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap: must be in [0, 1), got {self.overlap}")
        if self.undo_depth < 1:
            raise ValueError(f"undo_depth: must be >= 1, got {self.undo_depth}")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(tau=self.tau, k=self.k, radius=self.radius)

    @property
    def propagation(self) -> PropagationConfig:
        return PropagationConfig(reach=self.propagation_reach, tolerance=self.propagation_tolerance,
                                 gain=self.propagation_gain)

    @property
    def click_regions(self) -> RegionConfig:
        return RegionConfig(reach=self.click_region_reach, foreground_reach=self.click_region_foreground_reach,
                            tolerance=self.click_region_tolerance, gain=self.click_region_gain,
                            confident=self.click_region_confident)


class _Timer:
    """Named stage timings in milliseconds (synchronising CUDA so the numbers mean something)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now


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
        self.frame: tuple[int, int, int] = tuple(backbone.frame)  # type: ignore[assignment]
        # "auto" is resolved against the weights' metadata by build_predictor; a bare Predictor uses windows.
        self.resample = self.config.zoom_in == "resample"
        self.segvol = self.config.zoom_in == "segvol"
        self._text_cache: dict[str, torch.Tensor] = {}
        self.roi_frame: tuple[int, int, int] = tuple(self.config.roi_frame or self.frame)  # type: ignore[assignment]
        self.roi_backbone = roi_backbone.to(self.device).eval() if roi_backbone is not None else self.backbone
        if self.resample and tuple(self.roi_backbone.frame) != self.roi_frame:
            raise ValueError(f"roi_frame: {list(self.roi_frame)} needs a backbone set up for that frame "
                             f"(build_predictor does it), got one for {list(self.roi_backbone.frame)}")

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
        arr = geo.validate_volume(volume)
        sp = geo.validate_spacing(spacing)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        if not isinstance(exclusive_objects, bool):
            raise ValueError(f"exclusive_objects: expected a bool, got {exclusive_objects!r}")
        norm = normalize_intensity(arr)
        crop = foreground_bounds(norm)
        image = torch.from_numpy(norm).to(self.device)
        # Pad (at the end) to at least one window so zoom-in windows never need MONAI's implicit padding and a
        # window's cache key is simply its start in the volume grid.
        pad = [max(f - s, 0) for f, s in zip(self.frame, image.shape, strict=True)]
        image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))[None, None]
        if self.segvol:  # SegVol resizes the image with nearest-exact (MONAI 0.9.0 Resize)
            zoom_out = zoom_out_view(image[0, 0][geo.slices_of(crop)], self.frame)[None]
        else:
            zoom_out = Resize(spatial_size=self.frame, mode="nearest")(image[0][(slice(None), *geo.slices_of(crop))])
        embedding = self.backbone.encode(torch.as_tensor(zoom_out, device=self.device)[None].float())
        return SessionState(
            shape=tuple(int(s) for s in arr.shape),  # type: ignore[arg-type]
            spacing=sp,
            device=self.device,
            crop=crop,
            image=image,
            zoom_out_embedding=embedding,
            seed=seed,
            exclusive_objects=exclusive_objects,
        )

    def object_ids(self, state: SessionState) -> list[int]:
        return sorted(state.objects)

    # --- prompts ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def add_box(self, state: SessionState, object_id: int, box: Sequence[int]) -> Change:
        """Segment an object from an inclusive box [z0, y0, x0, z1, y1, x1]; restarts the object if it exists."""
        _check_object_id(object_id)
        b = geo.validate_box(box, state.shape)
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        timer = _Timer(self.device)
        roi, logits = self._decode(state, obj, b, np.zeros((0, 3), np.int64), np.zeros(0, np.int64), timer,
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
        embedding = self._text_embedding(name)
        obj = state.objects.get(object_id) or ObjectState(object_id=object_id)
        timer = _Timer(self.device)
        roi, logits = self._decode_segvol(state, b, pts, labs, timer, embedding)
        self._push_undo(obj, "text")
        old_roi, old_logits = obj.roi, obj.logits
        clicks = [Click(int(p[0]), int(p[1]), int(p[2]), int(lab)) for p, lab in zip(pts, labs, strict=True)]
        obj.box, obj.clicks, obj.hidden, obj.rounds, obj.text = b, clicks, None, 0, name
        obj.first_click = (clicks[0].z, clicks[0].y, clicks[0].x) if clicks else None
        obj.roi, obj.logits = roi, logits
        state.objects[object_id] = obj
        return self._finish(state, obj, "decoder", old_roi, old_logits, timer)  # a decoder run; the wire format has no text step

    def _text_embedding(self, name: str) -> torch.Tensor:
        """(1, C) SegVol text embedding of a name, computed once per name (the weights are shared)."""
        key = name.lower()
        cached = self._text_cache.get(key)
        if cached is None:
            tokens = tokenize([name], self.config.text_tokenizer)
            cached = self.backbone.embed_text(tokens.input_ids.to(self.device),  # type: ignore[attr-defined]
                                              tokens.attention_mask.to(self.device))
            self._text_cache[key] = cached
            if len(self._text_cache) > TEXT_CACHE_NAMES:  # names come from users: keep the newest only
                del self._text_cache[next(iter(self._text_cache))]
        return cached

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
            changes.append(self._gru_step(state, obj))
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
        if obj.undo_stack and obj.undo_stack[-1].logits is None and obj.undo_stack[-1].sparse_index is not None:
            # A sparse undo entry is relative to the GRU step's logits, which the decoder replaces: make it whole.
            entry = obj.undo_stack[-1]
            assert obj.logits is not None and entry.sparse_values is not None
            restored = obj.logits.clone()
            restored.view(-1)[entry.sparse_index] = entry.sparse_values
            obj.undo_stack[-1] = replace(entry, logits=restored, sparse_index=None, sparse_values=None)
        return self._decoder_step(state, obj)

    def _decoder_step(self, state: SessionState, obj: ObjectState) -> Change:
        """Prompt encoder + mask decoder with the box, every click and the current logits as the mask prompt."""
        timer = _Timer(self.device)
        all_pts, all_labs = _click_arrays(self.exclusion_clicks(state, obj) + obj.clicks)
        roi, logits = self._decode(state, obj, obj.box, all_pts, all_labs, timer, use_old=True)
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
            changes.append(self._gru_step(state, obj))
            if on_change is not None:
                on_change(changes[-1])
        timer = _Timer(self.device)
        all_pts, all_labs = _click_arrays(self.exclusion_clicks(state, obj) + obj.clicks)
        roi, logits = self._decode(state, obj, obj.box, all_pts, all_labs, timer, use_old=True)
        roi, logits = self._constrain(state, roi, logits, flat, label)
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
        timer = _Timer(self.device)
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
        timer = _Timer(self.device)
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
        timer = _Timer(self.device)
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
        timer = _Timer(self.device)
        indices, values, bbox = _mask_diff(state.shape, obj.roi, obj.logits, None, None)
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
    def get_probabilities(self, state: SessionState, object_id: int) -> tuple[Bounds | None, np.ndarray | None]:
        """The object's ROI and its probability map over that ROI (float32), or (None, None) when empty."""
        obj = self._object(state, object_id)
        if obj.roi is None or obj.logits is None:
            return None, None
        return obj.roi, torch.sigmoid(obj.logits).cpu().numpy()

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

    def exclusion_clicks(self, state: SessionState, obj: ObjectState) -> list[Click]:
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

    # --- internals ----------------------------------------------------------------------------------------------

    def _object(self, state: SessionState, object_id: int) -> ObjectState:
        _check_object_id(object_id)
        try:
            return state.objects[object_id]
        except KeyError:
            raise UnknownObjectError(f"object_id: no object {object_id} in this session") from None

    def _push_undo(self, obj: ObjectState, step: str) -> None:
        # The old logits tensor is referenced, not copied: every step builds a new tensor. GRU-only steps
        # (<= 2K voxels written) turn this into a sparse record in _gru_step.
        obj.undo_stack.append(UndoEntry(step=step, box=obj.box, clicks=list(obj.clicks), first_click=obj.first_click,
                                        roi=obj.roi, logits=obj.logits, hidden=obj.hidden, rounds=obj.rounds,
                                        text=obj.text))
        del obj.undo_stack[: -self.config.undo_depth]

    def _finish(self, state: SessionState, obj: ObjectState, step: str, old_roi: Bounds | None,
                old_logits: torch.Tensor | None, timer: _Timer) -> Change:
        indices, values, bbox = _mask_diff(state.shape, old_roi, old_logits, obj.roi, obj.logits)
        timer.lap("diff")
        obj.version += 1
        return Change(obj.object_id, obj.version, step, indices, values, bbox, timer.ms)

    def _gru_step(self, state: SessionState, obj: ObjectState) -> Change:
        """One corrector round on the object (paper section 2.2-2.5)."""
        assert self.corrector is not None  # checked by add_clicks
        cfg = self.config
        timer = _Timer(self.device)
        clicks, labels = _click_arrays(self.exclusion_clicks(state, obj) + obj.clicks)
        old_roi, old_logits = obj.roi, obj.logits
        roi = geo.bounds_union(old_roi, geo.ball_bounds(clicks, cfg.radius, state.shape))
        assert roi is not None  # there is at least one click
        logits = self._logits_over(obj, roi)
        # The object's first click; the box centre before any click (SPEC section 2.3).
        anchor = obj.first_click if obj.first_click is not None else _box_centre(obj.box)  # type: ignore[arg-type]
        gen = torch.Generator(device=self.device).manual_seed(_round_seed(state.seed, obj.object_id, obj.rounds))
        inp = build_corrector_input(
            logits, roi, state.shape,
            torch.as_tensor(clicks, device=self.device), torch.as_tensor(labels, device=self.device),
            anchor, cfg.sampling, gen,
        )
        timer.lap("sample")
        out = self.corrector(inp.features[None], obj.hidden)
        timer.lap("corrector")
        delta_c = out.delta_c[0] if (cfg.use_offsets and out.delta_c is not None) else None
        new_logits, touched = apply_correction(logits, roi, state.shape, inp.coords, inp.valid,
                                               out.delta_p[0], delta_c)
        timer.lap("update")
        obj.hidden, obj.rounds = out.hidden, obj.rounds + 1
        obj.roi, obj.logits = roi, new_logits
        entry = obj.undo_stack[-1]
        if roi == old_roi and old_logits is not None and entry.step == "clicks:gru":
            # Keep only the overwritten values instead of a second full copy of the ROI.
            flat = _local_flat(touched, geo.bounds_shape(roi))
            obj.undo_stack[-1] = replace(entry, logits=None, sparse_index=flat,
                                         sparse_values=old_logits.reshape(-1)[flat].clone())
            indices, values, bbox = _sparse_diff(state.shape, roi, old_logits, new_logits, touched)
        else:
            indices, values, bbox = _mask_diff(state.shape, old_roi, old_logits, roi, new_logits)
        timer.lap("diff")
        obj.version += 1
        return Change(obj.object_id, obj.version, "gru", indices, values, bbox, timer.ms)

    def _constrain(self, state: SessionState, roi: Bounds, logits: torch.Tensor, flat: np.ndarray, label: int
                   ) -> tuple[Bounds, torch.Tensor]:
        """``logits`` over ``roi`` grown to cover the region, with the region's voxels set to ``label``."""
        grown = geo.bounds_union(roi, regions.bounds(flat, state.shape))
        assert grown is not None
        if grown != roi:
            out = torch.full(geo.bounds_shape(grown), self.config.background_logit, device=self.device)
            rel = tuple(slice(roi[a] - grown[a], roi[a + 3] - grown[a]) for a in range(3))
            out[rel] = logits
        else:
            out = logits.clone()  # never mutate a tensor an undo entry may hold
        zyx = np.unravel_index(flat, state.shape)
        local = np.ravel_multi_index(tuple(zyx[a] - grown[a] for a in range(3)), geo.bounds_shape(grown))
        value = self.config.mask_logit if label == 1 else -self.config.mask_logit
        out.view(-1)[torch.as_tensor(local, device=self.device)] = value
        return grown, out

    def _logits_over(self, obj: ObjectState, roi: Bounds) -> torch.Tensor:
        """The object's logits on ``roi`` (which contains its current ROI), background where it had none."""
        if obj.roi == roi and obj.logits is not None:
            return obj.logits
        out = torch.full(geo.bounds_shape(roi), self.config.background_logit, device=self.device)
        if obj.roi is not None and obj.logits is not None:
            rel = tuple(slice(obj.roi[a] - roi[a], obj.roi[a + 3] - roi[a]) for a in range(3))
            out[rel] = obj.logits
        return out

    def _decode(self, state: SessionState, obj: ObjectState, box: geo.InclusiveBox | None, points: np.ndarray,
                labels: np.ndarray, timer: _Timer, use_old: bool) -> tuple[Bounds | None, torch.Tensor | None]:
        """Zoom-out then zoom-in decode from cached embeddings; returns the new (ROI, logits over ROI), or
        (None, None) for an empty mask (``zoom_in="segvol"`` when the zoom-out finds nothing)."""
        if self.segvol:
            text = self._text_embedding(obj.text) if obj.text is not None else None
            return self._decode_segvol(state, box, points, labels, timer, text)
        if self.resample and box is not None:
            return self._decode_resampled(state, obj, box, points, labels, timer, use_old)
        frame_logits = self._zoom_out(state, box, points, labels)
        timer.lap("zoom_out")
        roi = None
        fg = torch.nonzero(frame_logits[0, 0] > 0)
        if fg.shape[0] > 0:
            lo, hi = fg.min(dim=0).values.tolist(), (fg.max(dim=0).values + 1).tolist()
            roi = geo.frame_bounds_to_volume((*lo, *hi), state.crop, self.frame)  # type: ignore[arg-type]
        if box is not None:
            box_b = geo.box_to_bounds(box)
            if roi is not None and self.config.roi_box_margin is not None:
                margin = [int(round(self.config.roi_box_margin * e)) + 1 for e in geo.bounds_shape(box_b)]
                roi = geo.bounds_intersection(roi, geo.grow_bounds(box_b, margin, state.shape))
            roi = geo.bounds_union(roi, box_b)
        roi = geo.bounds_union(roi, geo.ball_bounds(points, self.config.radius, state.shape))
        if use_old:
            roi = geo.bounds_union(roi, obj.roi)
        if roi is None:  # no prompt reached the volume and nothing was predicted: an empty object
            roi = geo.ball_bounds(np.array([[s // 2 for s in state.shape]]), 0, state.shape)
            assert roi is not None
        padded = tuple(int(s) for s in state.image.shape[2:])
        work = geo.expand_to_min_size(roi, self.frame, padded)  # type: ignore[arg-type]
        # work contains the object's current ROI when use_old (roi was united with it above).
        prev = self._logits_over(obj, work) if use_old else None
        logits = self._zoom_in(state, work, box, points, labels, frame_logits, prev, work if use_old else None,
                               timer)
        timer.lap("zoom_in")
        roi_vol = geo.bounds_intersection(work, (0, 0, 0, *state.shape))
        assert roi_vol is not None
        rel = tuple(slice(roi_vol[a] - work[a], roi_vol[a + 3] - work[a]) for a in range(3))
        return roi_vol, logits[rel].contiguous()

    def _decode_segvol(self, state: SessionState, box: geo.InclusiveBox | None, points: np.ndarray,
                       labels: np.ndarray, timer: _Timer, text: torch.Tensor | None = None,
                       ) -> tuple[Bounds | None, torch.Tensor | None]:
        """SegVol's own inference (``app.models.segvol_inference``); (None, None) = an empty mask."""
        prompt = SegVolPrompt(box=box, points=points, labels=labels, text_embedding=text)
        roi, logits = segment(self.backbone, state.image[0, 0], state.crop, state.zoom_out_embedding, prompt,
                              overlap=self.config.overlap, cache=state.window_cache)
        timer.lap("zoom_in")
        return roi, logits

    def _decode_resampled(self, state: SessionState, obj: ObjectState, box: geo.InclusiveBox, points: np.ndarray,
                          labels: np.ndarray, timer: _Timer, use_old: bool) -> tuple[Bounds, torch.Tensor]:
        """The boxed ROI resampled to ``roi_frame``, decoded once, resampled back (module docstring)."""
        rf = self.roi_frame
        grown = geo.bounds_union(geo.roi_bounds(box, self.config.roi_margin, state.shape),
                                 geo.ball_bounds(points, self.config.radius, state.shape))
        if use_old:
            grown = geo.bounds_union(grown, obj.roi)
        assert grown is not None  # the box alone gives one
        roi: Bounds = grown
        key = ("roi", *roi)
        emb = state.window_cache.get(key)
        if emb is None:
            pixels = resample_to_frame(state.image[0, 0][geo.slices_of(roi)], rf)
            emb = self.roi_backbone.encode(pixels[None, None])
            state.window_cache[key] = emb
        timer.lap("encode")
        fbox = geo.box_to_frame(box, roi, rf)
        assert fbox is not None  # the ROI contains the box
        boxes = torch.tensor([fbox], dtype=torch.float32, device=self.device)
        pts, labs = None, None
        if len(points):
            pts = torch.as_tensor(geo.points_to_frame(points, roi, rf), dtype=torch.float32, device=self.device)[None]
            labs = torch.as_tensor(labels, dtype=torch.long, device=self.device)[None]
        previous = None  # the object's logits before this step, on the frame
        if use_old and obj.logits is not None:
            previous = resample_to_frame(self._logits_over(obj, roi), rf)
        mask = previous[None, None] if self.backbone.supports_mask_prompt and previous is not None else None
        frame_logits = self.roi_backbone.decode(emb, boxes, pts, labs, mask)[0, 0]
        timer.lap("zoom_in")
        propagation, click_regions = self.config.propagation, self.config.click_regions
        frame_image: torch.Tensor | None = None

        # The frame image is resampled again (a few ms) only when a click needs it.
        def pixels() -> torch.Tensor:
            nonlocal frame_image
            if frame_image is None:
                frame_image = resample_to_frame(state.image[0, 0][geo.slices_of(roi)], rf)
            return frame_image

        sampling = frame_sampling(geo.bounds_shape(roi), rf, state.spacing)
        if propagation.enabled and len(points):
            frame_logits = propagate_clicks(frame_logits, pixels, geo.points_to_frame(points, roi, rf), labels,
                                            sampling, propagation, state.geodesic_cache, ("geo", *roi))
            timer.lap("propagate")
        if click_regions.enabled and len(points) and previous is not None:
            frame_logits = apply_click_regions(frame_logits, previous, pixels(), geo.points_to_frame(points, roi, rf),
                                               labels, sampling, click_regions)
            timer.lap("regions")
        logits = resample_to_frame(frame_logits, geo.bounds_shape(roi))
        timer.lap("resample_back")
        return roi, logits.contiguous()

    def _zoom_out(self, state: SessionState, box: geo.InclusiveBox | None, points: np.ndarray,
                  labels: np.ndarray) -> torch.Tensor:
        """(1, 1, *frame) logits of the zoom-out view for these prompts."""
        fbox = geo.box_to_frame(box, state.crop, self.frame) if box is not None else None
        boxes = torch.tensor([fbox], dtype=torch.float32, device=self.device) if fbox is not None else None
        pts, labs = None, None
        if len(points):
            fp = geo.points_to_frame(points, state.crop, self.frame)
            pts = torch.as_tensor(fp, dtype=torch.float32, device=self.device)[None]
            labs = torch.as_tensor(labels, dtype=torch.long, device=self.device)[None]
        return self.backbone.decode(state.zoom_out_embedding, boxes, pts, labs, None)

    def _zoom_in(self, state: SessionState, work: Bounds, box: geo.InclusiveBox | None, points: np.ndarray,
                 labels: np.ndarray, frame_logits: torch.Tensor, prev: torch.Tensor | None,
                 prev_roi: Bounds | None, timer: _Timer) -> torch.Tensor:
        """Sliding-window decode over ``work`` (volume grid); returns logits of shape bounds_shape(work)."""
        image = state.image[(slice(None), slice(None), *geo.slices_of(work))]

        def predict(window: torch.Tensor, locations: list[list[slice]]) -> torch.Tensor:
            outs = []
            for b, loc in enumerate(locations):
                start = tuple(work[a] + loc[2 + a].start for a in range(3))
                win: Bounds = (*start, *(s + f for s, f in zip(start, self.frame, strict=True)))  # type: ignore
                outs.append(self._decode_window(state, win, window[b : b + 1], box, points, labels,
                                                frame_logits, prev, prev_roi))
            return torch.cat(outs)

        out = sliding_window_inference(image, self.frame, 1, predict, overlap=self.config.overlap,
                                       mode="constant", with_coord=True)
        return out[0, 0]  # type: ignore[index]

    def _decode_window(self, state: SessionState, win: Bounds, pixels: torch.Tensor,
                       box: geo.InclusiveBox | None, points: np.ndarray, labels: np.ndarray,
                       frame_logits: torch.Tensor, prev: torch.Tensor | None, prev_roi: Bounds | None,
                       ) -> torch.Tensor:
        wbox = geo.box_in_window(box, win) if box is not None else None
        wpts, wlabs = geo.points_in_window(points, labels, win)
        if wbox is None and len(wpts) == 0:
            # No prompt reaches this window: keep the zoom-out prediction there (the project's choice; SegVol
            # decodes every window of its region with the zoom-out foreground's box as the prompt).
            return self._zoom_out_in_window(state, frame_logits, win)
        key = win[:3]
        emb = state.window_cache.get(key)  # type: ignore[arg-type]
        if emb is None:
            emb = self.backbone.encode(pixels)
            state.window_cache[key] = emb  # type: ignore[index]
        boxes = torch.tensor([wbox], dtype=torch.float32, device=self.device) if wbox is not None else None
        pts = torch.as_tensor(wpts, dtype=torch.float32, device=self.device)[None] if len(wpts) else None
        labs = torch.as_tensor(wlabs, dtype=torch.long, device=self.device)[None] if len(wpts) else None
        mask = None
        if self.backbone.supports_mask_prompt and prev is not None and prev_roi is not None:
            mask = torch.full(self.frame, self.config.background_logit, device=self.device)
            inter = geo.bounds_intersection(win, prev_roi)
            if inter is not None:
                dst = tuple(slice(inter[a] - win[a], inter[a + 3] - win[a]) for a in range(3))
                src = tuple(slice(inter[a] - prev_roi[a], inter[a + 3] - prev_roi[a]) for a in range(3))
                mask[dst] = prev[src]
            mask = mask[None, None]
        return self.backbone.decode(emb, boxes, pts, labs, mask)

    def _zoom_out_in_window(self, state: SessionState, frame_logits: torch.Tensor, win: Bounds) -> torch.Tensor:
        """Trilinear sample of the zoom-out logits over a volume window (background outside the crop)."""
        crop = state.crop
        cs = geo.bounds_shape(crop)
        axes = []
        for a in range(3):
            v = torch.arange(win[a], win[a + 3], device=self.device, dtype=torch.float32) - crop[a]
            axes.append((2 * (v + 0.5) / cs[a]) - 1)  # align_corners=False normalisation over the crop
        gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack((gx, gy, gz), dim=-1)[None]  # grid_sample wants (x, y, z) order
        out = F.grid_sample(frame_logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
        inside = (grid.abs() <= 1).all(dim=-1)[:, None]
        return torch.where(inside, out, torch.full_like(out, self.config.background_logit))


# --- helpers ----------------------------------------------------------------------------------------------------


def _click_arrays(clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) int64 points (z, y, x) and (N,) int64 labels of ``clicks``."""
    points = np.array([[c.z, c.y, c.x] for c in clicks], dtype=np.int64).reshape(-1, 3)
    return points, np.array([c.label for c in clicks], dtype=np.int64)


def _check_object_id(object_id: int) -> None:
    if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)) or not 1 <= object_id < 2**31:
        raise ValueError(f"object_id: expected an integer in [1, 2^31), got {object_id!r}")


def _box_centre(box: geo.InclusiveBox) -> tuple[int, int, int]:
    return ((box[0] + box[3]) // 2, (box[1] + box[4]) // 2, (box[2] + box[5]) // 2)


def _round_seed(seed: int, object_id: int, rounds: int) -> int:
    """A distinct, reproducible seed per (session seed, object, corrector round)."""
    return (seed * 1_000_003 + int(object_id) * 10_007 + rounds) % (2**62)


def _local_flat(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    return (coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]


def _to_volume(coords: torch.Tensor, origin: Bounds, shape: tuple[int, int, int]
               ) -> tuple[np.ndarray, tuple[int, int, int, int, int, int] | None]:
    """Local (m, 3) coords in a region starting at origin -> ascending volume flat indices + inclusive bbox."""
    if coords.shape[0] == 0:
        return np.zeros(0, np.int64), None
    g = coords + torch.as_tensor(origin[:3], device=coords.device)
    flat = _local_flat(g, shape).cpu().numpy().astype(np.int64)
    lo, hi = g.min(dim=0).values.tolist(), g.max(dim=0).values.tolist()
    return flat, (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def _mask_diff(shape: tuple[int, int, int], old_roi: Bounds | None, old: torch.Tensor | None,
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


def _sparse_diff(shape: tuple[int, int, int], roi: Bounds, old: torch.Tensor, new: torch.Tensor,
                 touched: torch.Tensor) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int, int, int] | None]:
    """Diff of a step that only wrote ``touched`` (m, 3) local voxels of an unchanged ROI."""
    if touched.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), None
    t = touched.long()
    before = old[t[:, 0], t[:, 1], t[:, 2]] > 0
    after = new[t[:, 0], t[:, 1], t[:, 2]] > 0
    sel = before != after
    coords = t[sel]
    flat, bbox = _to_volume(coords, roi, shape)
    values = after[sel].to(torch.uint8).cpu().numpy()
    order = np.argsort(flat, kind="stable")
    return flat[order], values[order], bbox
