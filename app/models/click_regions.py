"""Click regions: a click flips the whole coherent error region it points at, not a ball around it.

Why: the decoder and the geodesic propagation (``app.models.propagation``) change the mask within a fixed
reach of a click. A background click in a false-positive blob larger than that reach dents the blob instead
of removing it, and a foreground click in a large missed part adds a ball (the click contract's "region fixed"
measures this: ``evaluation.click_contract``). The region a click points at is bounded by the mask the user
saw when clicking, the object's previous mask: a background click says "this foreground is wrong", a
foreground click says "this background is missed". So, on the ROI frame, after the decoder and the
propagation:

    for each click c with label L at frame voxel p (oldest first):
        side    = previous foreground if L is background, previous background if L is foreground
        similar = voxels whose intensity is within ``tolerance`` of the click's 3x3x3 mean
        region  = the 26-connected component of (side & similar & within the reach of p) that holds p
        if region holds no click of the opposite label (it would contradict one):
            foreground: logit = max(logit, gain) on region     background: logit = min(logit, -gain)

A connected threshold region, the classical region growing of interactive tools (ITK-SNAP's and 3D Slicer's
"connected threshold"), bounded by the previous mask's side of the boundary, so the two labels' regions never
overlap. A click the previous mask already obeys (an older click, once its step is done) has a region of its
own voxel only: its effect lives on through the mask the next decoder step reads. The region is a pure
function of the previous mask, the frame image and the clicks, so a replay of the prompt log rebuilds it.
One ``cc3d`` labelling of the reach's crop per click: a few ms each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
import torch

from app.models.propagation import click_arrays, require_finite


@dataclass(frozen=True)
class RegionConfig:
    """Parameters of the click regions (chosen on the train split: ``docs/results.md``).

    Attributes:
        reach: largest distance from a background click its region extends to, in frame voxels of the
            finest axis (physical units via the frame's sampling); 0 turns background regions off.
        foreground_reach: the same for foreground clicks. Their side, the previous background, is not
            bounded by the mask, so where structures of one intensity touch a foreground region runs into the
            neighbour (measured on the train split: ``docs/results.md``).
        tolerance: largest intensity difference (image normalised to [0, 1]) from the click's mean.
        gain: logit magnitude written on the region.
        confident: a region leaves the voxels whose logit (the decoder's, after the propagation) gives the
            other label with more than this magnitude: where the model is sure, it knows the shape better
            than an intensity threshold does. Infinity: a region overwrites everything it covers.
    """

    reach: float = 30.0
    foreground_reach: float = 30.0
    tolerance: float = 0.1
    gain: float = 2.0
    confident: float = 3.0

    def __post_init__(self) -> None:
        require_finite("reach", self.reach, allow_zero=True)
        require_finite("foreground_reach", self.foreground_reach, allow_zero=True)
        require_finite("tolerance", self.tolerance)
        require_finite("gain", self.gain)
        if not self.confident > 0:
            raise ValueError(f"confident: must be > 0 (infinity allowed), got {self.confident}")

    @property
    def enabled(self) -> bool:
        return self.reach > 0 or self.foreground_reach > 0

    def reach_of(self, label: int) -> float:
        """The reach of a click of ``label`` (1 foreground, 0 background)."""
        return self.foreground_reach if int(label) == 1 else self.reach


def click_region(image: np.ndarray, side: np.ndarray, centre: Sequence[int], sampling: Sequence[float],
                 reach: float, tolerance: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The region of one click (module docstring) as (crop slices of the frame, boolean mask of the crop)."""
    shape = image.shape
    lo = [max(c - math.ceil(reach / s), 0) for c, s in zip(centre, sampling, strict=True)]
    hi = [min(c + math.ceil(reach / s) + 1, n) for c, s, n in zip(centre, sampling, shape, strict=True)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = image[window]
    local = tuple(c - a for c, a in zip(centre, lo, strict=True))
    seed_value = float(sub[tuple(slice(max(c - 1, 0), c + 2) for c in local)].mean())
    # Squared physical distance to the click, per axis, broadcast over the crop.
    dist2 = sum(
        ((np.arange(a, b) - c) * s).reshape([-1 if k == axis else 1 for k in range(3)]) ** 2
        for axis, (a, b, c, s) in enumerate(zip(lo, hi, centre, sampling, strict=True))
    )
    candidate = side[window] & (np.abs(sub - seed_value) <= tolerance) & (dist2 < reach**2)
    candidate[local] = True  # the clicked voxel is the region's seed whatever the previous mask said there
    labels = cc3d.connected_components(candidate.astype(np.uint8), connectivity=26)
    return window, labels == labels[local]


def apply_click_regions(
    logits: torch.Tensor,
    previous_logits: torch.Tensor,
    image: torch.Tensor,
    points: np.ndarray,
    labels: np.ndarray,
    sampling: Sequence[float],
    config: RegionConfig,
) -> torch.Tensor:
    """Write the clicks' regions (module docstring) into one view's logits.

    Args:
        logits: (d, h, w) frame logits to write into (after the propagation); not modified.
        previous_logits: (d, h, w) the object's logits before this step, which bound the regions.
        image: (d, h, w) the frame's image normalised to [0, 1].
        points: (N, 3) float frame coordinates (z, y, x) of the clicks, oldest first.
        labels: (N,) 1 foreground, 0 background.
        sampling: per-axis step length (``app.models.propagation.frame_sampling``).
        config: the region parameters.
    Returns:
        New (d, h, w) logits, same dtype and device.
    """
    if logits.dim() != 3 or logits.shape != previous_logits.shape or logits.shape != image.shape:
        raise ValueError(f"logits: expected (d, h, w) matching the previous logits {tuple(previous_logits.shape)} "
                         f"and the image {tuple(image.shape)}, got {tuple(logits.shape)}")
    points, labels = click_arrays(points, labels)
    if not config.enabled or len(points) == 0:
        return logits.clone()
    shape = tuple(int(s) for s in logits.shape)
    centres = [tuple(int(min(max(round(v), 0), n - 1)) for v, n in zip(p, shape, strict=True)) for p in points]
    img = image.detach().float().cpu().numpy()
    foreground = (previous_logits > 0).cpu().numpy()
    out = logits.detach().float().cpu().numpy().copy()
    for centre, lab in zip(centres, labels, strict=True):
        is_fg = int(lab) == 1
        reach = config.reach_of(int(lab))
        if reach <= 0 or foreground[centre] == is_fg:  # the previous mask obeys this click already: its region is one voxel
            continue
        window, region = click_region(img, ~foreground if is_fg else foreground, centre, sampling, reach,
                                      config.tolerance)
        contradicted = any(
            int(other) != int(lab) and all(w.start <= c < w.stop for c, w in zip(oc, window, strict=True))
            and region[tuple(c - w.start for c, w in zip(oc, window, strict=True))]
            for oc, other in zip(centres, labels, strict=True)
        )
        if contradicted:
            continue
        crop = out[window]
        # Logits are read here before any region of this step wrote them only for the first click; a later
        # click's region sees earlier regions' values, which are at most ``gain`` in magnitude.
        region &= (crop > -config.confident) if is_fg else (crop < config.confident)
        crop[region] = np.maximum(crop[region], config.gain) if is_fg else np.minimum(crop[region], -config.gain)
    return torch.from_numpy(out).to(device=logits.device, dtype=logits.dtype)
