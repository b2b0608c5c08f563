"""Label-to-image synthesis in the SynthSeg manner (Billot et al., Medical Image Analysis 2023).

An image is drawn from a label map alone: every label gets a random Gaussian intensity (mean and spread), then
partial volume (blur), an optional thick-slice resolution loss along one axis, a smooth multiplicative bias
field, normalisation, a random gamma, noise and sometimes a contrast inversion. Shapes and boundaries are the
label map's; the contrast between them is random, so a model trained on such images cannot lean on one
sequence or window (the train split is mostly MR atlases, users bring any MR contrast and CT).

The training object is still a label's voxels: the synthesis never moves a boundary, it only repaints.

Arrays are (D, H, W) = (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SynthSegParams:
    """The random ranges of one synthesis (defaults follow the paper's spirit, scaled to [0, 1] images).

    Attributes:
        std_max: per-label intensity spread drawn from [0, std_max].
        target_min_contrast: the target label's mean is redrawn (up to 10 times) until it is at least this far
            from every other label's mean in the map, so the target's boundary is visible.
        blur_max: Gaussian blur sigma per axis drawn from [0, blur_max] voxels (partial volume).
        thick_slice_prob / thick_slice_max: probability of averaging blocks of 2..thick_slice_max slices along
            one random axis and repeating them (an anisotropic, low-resolution acquisition).
        bias_std: std of the log bias field's control points (a 4x4x4 grid, cubic upsampling).
        gamma_std: the image is raised to exp(N(0, gamma_std)).
        noise_max: additive Gaussian noise std drawn from [0, noise_max] after normalisation.
        invert_prob: probability of the inverted contrast (1 - image).
    """

    std_max: float = 0.08
    target_min_contrast: float = 0.1
    blur_max: float = 1.0
    thick_slice_prob: float = 0.3
    thick_slice_max: int = 4
    bias_std: float = 0.3
    gamma_std: float = 0.25
    noise_max: float = 0.04
    invert_prob: float = 0.2


def label_means(
    values: np.ndarray, target: int | None, rng: np.random.Generator, min_contrast: float
) -> np.ndarray:
    """A random mean in [0, 1] per label value; the target's mean kept ``min_contrast`` away from the others.

    Args:
        values: (n,) distinct label values of the map.
        target: a label value in ``values`` whose boundary must stay visible, or None.
    """
    means = rng.uniform(0.0, 1.0, size=values.size)
    if target is None or values.size < 2:
        return means
    t = int(np.flatnonzero(values == target)[0])
    others = np.delete(means, t)
    best, best_gap = means[t], float(np.min(np.abs(others - means[t])))
    for _ in range(10):
        if best_gap >= min_contrast:
            break
        candidate = rng.uniform(0.0, 1.0)
        gap = float(np.min(np.abs(others - candidate)))
        if gap > best_gap:
            best, best_gap = candidate, gap
    means[t] = best
    return means


def bias_field(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(cubic upsampling of a 4x4x4 Gaussian grid)."""
    coarse = rng.normal(0.0, std, size=(4, 4, 4))
    zoom = [n / 4.0 for n in shape]
    log_field = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    log_field = log_field[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - m) for n, m in zip(shape, log_field.shape, strict=True)]
    return np.exp(np.pad(log_field, pad, mode="edge")).astype(np.float32)


def thick_slices(image: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Average blocks of ``factor`` slices along ``axis`` and repeat each block's centre value across it."""
    smoothed = ndimage.uniform_filter1d(image, size=factor, axis=axis, mode="nearest")
    n = image.shape[axis]
    idx = np.minimum((np.arange(n) // factor) * factor + factor // 2, n - 1)
    return np.take(smoothed, idx, axis=axis)


def synthesize(
    label: np.ndarray,
    rng: np.random.Generator,
    target: int | None = None,
    params: SynthSegParams | None = None,
) -> np.ndarray:
    """A random image of ``label``: (D, H, W) float32 in [0, 1].

    Args:
        label: (D, H, W) integer label map (0 is a label too: the background gets its own intensity).
        rng: random generator (the same seed gives the same image).
        target: the label value of the training object, kept visibly distinct from the others; None = any.
        params: random ranges; None = ``SynthSegParams()``.
    """
    if label.ndim != 3 or label.size == 0:
        raise ValueError(f"label: expected a non-empty 3D label map, got shape {label.shape}")
    p = params if params is not None else SynthSegParams()
    values, inverse = np.unique(label, return_inverse=True)
    inverse = inverse.reshape(label.shape)
    means = label_means(values, target, rng, p.target_min_contrast).astype(np.float32)
    stds = rng.uniform(0.0, p.std_max, size=values.size).astype(np.float32)
    image = means[inverse] + stds[inverse] * rng.standard_normal(label.shape, dtype=np.float32)

    sigmas = rng.uniform(0.0, p.blur_max, size=3)
    image = ndimage.gaussian_filter(image, sigmas, mode="nearest")
    if p.thick_slice_max >= 2 and rng.random() < p.thick_slice_prob:
        axis = int(rng.integers(3))
        image = thick_slices(image, axis, int(rng.integers(2, p.thick_slice_max + 1)))
    image = image * bias_field(label.shape, p.bias_std, rng)

    lo, hi = float(image.min()), float(image.max())
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    image = np.clip(image, 0.0, 1.0) ** np.float32(np.exp(rng.normal(0.0, p.gamma_std)))
    image = image + np.float32(rng.uniform(0.0, p.noise_max)) * rng.standard_normal(label.shape, dtype=np.float32)
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < p.invert_prob:
        image = 1.0 - image
    return image.astype(np.float32)
