"""The sampling and correction kernels against straightforward references of the same rules, on random inputs.

The kernels are written for few tensor ops (a GRU click runs them on every click); the references here state the
rules the plain way (``torch.unique`` + latest / lowest-priority row per voxel, ``kthvalue``, a full scan of the
ROI for the uncertainty band). Every output must be bit-identical, the generator included: the error subset's
draw consumes it exactly as the reference does.
"""

from __future__ import annotations

import math

import pytest
import torch

from app.models.corrector import apply_correction, corrected_voxels
from app.models.sampling import (
    _ball_offsets,
    _logit_band,
    _unravel,
    mask_from_logits,
    sample_errors,
    sample_uncertain,
    uncertain_candidates,
    update_candidates,
)

SEEDS = range(60)


def _ref_band(logits: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.nonzero(logits.reshape(-1).float().abs() < _logit_band(tau, logits.device)).squeeze(1)


def _ref_uncertain(logits: torch.Tensor, tau: float, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = logits.reshape(-1)
    abs_z = flat.float().abs()
    candidates = _ref_band(logits, tau)
    key = abs_z[candidates]
    if candidates.numel() > k:
        keep = key <= torch.kthvalue(key, k).values
        candidates, key = candidates[keep], key[keep]
    chosen = candidates[torch.sort(key, stable=True).indices[:k]]
    n = chosen.numel()
    coords, probs, valid = torch.zeros(k, 3, dtype=torch.long), torch.zeros(k), torch.zeros(k, dtype=torch.bool)
    coords[:n], probs[:n], valid[:n] = _unravel(chosen, logits.shape), torch.sigmoid(flat[chosen].float()), True
    return coords, probs, valid


def _ref_errors(logits: torch.Tensor, clicks: torch.Tensor, labels: torch.Tensor, radius: float, k: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = logits.shape
    coords, target, valid = torch.zeros(k, 3, dtype=torch.long), torch.zeros(k), torch.zeros(k, dtype=torch.bool)
    offsets = _ball_offsets(float(radius), logits.device)
    points = clicks[:, None, :] + offsets[None, :, :]
    order = torch.arange(clicks.shape[0])[:, None].expand(-1, offsets.shape[0])
    inside = ((points >= 0) & (points < torch.tensor(shape))).all(-1)
    points, order = points[inside], order[inside]
    flat_idx = (points[:, 0] * shape[1] + points[:, 1]) * shape[2] + points[:, 2]
    voxels, inverse = torch.unique(flat_idx, sorted=True, return_inverse=True)
    latest = torch.full_like(voxels, -1).scatter_reduce(0, inverse, order, reduce="amax", include_self=True)
    voxel_label = labels[latest]
    wrong = mask_from_logits(logits.reshape(-1)[voxels]).long() != voxel_label
    errors, error_label = voxels[wrong], voxel_label[wrong]
    if errors.numel() > k:
        pick = torch.sort(torch.randperm(errors.numel(), generator=generator)[:k]).values
        errors, error_label = errors[pick], error_label[pick]
    n = errors.numel()
    coords[:n], target[:n], valid[:n] = _unravel(errors, shape), error_label.float(), True
    return coords, target, valid


def _ref_correction(logits: torch.Tensor, roi: tuple[int, ...], volume: tuple[int, int, int], coords: torch.Tensor,
                    valid: torch.Tensor, dp: torch.Tensor, dc: torch.Tensor | None, eps: float = 1e-4
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, k = coords.shape[0], coords.shape[0] // 2
    keep = valid & torch.isfinite(dp)
    target = coords.clone()
    if dc is not None:
        keep &= torch.isfinite(dc).all(1)
        target = target + torch.round(torch.nan_to_num(dc, nan=0.0, posinf=0.0, neginf=0.0)).long()
    target = torch.minimum(target.clamp_min(0), torch.tensor(volume) - 1)
    lo, hi = torch.tensor(roi[:3]), torch.tensor(roi[3:]) - 1
    local = torch.minimum(torch.maximum(target, lo), hi) - lo
    row = torch.arange(rows)
    priority = torch.where(row >= k, row - k, row + k)[keep]
    local, kept_dp = local[keep], dp[keep]
    _, h, w = logits.shape
    flat_idx = (local[:, 0] * h + local[:, 1]) * w + local[:, 2]
    voxels, inverse = torch.unique(flat_idx, sorted=True, return_inverse=True)
    best = torch.full_like(voxels, 2 * rows).scatter_reduce(0, inverse, priority, reduce="amin")
    winner_row = torch.where(best < k, best + k, best - k)
    winner_dp = torch.zeros(rows).index_put_((row[keep],), kept_dp)[winner_row]
    p = torch.sigmoid(logits.reshape(-1)[voxels].float())
    return voxels, torch.logit((p + winner_dp).clamp(eps, 1.0 - eps)).to(logits.dtype)


def _logits(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Logits with many voxels in and near the band, exact ties, saturated values and a few NaNs."""
    z = torch.randn(shape, generator=g) * 0.6
    z[torch.rand(shape, generator=g) < 0.3] = 0.25  # ties inside the band
    z[torch.rand(shape, generator=g) < 0.2] = 8.0
    z[torch.rand(shape, generator=g) < 0.02] = math.nan
    return z


def _shape(g: torch.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in torch.randint(1, 12, (3,), generator=g))  # type: ignore[return-value]


def _assert_equal(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_band_update_equals_a_full_scan(seed):
    g = torch.Generator().manual_seed(seed)
    shape = _shape(g)
    before = _logits(g, shape)
    n = before.numel()
    written = torch.sort(torch.randperm(n, generator=g)[: int(torch.randint(0, n + 1, (1,), generator=g))]).values
    after = before.clone()
    after.view(-1)[written] = _logits(g, (written.numel(),))
    got = update_candidates(uncertain_candidates(before, 0.1), after, written, 0.1)
    assert torch.equal(got, _ref_band(after, 0.1))
    assert torch.equal(uncertain_candidates(after, 0.1), _ref_band(after, 0.1))


def test_band_update_from_an_empty_band_and_with_nothing_written():
    before = torch.full((2, 3, 4), 9.0)
    after = before.clone()
    after.view(-1)[torch.tensor([1, 5, 23])] = torch.tensor([0.1, 7.0, -0.2])
    assert update_candidates(uncertain_candidates(before, 0.1), after, torch.tensor([1, 5, 23]), 0.1).tolist() == [
        1, 23]
    band = uncertain_candidates(after, 0.1)
    assert update_candidates(band, after, torch.zeros(0, dtype=torch.long), 0.1) is band


@pytest.mark.parametrize("seed", SEEDS)
def test_uncertainty_sampling_equals_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    logits = _logits(g, _shape(g))
    k = int(torch.randint(1, 40, (1,), generator=g))
    _assert_equal(sample_uncertain(logits, 0.1, k), _ref_uncertain(logits, 0.1, k))
    _assert_equal(sample_uncertain(logits, 0.1, k, uncertain_candidates(logits, 0.1)),
                  _ref_uncertain(logits, 0.1, k))


@pytest.mark.parametrize("seed", SEEDS)
def test_error_sampling_equals_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    shape = _shape(g)
    logits = _logits(g, shape)
    n = int(torch.randint(1, 9, (1,), generator=g))
    # Clicks inside and around the ROI (balls cut by its faces, overlapping balls of opposite labels).
    clicks = torch.stack([torch.randint(-3, s + 3, (n,), generator=g) for s in shape], dim=1)
    labels = torch.randint(0, 2, (n,), generator=g)
    radius = float(torch.randint(0, 7, (1,), generator=g)) / 2
    k = int(torch.randint(1, 30, (1,), generator=g))
    gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    _assert_equal(sample_errors(logits, clicks, labels, radius, k, gen_a),
                  _ref_errors(logits, clicks, labels, radius, k, gen_b))
    assert torch.equal(torch.rand(4, generator=gen_a), torch.rand(4, generator=gen_b))  # same draws consumed


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offsets", [False, True])
def test_correction_equals_the_reference(seed, offsets):
    g = torch.Generator().manual_seed(seed)
    volume = (12, 13, 14)
    lo = [int(torch.randint(0, s - 1, (1,), generator=g)) for s in volume]
    hi = [int(torch.randint(a + 1, s + 1, (1,), generator=g)) for a, s in zip(lo, volume, strict=True)]
    roi = (*lo, *hi)
    logits = _logits(g, tuple(b - a for a, b in zip(lo, hi, strict=True))).nan_to_num(0.0)
    rows = 2 * int(torch.randint(1, 20, (1,), generator=g))
    # Few distinct targets: many rows collide, uncertainty and error rows alike.
    coords = torch.stack([torch.randint(a - 1, b + 1, (rows,), generator=g) for a, b in zip(lo, hi, strict=True)], 1)
    valid = torch.rand(rows, generator=g) < 0.8
    dp = torch.rand(rows, generator=g) * 2 - 1
    dp[torch.rand(rows, generator=g) < 0.1] = math.nan
    dc = None
    if offsets:
        dc = (torch.rand(rows, 3, generator=g) * 2 - 1) * 3
        dc[torch.rand(rows, generator=g) < 0.1, 1] = math.inf
    expected = _ref_correction(logits, roi, volume, coords, valid, dp, dc)
    _assert_equal(corrected_voxels(logits, roi, volume, coords, valid, dp, dc), expected)
    new, touched = apply_correction(logits, roi, volume, coords, valid, dp, dc)
    _, h, w = logits.shape
    assert torch.equal((touched[:, 0] * h + touched[:, 1]) * w + touched[:, 2], expected[0])
    assert torch.equal(new.view(-1)[expected[0]], expected[1])
