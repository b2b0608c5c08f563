"""The decoder step: an object's new logits over its ROI from the session's cached embeddings.

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
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch.nn import functional as F

from app.coordinates import Bounds
from app.models import geometry as geo
from app.models.backbone import Backbone
from app.models.click_regions import apply_click_regions
from app.models.predictor_config import PredictorConfig
from app.models.preprocess import resample_to_frame
from app.models.propagation import frame_sampling, propagate_clicks
from app.models.roi_logits import logits_over
from app.models.segvol_inference import SegVolPrompt, segment
from app.models.stage_timer import StageTimer
from app.models.state import ObjectState, SessionState
from app.models.text_prompts import TextEmbeddings


class Decoder:
    """The decoder paths of one predictor (``zoom_in`` picks one); stateless, every cache lives in the session."""

    def __init__(self, backbone: Backbone, roi_backbone: Backbone, config: PredictorConfig, device: torch.device,
                 text: TextEmbeddings) -> None:
        """``roi_backbone``: ``backbone`` set up for ``config.roi_frame`` (``build.frame_view``; the backbone itself
        when that is its own frame), used by the ``zoom_in="resample"`` path."""
        self.backbone, self.roi_backbone, self.config, self.device, self.text = (
            backbone, roi_backbone, config, device, text)
        self.frame: tuple[int, int, int] = tuple(backbone.frame)  # type: ignore[assignment]
        self.roi_frame: tuple[int, int, int] = tuple(config.roi_frame or self.frame)  # type: ignore[assignment]
        # "auto" is resolved against the weights' metadata by build_predictor; a bare Predictor uses windows.
        self.segvol = config.zoom_in == "segvol"
        self.resample = config.zoom_in == "resample"
        if self.resample and tuple(roi_backbone.frame) != self.roi_frame:
            raise ValueError(f"roi_frame: {list(self.roi_frame)} needs a backbone set up for that frame "
                             f"(build_predictor does it), got one for {list(roi_backbone.frame)}")

    def decode(self, state: SessionState, obj: ObjectState, box: geo.InclusiveBox | None, points: np.ndarray,
                labels: np.ndarray, timer: StageTimer, use_old: bool) -> tuple[Bounds | None, torch.Tensor | None]:
        """Zoom-out then zoom-in decode from cached embeddings; returns the new (ROI, logits over ROI), or
        (None, None) for an empty mask (``zoom_in="segvol"`` when the zoom-out finds nothing)."""
        if self.segvol:
            text = self.text.embedding(obj.text) if obj.text is not None else None
            return self.decode_segvol(state, box, points, labels, timer, text)
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
        prev = logits_over(obj, work, self.config.background_logit, self.device) if use_old else None
        logits = self._zoom_in(state, work, box, points, labels, frame_logits, prev, work if use_old else None,
                               timer)
        timer.lap("zoom_in")
        roi_vol = geo.bounds_intersection(work, (0, 0, 0, *state.shape))
        assert roi_vol is not None
        rel = tuple(slice(roi_vol[a] - work[a], roi_vol[a + 3] - work[a]) for a in range(3))
        return roi_vol, logits[rel].contiguous()

    def decode_segvol(self, state: SessionState, box: geo.InclusiveBox | None, points: np.ndarray,
                       labels: np.ndarray, timer: StageTimer, text: torch.Tensor | None = None,
                       ) -> tuple[Bounds | None, torch.Tensor | None]:
        """SegVol's own inference (``app.models.segvol_inference``); (None, None) = an empty mask."""
        prompt = SegVolPrompt(box=box, points=points, labels=labels, text_embedding=text)
        roi, logits = segment(self.backbone, state.image[0, 0], state.crop, state.zoom_out_embedding, prompt,
                              overlap=self.config.overlap, cache=state.window_cache)
        timer.lap("zoom_in")
        return roi, logits

    def _decode_resampled(self, state: SessionState, obj: ObjectState, box: geo.InclusiveBox, points: np.ndarray,
                          labels: np.ndarray, timer: StageTimer, use_old: bool) -> tuple[Bounds, torch.Tensor]:
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
            previous = resample_to_frame(logits_over(obj, roi, self.config.background_logit, self.device), rf)
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
                 prev_roi: Bounds | None, timer: StageTimer) -> torch.Tensor:
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

