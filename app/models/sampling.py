"""Uncertainty- and error-guided sampling (paper Algorithm 1) and the corrector's 8-d state tensor.

Everything runs vectorised in torch on the device of the input logits (no numpy, no per-voxel loops).

Coordinates: an object's ``logits`` is a (rd, rh, rw) tensor over its region of interest ``roi`` =
(z0, y0, x0, z1, y1, x1), a half-open box of the (D, H, W) volume; "local" coordinates index ``logits``,
"volume" coordinates index the volume (local + (z0, y0, x0)). Outside the ROI the object is background.

Where the paper is ambiguous we chose (SPEC section 2 wins over the paper):

- U_t uses the strict band |p - 0.5| < tau, ranked by |p - 0.5| ascending; equal distances are ordered by
  flat (C-order) index of the ROI, so a replay picks the same voxels. Both are evaluated on |z| (z = logit),
  the exact monotone equivalent of |p - 0.5|, so float32 sigmoid rounding never merges distinct voxels.
- E_t is a union of balls; a voxel covered by the balls of several clicks is judged against the label of
  the *latest* click covering it, because later clicks express the user's latest intent.
- E_t larger than K: K voxels drawn without replacement with the caller's generator (seeded per session and
  round, so replays are identical), returned in flat-index order; otherwise all of them in flat-index order.
- Feature columns 0-2 and 5-7 are i/D, j/H, k/W of the *volume* (paper: "relative position within the
  volumetric input"); the anchor is the object's first click, or the box centre before any click.
  Padding rows are all zeros, validity included.
- The mask is y = p > 0.5, evaluated exactly as z > 0 (``mask_from_logits``); use the same helper wherever
  a mask is derived from logits so that the error set and the streamed mask agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from app.models.constant_tensors import float_vector, long_vector, strides

N_FEATURES = 8
"""Columns of the state tensor: z/D, y/H, x/W, p_or_label, valid, anchor z/D, anchor y/H, anchor x/W."""


@dataclass(frozen=True)
class SamplingConfig:
    """Settings of Algorithm 1.

    Attributes:
        tau: half-width of the uncertainty band, in (0, 0.5]. Paper text: 0.1; the authors' released code
            used 0.1 < p < 0.9, i.e. tau = 0.4.
        k: points per set (uncertainty and error), so the state tensor has 2K rows.
        radius: Euclidean radius around each click, in voxels of the volume grid (>= 0).
    """

    tau: float = 0.1
    k: int = 200
    radius: float = 4.0

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and 0.0 < float(self.tau) <= 0.5):
            raise ValueError(f"tau: must be a number in (0, 0.5], got {self.tau!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k: must be a positive integer, got {self.k!r}")
        if not (isinstance(self.radius, (int, float)) and math.isfinite(self.radius) and self.radius >= 0):
            raise ValueError(f"radius: must be a finite number >= 0, got {self.radius!r}")


@dataclass
class CorrectorInput:
    """The state tensor X_t and coordinates C_t of one object at one round (paper eqs. 7-8).

    Rows [0, K) are uncertainty points, rows [K, 2K) error points; real rows come first in each block.

    Attributes:
        features: (2K, 8) float32 [z/D, y/H, x/W, p_or_label, valid, az/D, ay/H, ax/W]; padding rows zero.
        coords: (2K, 3) long volume voxel coordinates (z, y, x); padding rows are 0.
        valid: (2K,) bool, False on padding rows.
        n_uncertain: real rows in the first K.
        n_error: real rows in the last K.
    """

    features: Tensor
    coords: Tensor
    valid: Tensor
    n_uncertain: int
    n_error: int

    @property
    def k(self) -> int:
        return self.features.shape[0] // 2


def mask_from_logits(logits: Tensor) -> Tensor:
    """y = (sigmoid(z) > 0.5), computed exactly as z > 0 (float32 sigmoid rounds tiny z to 0.5)."""
    return logits > 0


def uncertain_candidates(logits: Tensor, tau: float) -> Tensor:
    """The voxels of the uncertainty band |p - 0.5| < tau: (c,) long flat (C-order) indices of ``logits``, ascending.

    Evaluated as |z| < logit(0.5 + tau) (``_logit_band``): sigmoid is strictly increasing, so this is the band in
    exact arithmetic, where a float32 sigmoid would add false ties. NaN logits are never in the band.
    """
    _check_logits(logits)
    SamplingConfig(tau=tau)  # same checks, same messages
    band = _logit_band(float(tau), logits.device)
    return torch.nonzero(logits.reshape(-1).float().abs() < band).squeeze(1)


def update_candidates(candidates: Tensor, logits: Tensor, written: Tensor, tau: float) -> Tensor:
    """``uncertain_candidates(logits, tau)``, from the candidates of a tensor that equals ``logits`` except at ``written``.

    A GRU step writes at most 2K voxels of a ROI of up to millions; updating the band there costs O(c + m)
    instead of a pass over the whole ROI, with exactly the same result.

    Args:
        candidates: (c,) long ascending flat indices: ``uncertain_candidates`` of the earlier tensor.
        logits: (rd, rh, rw) the later tensor.
        written: (m,) long ascending, unique flat indices outside which the two tensors are equal.
        tau: band half-width, as for ``uncertain_candidates``.

    Returns:
        (c',) long ascending flat indices.
    """
    if written.numel() == 0:
        return candidates
    # Both lists are sorted, and ``written`` is short: look the written voxels up among the candidates (not the
    # reverse) and merge by positions, with no sort of the whole band.
    slot = torch.searchsorted(candidates, written)
    if candidates.numel():
        was_in = candidates.index_select(0, slot.clamp_max(candidates.numel() - 1)) == written
    else:
        was_in = torch.zeros_like(written, dtype=torch.bool)
    now_in = logits.reshape(-1).index_select(0, written).float().abs() < _logit_band(float(tau), logits.device)
    # Each written voxel in the band now goes before the kept candidates not smaller than it: its slot among the
    # old candidates, less the written ones dropped before it, plus the added ones before it.
    dropped_before = torch.cumsum(was_in, 0) - was_in.long()
    now_at = torch.nonzero(now_in).squeeze(1)
    added = written.index_select(0, now_at)
    at = (slot - dropped_before + torch.cumsum(now_in, 0) - 1).index_select(0, now_at)
    keep = torch.ones_like(candidates, dtype=torch.bool)
    keep[slot[was_in]] = False
    out = torch.empty(candidates.numel() - int(was_in.sum()) + added.numel(), dtype=candidates.dtype,
                      device=candidates.device)
    taken = torch.ones_like(out, dtype=torch.bool)
    taken[at] = False
    out[at] = added
    out[taken] = candidates[keep]
    return out


def sample_uncertain(
    logits: Tensor, tau: float, k: int, candidates: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The uncertainty set U_t = {|p - 0.5| < tau}, the K most uncertain first, padded to exactly K.

    Args:
        logits: (rd, rh, rw) float logits of the ROI.
        tau: band half-width in (0, 0.5]; the band is strict.
        k: number of rows returned.
        candidates: ``uncertain_candidates(logits, tau)`` when the caller keeps it up to date
            (``update_candidates``); None computes it here.

    Returns:
        coords: (k, 3) long local (z, y, x); padding rows 0.
        probs: (k,) float32 sigmoid(logits) at those voxels; padding rows 0.
        valid: (k,) bool.
    """
    _check_logits(logits)
    SamplingConfig(tau=tau, k=k)  # same checks, same messages
    if candidates is None:
        candidates = uncertain_candidates(logits, tau)
    return _padded(*_uncertain_voxels(logits, k, candidates), logits.shape, k)


def sample_errors(
    logits: Tensor,
    clicks: Tensor,
    labels: Tensor,
    radius: float,
    k: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """The error set E_t around the clicks (paper eq. 4), sampled or padded to exactly K.

    E_t = union over clicks n of the ROI voxels x with ||x - c_n||_2 <= radius where the mask
    (p > 0.5, i.e. logits > 0) differs from the label that applies at x: the label of the latest click whose
    ball covers x.

    Args:
        logits: (rd, rh, rw) float logits of the ROI.
        clicks: (n, 3) long local (z, y, x) click coordinates, in order (n may be 0).
        labels: (n,) long in {0, 1}.
        radius: ball radius in voxels (>= 0).
        k: number of rows returned.
        generator: draws the subset when |E_t| > k (on its own device; seeded by the caller).

    Returns:
        coords: (k, 3) long local (z, y, x); padding rows 0.
        target: (k,) float32 the applicable click label; padding rows 0.
        valid: (k,) bool.
    """
    _check_logits(logits)
    SamplingConfig(k=k, radius=radius)  # same checks, same messages
    clicks, labels = _check_clicks(clicks, labels, logits.device)
    return _padded(*_error_voxels(logits, clicks, labels, radius, k, generator), logits.shape, k)


def _uncertain_voxels(logits: Tensor, k: int, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """U_t unpadded: (n,) long flat indices, the most uncertain first, and (n,) float32 their probabilities."""
    flat = logits.reshape(-1)
    # Rank by |z|: the order by |p - 0.5| in exact arithmetic (float32 sigmoid would add false ties).
    key = flat.index_select(0, candidates).float().abs()
    if candidates.numel() > k:
        # Keep everything not farther than the k-th smallest (O(n)), then sort only those. The k-th smallest
        # value is the largest of the k smallest (topk is the cheaper selection).
        keep = torch.nonzero(key <= torch.topk(key, k, largest=False, sorted=False).values.max()).squeeze(1)
        candidates, key = candidates.index_select(0, keep), key.index_select(0, keep)
    # Stable sort of an ascending-flat-index list: equal |z| stay in flat-index order.
    chosen = candidates.index_select(0, torch.sort(key, stable=True).indices[:k])
    return chosen, torch.sigmoid(flat.index_select(0, chosen).float())


def _error_voxels(logits: Tensor, clicks: Tensor, labels: Tensor, radius: float, k: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """E_t unpadded: (n,) long flat indices, ascending, and (n,) float32 their labels."""
    device = logits.device
    shape = tuple(logits.shape)
    n = clicks.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    points = clicks[:, None, :] + _ball_offsets(float(radius), device)  # (n, m, 3)
    inside = ((points >= 0) & (points < long_vector(shape, device))).all(-1)
    flat_idx = (points * strides(shape, device)).sum(-1)  # (n, m); meaningless where not inside

    # Latest click wins. The points are in click order, so a stable sort by voxel leaves each voxel's latest
    # covering click last among its points; points outside the ROI get the index ``size`` and sort last.
    size = logits.numel()
    voxel_of, order = torch.sort(torch.where(inside, flat_idx, size).reshape(-1), stable=True)
    last = torch.ones_like(voxel_of, dtype=torch.bool)
    last[:-1] = voxel_of[1:] != voxel_of[:-1]
    last &= voxel_of < size
    at = torch.nonzero(last).squeeze(1)
    voxels = voxel_of.index_select(0, at)
    point_label = labels[:, None].expand(inside.shape).reshape(-1)  # (n * m,) each point's click label
    voxel_label = point_label.index_select(0, order.index_select(0, at))
    wrong = torch.nonzero(mask_from_logits(logits.reshape(-1).index_select(0, voxels)).long() != voxel_label)
    errors, error_label = voxels.index_select(0, wrong[:, 0]), voxel_label.index_select(0, wrong[:, 0])

    if errors.numel() > k:
        pick = torch.randperm(errors.numel(), generator=generator, device=generator.device)[:k]
        pick = torch.sort(pick.to(device)).values  # keep flat-index order among the drawn
        errors, error_label = errors[pick], error_label[pick]
    return errors, error_label.float()


def _padded(flat_idx: Tensor, values: Tensor, shape: tuple[int, ...] | torch.Size, k: int
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(n,) flat indices and values -> (k, 3) long local coords, (k,) float32 values, (k,) bool valid."""
    n, device = flat_idx.numel(), flat_idx.device
    coords = torch.zeros(k, 3, dtype=torch.long, device=device)
    padded = torch.zeros(k, dtype=torch.float32, device=device)
    valid = torch.zeros(k, dtype=torch.bool, device=device)
    coords[:n] = _unravel(flat_idx, shape)
    padded[:n] = values
    valid[:n] = True
    return coords, padded, valid


def build_corrector_input(
    logits: Tensor,
    roi: tuple[int, ...],
    volume_shape: tuple[int, int, int],
    clicks: Tensor,
    labels: Tensor,
    anchor: tuple[int, int, int],
    config: SamplingConfig,
    generator: torch.Generator,
    candidates: Tensor | None = None,
) -> CorrectorInput:
    """Algorithm 1 + the state tensor for one object (paper eqs. 5-8).

    Args:
        logits: (rd, rh, rw) logits over ``roi``.
        roi: half-open (z0, y0, x0, z1, y1, x1) in volume voxels; its extent equals ``logits.shape``.
        volume_shape: (D, H, W).
        clicks: (n, 3) long volume (z, y, x) coordinates of all clicks so far, in order (n may be 0).
        labels: (n,) long in {0, 1}.
        anchor: volume (z, y, x) of the object's first click, or of the box centre before any click.
        config: tau, K, radius.
        generator: for the error subset (only consumed when |E_t| > K).
        candidates: ``uncertain_candidates(logits, config.tau)``, when the caller keeps it; None computes it.

    Returns:
        The ``CorrectorInput`` with 2K rows on ``logits.device``.
    """
    _check_logits(logits)
    device = logits.device
    z0, y0, x0, z1, y1, x1 = _check_roi(roi, volume_shape, logits.shape)
    if len(anchor) != 3:
        raise ValueError(f"anchor: expected (z, y, x), got {anchor!r}")
    clicks, labels = _check_clicks(clicks, labels, device)
    origin = long_vector((z0, y0, x0), device)
    k = config.k
    if candidates is None:
        candidates = uncertain_candidates(logits, config.tau)

    chosen, probs = _uncertain_voxels(logits, k, candidates)
    errors, targets = _error_voxels(logits, clicks - origin, labels, config.radius, k, generator)
    n_u, n_e = chosen.numel(), errors.numel()
    # Only the real rows are computed; padding rows stay all zeros (validity included).
    coords_real = _unravel(torch.cat([chosen, errors]), logits.shape) + origin  # (n_u + n_e, 3) volume
    scale = float_vector(tuple(float(v) for v in volume_shape), device)
    anchor_t = torch.tensor(anchor, dtype=torch.float32, device=device) / scale
    real = torch.cat(
        [
            coords_real.float() / scale,
            torch.cat([probs, targets])[:, None],
            torch.ones(n_u + n_e, 1, device=device),
            anchor_t.expand(n_u + n_e, 3),
        ],
        dim=1,
    )
    if n_u == k and n_e == k:  # both sets full (the usual click): the real rows are the whole tensor
        return CorrectorInput(features=real, coords=coords_real, valid=torch.ones(2 * k, dtype=torch.bool,
                              device=device), n_uncertain=k, n_error=k)
    features = torch.zeros(2 * k, N_FEATURES, device=device)
    coords = torch.zeros(2 * k, 3, dtype=torch.long, device=device)
    valid = torch.zeros(2 * k, dtype=torch.bool, device=device)
    for rows, part in ((slice(0, n_u), slice(0, n_u)), (slice(k, k + n_e), slice(n_u, n_u + n_e))):
        features[rows] = real[part]
        coords[rows] = coords_real[part]
        valid[rows] = True
    return CorrectorInput(features=features, coords=coords, valid=valid, n_uncertain=n_u, n_error=n_e)


@lru_cache(maxsize=16)
def _ball_offsets(radius: float, device: torch.device) -> Tensor:
    """(m, 3) long integer offsets with dz^2 + dy^2 + dx^2 <= radius^2 (inclusive), C-order."""
    r = int(math.floor(radius))
    axis = torch.arange(-r, r + 1)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    inside = (grid**2).sum(-1).double() <= radius * radius
    return grid[inside].to(device)


@lru_cache(maxsize=16)
def _logit_band(tau: float, device: torch.device) -> Tensor:
    """The float32 T with |z| < T  <=>  |sigmoid(z) - 0.5| < tau (exact sigmoid) for every float32 z."""
    exact = 2.0 * math.atanh(2.0 * tau) if tau < 0.5 else math.inf  # = logit(0.5 + tau)
    with torch.inference_mode(False):  # cached: a normal tensor, usable in and out of inference mode
        t = torch.tensor(exact, dtype=torch.float32)
        if float(t) < exact:  # round up: the smallest float32 >= exact keeps the band strict
            t = torch.nextafter(t, torch.tensor(math.inf))
        return t.to(device)


def _unravel(flat_idx: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """(n,) C-order flat indices of a (d, h, w) grid -> (n, 3) long (z, y, x)."""
    _, h, w = shape
    return torch.stack([torch.floor_divide(flat_idx, h * w), torch.floor_divide(flat_idx, w) % h, flat_idx % w], dim=1)


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError("logits: expected a 3-D floating point tensor (rd, rh, rw)")


def _check_clicks(clicks: Tensor, labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    clicks = torch.as_tensor(clicks, device=device)
    labels = torch.as_tensor(labels, device=device)
    if clicks.dim() != 2 or clicks.shape[1] != 3 or clicks.is_floating_point():
        raise ValueError(f"clicks: expected an integer tensor of shape (n, 3), got {tuple(clicks.shape)}")
    if labels.shape != (clicks.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor of shape ({clicks.shape[0]},)")
    if labels.numel() and bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError("labels: must be 0 (background) or 1 (foreground)")
    return clicks.long(), labels.long()


def _check_roi(
    roi: tuple[int, ...], volume_shape: tuple[int, int, int], extent: torch.Size
) -> tuple[int, int, int, int, int, int]:
    if len(volume_shape) != 3 or any(s < 1 for s in volume_shape):
        raise ValueError(f"volume_shape: expected three positive sizes, got {volume_shape!r}")
    if len(roi) != 6:
        raise ValueError(f"roi: expected (z0, y0, x0, z1, y1, x1), got {roi!r}")
    z0, y0, x0, z1, y1, x1 = (int(v) for v in roi)
    lo, hi = (z0, y0, x0), (z1, y1, x1)
    if any(a < 0 or b > s or a >= b for a, b, s in zip(lo, hi, volume_shape, strict=True)):
        raise ValueError(f"roi: {roi!r} is empty or outside the volume {tuple(volume_shape)}")
    if tuple(b - a for a, b in zip(lo, hi, strict=True)) != tuple(extent):
        raise ValueError(f"roi: extent of {roi!r} does not match logits shape {tuple(extent)}")
    return z0, y0, x0, z1, y1, x1
