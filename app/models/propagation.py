"""Geodesic click propagation: a click speaks for the coherent region around it, not only for its own spot.

Why: the decoder reads a click through gaussian prompt maps a few frame voxels wide. It always flips the
clicked voxel, but the change stays close to it: a background click on a wrongly included structure trims a
ball out of it, and a foreground click in a missed region adds a ball (measured on dev: ``docs/results.md``,
section "Geodesic click propagation"). Classical interactive segmentation (GeoS, Criminisi et al. 2008;
DeepIGeoS, Wang et al. 2019) propagates a seed along paths of similar intensity instead. This module does that
on the decoder's output, in the resampled ROI frame the decoder works in:

    for each click c (the object's own and, in an exclusive session, the other objects' foreground clicks
    as background):
        d_c(x) = geodesic distance from c to x over the frame, step cost 1 + ((I(x) - I_c) / tolerance)^2,
                 I_c the click's 3x3x3 mean intensity, steps measured in physical units relative to the
                 finest frame axis (``skimage.graph.MCP_Geometric``, which computes exactly this)
    each voxel takes the label of its geodesically nearest click c*, if d_c*(x) < reach, with strength
    s(x) = gain * (1 - d_c*(x) / reach):
        foreground: logit = max(logit, s)        background: logit = min(logit, -s)

The reach is in frame voxels, so it scales with the ROI (the box): a click speaks for about the same fraction
of any object. Within the reach the click's label wins; a voxel the model already gives that label with more
confidence keeps its logit. The confidence written fades to 0 at the edge of the reach, so in the label map a
neighbouring object that is sure of a voxel near that edge keeps it, and the object's next decoder step
(which reads these logits as its previous mask) can still overturn it.

Written by hand around ``MCP_Geometric`` because no library we use applies seeds' geodesic distances to a
probability map; the distance itself is skimage's. Each click's search is cropped to the box its reach can
reach (a distance below ``reach`` needs a path shorter than ``reach``): at most 31x31x31 voxels at the
default reach, about 8 ms on a CPU. The predictor caches each click's reached voxels per ROI view
(``SessionState.geodesic_cache``), so a step searches only the clicks that view has not seen yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.graph import MCP_Geometric


def click_arrays(points: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[int] | np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Clicks as (N, 3) float64 voxel coordinates and their (N,) labels; ``ValueError`` naming ``labels`` when
    the counts differ (shared by the click propagation and the click regions)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    labs = np.asarray(labels).reshape(-1)
    if len(pts) != len(labs):
        raise ValueError(f"labels: {len(labs)} labels for {len(pts)} points")
    return pts, labs


def require_finite(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Refuse a setting that is not a finite number > 0 (>= 0 with ``allow_zero``), naming it."""
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name}: must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")


@dataclass(frozen=True)
class PropagationConfig:
    """Parameters of the click propagation (checked on the train split: ``docs/results.md``).

    Attributes:
        reach: geodesic reach of a click, in frame voxels of the finest axis; 0 turns propagation off.
        tolerance: intensity difference (image normalised to [0, 1]) at which a step costs twice a plain one.
        gain: logit a click gives its own spot; fades linearly to 0 at the edge of the reach.
    """

    reach: float = 15.0
    tolerance: float = 0.05
    gain: float = 6.0

    def __post_init__(self) -> None:
        require_finite("reach", self.reach, allow_zero=True)
        require_finite("tolerance", self.tolerance)
        require_finite("gain", self.gain)

    @property
    def enabled(self) -> bool:
        return self.reach > 0


def frame_sampling(roi_shape: Sequence[int], frame: Sequence[int], spacing: Sequence[float]) -> tuple[float, ...]:
    """Physical size of a frame voxel per axis, relative to the finest axis (the geodesic step lengths).

    A ROI of ``roi_shape`` volume voxels (``spacing`` mm each) resampled to ``frame``: frame voxel size along
    axis a is spacing[a] * roi_shape[a] / frame[a] mm.
    """
    size = [float(sp) * float(n) / float(f) for sp, n, f in zip(spacing, roi_shape, frame, strict=True)]
    finest = min(size)
    return tuple(s / finest for s in size)


ClickDistances = tuple[np.ndarray, np.ndarray]
"""A click's reach: (k, 3) int16 frame voxels with a geodesic distance below the reach, and their (k,) float32
distances. What ``propagate_clicks`` caches per (ROI, click): it depends on nothing else."""


def click_distances(image: np.ndarray, centre: Sequence[int], sampling: Sequence[float],
                    config: PropagationConfig) -> ClickDistances:
    """The frame voxels within ``config.reach`` of the click at ``centre`` (integer frame voxel), geodesically."""
    shape = image.shape
    # A path shorter than the reach stays within reach / step voxels of the click along each axis.
    lo = [max(c - math.ceil(config.reach / s), 0) for c, s in zip(centre, sampling, strict=True)]
    hi = [min(c + math.ceil(config.reach / s) + 1, n) for c, s, n in zip(centre, sampling, shape, strict=True)]
    sub = image[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    local = tuple(c - a for c, a in zip(centre, lo, strict=True))
    seed_value = float(sub[tuple(slice(max(c - 1, 0), c + 2) for c in local)].mean())
    cost = 1.0 + ((sub - seed_value) / config.tolerance) ** 2
    dist, _ = MCP_Geometric(cost, sampling=tuple(sampling)).find_costs([local])
    inside = dist < config.reach
    coords = (np.argwhere(inside) + np.asarray(lo)).astype(np.int16)  # frames are far below 2^15 voxels
    return coords, dist[inside].astype(np.float32)


def propagate_clicks(
    logits: torch.Tensor,
    image: torch.Tensor | Callable[[], torch.Tensor],
    points: np.ndarray,
    labels: np.ndarray,
    sampling: Sequence[float],
    config: PropagationConfig,
    cache: MutableMapping[tuple[Any, ...], ClickDistances] | None = None,
    cache_key: tuple[Any, ...] = (),
) -> torch.Tensor:
    """Apply the clicks' geodesic propagation to one view's logits (module docstring).

    Args:
        logits: (d, h, w) logits on the frame.
        image: (d, h, w) the frame's image, normalised to [0, 1] (what the encoder saw), or a function that
            returns it (called only if some click is not in ``cache``).
        points: (N, 3) float frame coordinates (z, y, x) of the clicks.
        labels: (N,) 1 foreground, 0 background.
        sampling: per-axis step length (``frame_sampling``).
        config: the propagation parameters.
        cache: where each click's ``ClickDistances`` is kept under ``(*cache_key, z, y, x)``; the caller's key
            must name everything else they depend on (the view, hence its image and sampling, and ``config``).
            A step then searches only its new clicks.
    Returns:
        New (d, h, w) logits (same dtype and device); the input is not modified.
    """
    if logits.dim() != 3 or (isinstance(image, torch.Tensor) and logits.shape != image.shape):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else "?"
        raise ValueError(f"logits: expected (d, h, w) matching the image {got}, got {tuple(logits.shape)}")
    points, labels = click_arrays(points, labels)
    if not config.enabled or len(points) == 0:
        return logits.clone()
    shape = tuple(int(s) for s in logits.shape)
    img: np.ndarray | None = None
    best = np.full(shape, np.inf, dtype=np.float32)  # distance to the nearest click so far
    label_of = np.zeros(shape, dtype=np.int8)
    for p, lab in zip(points, labels, strict=True):
        centre = tuple(int(min(max(round(v), 0), n - 1)) for v, n in zip(p, shape, strict=True))
        key = (*cache_key, *centre)
        found = cache.get(key) if cache is not None else None
        if found is None:
            if img is None:
                frame_image = image if isinstance(image, torch.Tensor) else image()
                if frame_image.shape != logits.shape:
                    raise ValueError(f"image: expected shape {shape}, got {tuple(frame_image.shape)}")
                img = frame_image.detach().float().cpu().numpy()
            found = click_distances(img, centre, sampling, config)
            if cache is not None:
                cache[key] = found
        coords, dist = found
        z, y, x = coords[:, 0], coords[:, 1], coords[:, 2]
        nearer = dist < best[z, y, x]
        best[z[nearer], y[nearer], x[nearer]] = dist[nearer]
        label_of[z[nearer], y[nearer], x[nearer]] = 1 if int(lab) == 1 else 0
    reached = best < config.reach
    strength = np.where(reached, config.gain * (1.0 - best / config.reach), 0.0)
    s = torch.from_numpy(strength).to(device=logits.device, dtype=logits.dtype)
    fg = torch.from_numpy(reached & (label_of == 1)).to(logits.device)
    bg = torch.from_numpy(reached & (label_of == 0)).to(logits.device)
    out = torch.where(fg, torch.maximum(logits, s), logits)
    return torch.where(bg, torch.minimum(out, -s), out)
