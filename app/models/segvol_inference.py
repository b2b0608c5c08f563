"""SegVol's own zoom-out / zoom-in inference (``PredictorConfig.zoom_in="segvol"``), step for step.

The published SegVol weights were trained and evaluated with this algorithm; running them any other way gives
other masks. The steps and their sources in SegVol's reference code (BAAI-DCAI/SegVol @ 5768c97, MONAI 0.9.0)
are listed in ``docs/segvol-parity.md``; a parity test (``tests/models/test_segvol_parity.py``) checks every
stage against outputs of that code. In short, on the foreground crop of the normalised volume (the "ROI grid",
shape ``S``; ``app.models.preprocess``):

1. zoom-out: the crop resized to the frame with ``nearest-exact``; a user box becomes the frame extent of its
   solid cube resized the same way; a user point at crop index ``q`` becomes frame voxel ``floor(q * F / S)``.
2. the frame logits go back to the ROI grid with legacy ``nearest`` (ROI voxel ``v`` reads ``floor(v * F / S)``
   in float32, as PyTorch computes it), and so do the box cube and the map of the positive points.
3. region: the bounding box of the zoom-out foreground (sigmoid > 0.5) grown to about one window, clipped to
   the crop. Nothing else enters it. No foreground: the zoom-out result is the answer (an empty mask).
4. windows: the region zero-padded evenly to at least one window; MONAI 0.9.0's window starts (overlap 0.5);
   every window decoded, each with SegVol's own prompt (``window_prompt``); logits averaged.
5. the merged logits replace the zoom-out logits inside the region; the mask is sigmoid > 0.5.

Outside the region every zoom-out logit is background (the region holds the whole zoom-out foreground), so the
object keeps logits over the region only: the mask is the reference's, voxel for voxel.

Where the reference defines nothing (a user's point, box and points together, the random point draws), the
choices are documented in ``docs/segvol-parity.md`` and marked "choice" below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from app.coordinates import Bounds, Shape3
from app.models.backbone import Backbone

NO_BOX = (-1.0, -1.0, -1.0, -1.0, -1.0, -1.0)  # SegVol's generate_box of an empty mask
NO_POINT = (-1.0, -1.0, -1.0)
POINTS_PER_WINDOW = 5  # select_points' defaults: 1 drawn + 4 extra positives, padded with label -1
EXTRA_POSITIVES = 4


@dataclass(frozen=True)
class SegVolPrompt:
    """One object's prompts in the volume grid: all optional, at least one given.

    box: inclusive [z0, y0, x0, z1, y1, x1]; points: (N, 3) int voxel indices; labels: (N,) 0/1;
    text_embedding: (1, C) from ``SegVol.embed_text``.
    """

    box: tuple[int, int, int, int, int, int] | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    text_embedding: Tensor | None = None


@dataclass
class WindowTrace:
    """One zoom-in window as decoded: position in the volume grid (half-open, may pass the volume's edges
    where the region is zero-padded), its prompt in window coordinates and its frame logits."""

    bounds: Bounds
    box: tuple[float, ...] | None
    points: list[tuple[float, float, float]] | None
    point_labels: list[float] | None
    logits: Tensor


@dataclass
class SegVolTrace:
    """Every intermediate of one ``segment`` call, for the parity test and debugging (filled when passed)."""

    frame_box: tuple[float, ...] | None = None
    frame_points: np.ndarray | None = None
    frame_labels: np.ndarray | None = None
    zoom_out_logits: Tensor | None = None
    region: Bounds | None = None
    windows: list[WindowTrace] = field(default_factory=list)


# --- resampling rules ----------------------------------------------------------------------------------------


def _source_index(n_in: int, n_out: int, mode: str) -> Tensor:
    """For each of ``n_out`` output voxels, the input voxel PyTorch's ``interpolate(mode)`` reads.

    Computed by PyTorch itself on an index ramp, so float32 rounding at the boundaries is the one SegVol got.
    """
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None]
    return F.interpolate(ramp, size=n_out, mode=mode)[0, 0].long()


def zoom_out_view(crop_image: Tensor, frame: Shape3) -> Tensor:
    """(d, h, w) normalised crop -> (frame) zoom-out image, resized with ``nearest-exact`` (MONAI Resize)."""
    return F.interpolate(crop_image[None, None].float(), size=frame, mode="nearest-exact")[0, 0]


def frame_box(box: tuple[int, ...], crop: Bounds, frame: Shape3) -> tuple[float, ...]:
    """A user box's frame box: the extent of its solid cube resized with ``nearest-exact`` (SegVol's
    ``generate_box`` of the resized label). Choice: a box thinner than the sampling step along an axis, which
    no frame voxel samples, takes the frame voxel that reads the voxel nearest its centre (the reference would
    give the "no box" [-1] x 6)."""
    lo, hi = [], []
    for ax in range(3):
        size = crop[ax + 3] - crop[ax]
        a = min(max(box[ax] - crop[ax], 0), size - 1)
        b = min(max(box[ax + 3] - crop[ax], 0), size - 1)
        src = _source_index(size, frame[ax], "nearest-exact")
        inside = torch.nonzero((src >= a) & (src <= b)).flatten()
        if inside.numel():
            lo.append(float(inside[0]))
            hi.append(float(inside[-1]))
        else:
            nearest = int(torch.argmin((src.float() - (a + b) / 2).abs()))
            lo.append(float(nearest))
            hi.append(float(nearest))
    return (*lo, *hi)


def frame_points(points: np.ndarray, crop: Bounds, frame: Shape3) -> np.ndarray:
    """Choice (the reference has no user points): crop index ``q`` -> frame voxel ``floor(q * F / S)``, the one
    mapping whose legacy-nearest point map (step 2) contains the user's own voxel. Points outside the crop are
    clamped to its edge first."""
    size = np.asarray([crop[3] - crop[0], crop[4] - crop[1], crop[5] - crop[2]], dtype=np.int64)
    q = np.clip(points.astype(np.int64) - np.asarray(crop[:3], dtype=np.int64), 0, size - 1)
    return ((q * np.asarray(frame, dtype=np.int64)) // size).astype(np.float64)


@dataclass(frozen=True)
class _RoiGrid:
    """The legacy-nearest map from the frame back to the ROI grid (the crop), per axis."""

    size: Shape3
    source: tuple[Tensor, Tensor, Tensor]  # ROI voxel -> frame voxel it reads, per axis

    @classmethod
    def of(cls, size: Shape3, frame: Shape3) -> _RoiGrid:
        return cls(size, tuple(_source_index(frame[a], size[a], "nearest") for a in range(3)))  # type: ignore[arg-type]

    def span(self, axis: int, f_lo: int, f_hi: int) -> tuple[int, int] | None:
        """Inclusive ROI range whose frame source lies in [f_lo, f_hi] along ``axis``; None if it is empty."""
        idx = torch.nonzero((self.source[axis] >= f_lo) & (self.source[axis] <= f_hi)).flatten()
        return (int(idx[0]), int(idx[-1])) if idx.numel() else None

    def gather(self, frame_values: Tensor, region: Bounds) -> Tensor:
        """``interpolate(frame_values, size, mode="nearest")`` restricted to ``region`` (ROI coordinates)."""
        s = [self.source[a][region[a] : region[a + 3]].to(frame_values.device) for a in range(3)]
        return frame_values[s[0]][:, s[1]][:, :, s[2]]


# --- region and windows ----------------------------------------------------------------------------------------


def foreground_region(grid: _RoiGrid, frame_fg: Tensor, frame: Shape3) -> Bounds | None:
    """SegVol's ``logits2roi_coor`` on the ROI-grid zoom-out foreground, as half-open ROI coordinates.

    ``frame_fg``: (frame) bool, sigmoid(zoom-out logits) > 0.5. The ROI-grid foreground is read through the
    legacy-nearest map, so only the frame voxels some ROI voxel reads count.
    """
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        read = [torch.unique(grid.source[a]).to(frame_fg.device) for a in range(3)]
        sub = frame_fg[read[0]][:, read[1]][:, :, read[2]]
        hit = torch.nonzero(sub.any(dim=other)).flatten()
        if hit.numel() == 0:
            return None
        span = grid.span(ax, int(read[ax][hit[0]]), int(read[ax][hit[-1]]))
        assert span is not None  # those frame voxels are read by construction
        a, b = span
        pad = max(0, frame[ax] - (b - a + 1))
        size = grid.size[ax]
        lo.append(max(0, a - pad // 2))
        hi.append(min(size, b + pad // 2 + 1))  # SegVol clips hi at S (not S - 1), then slices [lo : hi + 1]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """MONAI 0.9.0 ``dense_patch_slices`` along one axis of the padded region (size >= window)."""
    interval = window if size == window else max(int(window * (1 - overlap)), 1)
    starts, start = [], 0
    while True:
        starts.append(min(start, size - window))
        if start + window >= size:
            return starts
        start += interval


def _box_of(mask: Tensor) -> tuple[float, ...] | None:
    """Inclusive bounding box of the nonzero voxels (``generate_box``), None when empty."""
    idx = torch.nonzero(mask)
    if idx.shape[0] == 0:
        return None
    lo, hi = idx.min(dim=0).values.tolist(), idx.max(dim=0).values.tolist()
    return tuple(float(v) for v in (*lo, *hi))


def _select_points(positives: np.ndarray, anchors: np.ndarray) -> tuple[list[tuple[float, float, float]], list[float]]:
    """SegVol's ``select_points`` with default arguments, its random draws replaced by a rule (choice).

    The reference draws one positive at random, then up to 4 from a random permutation of all positives, then
    pads with (-1, -1, -1) / label -1 to 5 points (one point when there is no positive). Here the drawn one is
    the positive nearest a user click (``anchors``, window coordinates) and the extras are the 4 nearest (ties
    in index order): the same set of points whenever a window holds at most 4 positives (the decoder does not
    depend on the order of its point tokens).
    """
    if len(positives) == 0:
        return [NO_POINT], [-1.0]
    if len(anchors):
        dist = np.min(np.linalg.norm(positives[:, None, :] - anchors[None, :, :], axis=2), axis=1)
    else:
        dist = np.zeros(len(positives))
    order = np.argsort(dist, kind="stable")
    chosen = [order[0], *order[:EXTRA_POSITIVES]]
    pts = [tuple(float(v) for v in positives[i]) for i in chosen]
    pad = POINTS_PER_WINDOW - len(pts)
    return pts + [NO_POINT] * pad, [1.0] * len(chosen) + [-1.0] * pad  # type: ignore[return-value]


# --- the algorithm ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def segment(
    backbone: Backbone,
    image: Tensor,
    crop: Bounds,
    zoom_out_embedding: Tensor,
    prompt: SegVolPrompt,
    *,
    overlap: float = 0.5,
    cache: dict | None = None,
    trace: SegVolTrace | None = None,
) -> tuple[Bounds | None, Tensor | None]:
    """Run SegVol's inference for one object.

    Args:
        backbone: a SegVol backbone.
        image: (D', H', W') normalised volume (it may extend past the volume at the end; only ``crop`` is read).
        crop: the foreground crop (volume grid, half-open).
        zoom_out_embedding: ``backbone.encode(zoom_out_view(crop image))``.
        prompt: the object's prompts.
        overlap: window overlap (SegVol: 0.5).
        cache: window embeddings, keyed by the window's volume bounds and the part of it that holds image.
        trace: filled with every intermediate when given.
    Returns:
        (region in the volume grid, logits over it), or (None, None) when the zoom-out finds no foreground.
    """
    frame: Shape3 = tuple(backbone.frame)  # type: ignore[assignment]
    device = zoom_out_embedding.device
    size: Shape3 = (crop[3] - crop[0], crop[4] - crop[1], crop[5] - crop[2])
    grid = _RoiGrid.of(size, frame)
    text = prompt.text_embedding
    use_points = len(prompt.points) > 0
    use_box = prompt.box is not None and not use_points  # box + points: the point branch (choice)

    # 1. zoom-out
    fbox = frame_box(prompt.box, crop, frame) if prompt.box is not None else None
    fpts = frame_points(prompt.points, crop, frame) if use_points else None
    boxes = torch.tensor([fbox], dtype=torch.float32, device=device) if fbox is not None else None
    pts = torch.as_tensor(fpts, dtype=torch.float32, device=device)[None] if fpts is not None else None
    labs = torch.as_tensor(prompt.labels, dtype=torch.long, device=device)[None] if fpts is not None else None
    text_kw = {"text_embedding": text} if text is not None else {}  # only SegVol takes text
    frame_logits = backbone.decode(zoom_out_embedding, boxes, pts, labs, None, **text_kw)[0, 0]
    if trace is not None:
        trace.frame_box, trace.frame_points, trace.frame_labels = fbox, fpts, prompt.labels if use_points else None
        trace.zoom_out_logits = frame_logits

    # 2-3. region of the ROI-grid zoom-out foreground
    region = foreground_region(grid, torch.sigmoid(frame_logits) > 0.5, frame)
    if region is None:
        return None, None
    if trace is not None:
        trace.region = _shift(region, crop[:3])
    rsize: Shape3 = (region[3] - region[0], region[4] - region[1], region[5] - region[2])
    fg = torch.sigmoid(grid.gather(frame_logits, region)) > 0.5

    # Prompt maps in region coordinates (unpadded, as the reference slices them).
    cube_box = None
    if use_box:
        spans = [grid.span(a, int(fbox[a]), int(fbox[a + 3])) for a in range(3)]  # type: ignore[index]
        inter = [None if s is None else (max(s[0], region[a]), min(s[1], region[a + 3] - 1)) for a, s in
                 enumerate(spans)]
        if all(s is not None and s[0] <= s[1] for s in inter):
            cube_box = tuple(float(inter[a][k] - region[a]) for k in (0, 1) for a in range(3))  # type: ignore[index]
    positives = np.zeros((0, 3), np.int64)
    anchors = np.zeros((0, 3), np.float64)
    if use_points:
        positives = _point_map_voxels(grid, fpts[prompt.labels == 1], region)  # type: ignore[index]
        anchors = (prompt.points[prompt.labels == 1] - np.asarray(crop[:3]) - np.asarray(region[:3])).astype(float)

    # 4. windows over the evenly zero-padded region
    padded = [max(r, f) for r, f in zip(rsize, frame, strict=True)]
    before = [(f - r) // 2 if r < f else 0 for r, f in zip(rsize, frame, strict=True)]
    starts = [window_starts(padded[a], frame[a], overlap) for a in range(3)]
    single = all(len(s) == 1 for s in starts)
    total = torch.zeros(rsize, dtype=torch.float32, device=device)
    count = torch.zeros(rsize, dtype=torch.float32, device=device)
    origin = [crop[a] + region[a] for a in range(3)]  # volume index of region voxel 0
    for s0 in starts[0]:
        for s1 in starts[1]:
            for s2 in starts[2]:
                s = (s0, s1, s2)
                lo = [s[a] - before[a] for a in range(3)]  # window start in region coordinates
                win_vol: Bounds = tuple(  # type: ignore[assignment]
                    [origin[a] + lo[a] for a in range(3)] + [origin[a] + lo[a] + frame[a] for a in range(3)])
                inner = tuple(slice(max(lo[a], 0), min(lo[a] + frame[a], rsize[a])) for a in range(3))
                in_win = tuple(slice(inner[a].start - lo[a], inner[a].stop - lo[a]) for a in range(3))
                wbox, wpts, wlabs = _window_prompt(use_box, use_points, single, cube_box, fg, inner, in_win, s,
                                                   frame, positives, anchors)
                emb = _window_embedding(backbone, image, win_vol, origin, inner, in_win, frame, cache)
                boxes = torch.tensor([wbox], dtype=torch.float32, device=device) if wbox is not None else None
                pts = labs = None
                if wpts is not None:
                    pts = torch.tensor([wpts], dtype=torch.float32, device=device)
                    labs = torch.tensor([wlabs], dtype=torch.long, device=device)
                logits = backbone.decode(emb, boxes, pts, labs, None, **text_kw)[0, 0]
                total[inner] += logits[in_win]
                count[inner] += 1
                if trace is not None:
                    trace.windows.append(WindowTrace(win_vol, wbox, wpts, wlabs, logits))
    return _shift(region, crop[:3]), total / count


def _window_prompt(use_box: bool, use_points: bool, single: bool, cube_box: tuple[float, ...] | None, fg: Tensor,
                   inner: tuple[slice, ...], in_win: tuple[slice, ...], start: tuple[int, ...], frame: Shape3,
                   positives: np.ndarray, anchors: np.ndarray):  # noqa: ANN202 - a private triple
    """SegVol's prompt for one window (window coordinates, exactly as the reference passes them).

    box branch: with exactly one window, the box of the (unpadded) box cube; otherwise the box of the zoom-out
    foreground inside the window, [-1] x 6 when it holds none. point branch: the positives of the (unpadded)
    point map sliced with the window's padded-grid slices, plus the zoom-out foreground's box. The unpadded
    maps are sliced with padded-grid slices in the reference, so their coordinates are not shifted by the
    padding; that is reproduced, not corrected. Text only: no box, no points.
    """
    if not (use_box or use_points):
        return None, None, None
    if use_box and single:
        return cube_box if cube_box is not None else NO_BOX, None, None
    fg_win = torch.zeros(frame, dtype=torch.bool, device=fg.device)
    fg_win[in_win] = fg[inner]
    fg_box = _box_of(fg_win)
    wbox = fg_box if fg_box is not None else NO_BOX
    if use_box:
        return wbox, None, None
    lo, hi = np.asarray(start), np.asarray(start) + np.asarray(frame)
    inside = np.all((positives >= lo) & (positives < hi), axis=1) if len(positives) else np.zeros(0, bool)
    pts, labs = _select_points(positives[inside] - lo, anchors - lo)
    return wbox, pts, labs


def _point_map_voxels(grid: _RoiGrid, frame_pts: np.ndarray, region: Bounds) -> np.ndarray:
    """Region coordinates of the voxels of the ROI-grid point map (legacy-nearest blocks of the positive frame
    points; only label-1 points are marked, as in ``build_binary_points``), in C order, without repeats."""
    voxels: set[tuple[int, int, int]] = set()
    for p in frame_pts.astype(np.int64):
        spans = [grid.span(a, int(p[a]), int(p[a])) for a in range(3)]
        if any(s is None for s in spans):
            continue  # a frame voxel no ROI voxel reads (S < F): no block
        ranges = [range(max(s[0], region[a]), min(s[1], region[a + 3] - 1) + 1) for a, s in enumerate(spans)]  # type: ignore[index]
        voxels.update((z - region[0], y - region[1], x - region[2]) for z in ranges[0] for y in ranges[1]
                      for x in ranges[2])
    return np.array(sorted(voxels), dtype=np.int64).reshape(-1, 3)


def _window_embedding(backbone: Backbone, image: Tensor, win_vol: Bounds, origin: list[int],
                      inner: tuple[slice, ...], in_win: tuple[slice, ...], frame: Shape3, cache: dict | None) -> Tensor:
    """Encode one window: the region's image where the window overlaps it, 0 elsewhere (the even padding)."""
    filled = tuple(origin[a] + inner[a].start for a in range(3)) + tuple(origin[a] + inner[a].stop for a in range(3))
    key = ("segvol", *win_vol, *filled)
    emb = cache.get(key) if cache is not None else None
    if emb is None:
        pixels = torch.zeros(frame, dtype=torch.float32, device=image.device)
        pixels[in_win] = image[tuple(slice(filled[a], filled[a + 3]) for a in range(3))]
        emb = backbone.encode(pixels[None, None])
        if cache is not None:
            cache[key] = emb
    return emb


def _shift(b: Bounds, offset: tuple[int, ...]) -> Bounds:
    return (b[0] + offset[0], b[1] + offset[1], b[2] + offset[2], b[3] + offset[0], b[4] + offset[1],
            b[5] + offset[2])

