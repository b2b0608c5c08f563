"""Synthetic lesions pasted into real train volumes, so the label is exact.

Every shape is an implicit field f over a small grid in physical units (mm / min spacing); the lesion is
the sublevel set {f <= t} with t the n-th smallest value, so its size is the requested one (then the largest
26-connected component is kept). Shapes: deformed ellipsoids, lobulated blobs (unions of ellipsoids),
irregular blobs (thresholded smooth noise), rings with a necrotic core, thin elongated tubes.

Pasting: the lesion gets its own mean intensity (brighter or darker than its surroundings), its own texture
(smoothed noise), an optional nested sub-region (core) with another intensity, and a partial-volume boundary
(the blended weight is a blurred mask). The label is the hard mask and equals exactly the voxels whose blend
weight is >= 0.5: blurring only moves the weight within [0.5, 1] inside and [0, 0.5) outside.

Arrays are (D, H, W) = (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

SHAPES = ("ellipsoid", "lobulated", "irregular", "ring", "tube")


@dataclass
class Lesion:
    """A generated lesion on its own small grid.

    Attributes:
        mask: (d, h, w) bool, the whole lesion.
        core: (d, h, w) bool nested sub-region (inside ``mask``), or None.
        kind: one of ``SHAPES``.
    """

    mask: np.ndarray
    core: np.ndarray | None
    kind: str


@dataclass
class PastedLesion:
    """Result of pasting: the new volume, the object's exact label and the blend weight used.

    Attributes:
        image: (D, H, W) float32 in [0, 1], a modified copy.
        label: (D, H, W) bool, the training object (the whole lesion, or its core).
        lesion: (D, H, W) bool, the whole pasted lesion.
        weight: (D, H, W) float32 blend weight of the lesion; ``lesion == (weight >= 0.5)``.
    """

    image: np.ndarray
    label: np.ndarray
    lesion: np.ndarray
    weight: np.ndarray


def _grid(voxels: int, spacing: tuple[float, float, float], elongation: float = 1.0) -> list[np.ndarray]:
    """Centred coordinates (in units of the smallest spacing) of a grid large enough for ``voxels``."""
    scale = np.asarray(spacing, dtype=np.float64) / min(spacing)
    radius = (3.0 * voxels / (4.0 * np.pi)) ** (1.0 / 3.0) * 1.6 * elongation + 2.0
    half = np.maximum(np.ceil(radius / scale).astype(int), 1)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, scale, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _rotate(coords: list[np.ndarray], rot: np.ndarray) -> list[np.ndarray]:
    stacked = np.stack(coords, axis=-1) @ rot.T
    return [stacked[..., i] for i in range(3)]


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return noise / (noise.std() + 1e-8)


def _tube_field(voxels: int, spacing: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Distance (in units of the smallest spacing) to a random smooth curve: a thin elongated structure."""
    length = float(np.clip(voxels / (np.pi * 2.0**2), 4.0, 80.0))
    radius = max(rng.uniform(1.0, 3.0), float(np.sqrt(voxels / (np.pi * length))))
    scale = np.asarray(spacing, dtype=np.float64) / min(spacing)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    a, b = -direction * length / 2, direction * length / 2
    ctrl = rng.normal(size=3) * length * 0.25
    ts = np.linspace(0.0, 1.0, max(16, int(4 * length)))[:, None]
    curve = (1 - ts) ** 2 * a + 2 * (1 - ts) * ts * ctrl + ts**2 * b  # (n, 3) physical units
    pad = 1.5 * radius + 3.0
    lo = np.floor((curve.min(0) - pad) / scale)
    hi = np.ceil((curve.max(0) + pad) / scale)
    shape = tuple(int(v) for v in hi - lo + 1)
    idx = np.clip(np.round(curve / scale - lo).astype(int), 0, np.asarray(shape) - 1)
    on_curve = np.ones(shape, dtype=bool)
    on_curve[idx[:, 0], idx[:, 1], idx[:, 2]] = False
    dist = ndimage.distance_transform_edt(on_curve, sampling=scale)
    return dist + 0.3 * _smooth_noise(shape, 2.0, rng)


def _field(kind: str, voxels: int, spacing: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """The implicit field whose sublevel sets are lesions of this kind (smaller = more inside)."""
    if kind == "tube":
        return _tube_field(voxels, spacing, rng)
    coords = _grid(voxels, spacing)
    shape = coords[0].shape
    if kind in ("ellipsoid", "ring"):
        axes = rng.uniform(0.6, 1.4, size=3)
        z, y, x = _rotate(coords, _random_rotation(rng))
        f = np.sqrt((z / axes[0]) ** 2 + (y / axes[1]) ** 2 + (x / axes[2]) ** 2)
        return f + 0.15 * f.mean() * _smooth_noise(shape, 3.0, rng)
    if kind == "lobulated":
        f = np.full(shape, np.inf)
        radius = float(np.abs(coords[0]).max()) / 1.6
        for _ in range(int(rng.integers(2, 6))):
            centre = rng.normal(size=3) * radius * 0.35
            axes = rng.uniform(0.5, 1.2, size=3) * radius * rng.uniform(0.5, 1.0)
            z, y, x = _rotate([c - o for c, o in zip(coords, centre, strict=True)], _random_rotation(rng))
            f = np.minimum(f, np.sqrt((z / axes[0]) ** 2 + (y / axes[1]) ** 2 + (x / axes[2]) ** 2))
        return f
    if kind == "irregular":
        r = np.sqrt(sum(c**2 for c in coords))
        r = r / (r.max() + 1e-8)
        return r - 0.35 * _smooth_noise(shape, max(1.0, shape[-1] / 8.0), rng) * 0.5
    raise ValueError(f"kind: unknown lesion shape {kind!r}; known: {SHAPES}")


def make_lesion(
    voxels: int,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    kind: str | None = None,
    rng: np.random.Generator | None = None,
    core_prob: float = 0.3,
) -> Lesion:
    """A lesion of about ``voxels`` voxels (exactly, unless the largest component is smaller).

    Args:
        voxels: requested size, >= 1.
        spacing: (sz, sy, sx) of the target volume, so the shape is isotropic in millimetres.
        kind: one of ``SHAPES`` or None for a random one.
        rng: random generator.
        core_prob: probability of a nested sub-region for non-ring shapes (rings always have a core).
    """
    if voxels < 1:
        raise ValueError(f"voxels: must be >= 1, got {voxels}")
    rng = rng if rng is not None else np.random.default_rng()
    kind = kind if kind is not None else str(rng.choice(SHAPES))
    f = _field(kind, voxels, spacing, rng)
    flat = f.ravel()
    n = min(voxels, flat.size)
    threshold = np.partition(flat, n - 1)[n - 1]
    mask = f <= threshold
    mask = _largest_component(mask)
    core = None
    if kind == "ring" or (kind != "tube" and rng.random() < core_prob):
        fraction = rng.uniform(0.15, 0.5)
        inside = f[mask]
        core_threshold = np.quantile(inside, fraction)
        core = _largest_component(mask & (f <= core_threshold))
        if core.sum() < 1:
            core = None
    return Lesion(mask=mask, core=core, kind=kind)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    components, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(np.argmax(sizes)) + 1)


def paste_lesion(
    image: np.ndarray,
    lesion: Lesion,
    centre: tuple[int, int, int],
    rng: np.random.Generator,
    target_core_prob: float = 0.25,
) -> PastedLesion:
    """Blend ``lesion`` into a copy of ``image`` centred at ``centre`` (clipped at the volume border).

    Args:
        image: (D, H, W) float32 in [0, 1].
        lesion: from ``make_lesion``.
        centre: (z, y, x) voxel where the lesion grid's centre goes.
        rng: random generator.
        target_core_prob: probability that the training object is the core instead of the whole lesion.
    """
    shape = image.shape
    dst, src = placement(centre, lesion.mask.shape, shape)

    mask_local = lesion.mask[src]
    core_local = lesion.core[src] if lesion.core is not None else None
    region = image[dst].astype(np.float32)
    surround = region[~mask_local] if (~mask_local).any() else region.ravel()
    base = float(np.median(surround)) if surround.size else 0.5
    contrast = rng.uniform(0.12, 0.45) * (1 if rng.random() < 0.5 else -1)
    if base + contrast > 1.0 or base + contrast < 0.0:
        contrast = -contrast
    texture = _smooth_noise(mask_local.shape, rng.uniform(0.5, 2.0), rng) * rng.uniform(0.01, 0.08)
    lesion_value = np.clip(base + contrast + texture, 0.0, 1.0)
    if core_local is not None:
        core_value = np.clip(base + contrast + rng.uniform(-0.4, 0.4), 0.0, 1.0)
        lesion_value = np.where(core_local, core_value + 0.5 * texture, lesion_value)

    out, full_mask, full_weight = blend(image, dst, mask_local, lesion_value, rng, min_opacity=0.6)
    label = full_mask
    if core_local is not None and core_local.any() and rng.random() < target_core_prob:
        label = np.zeros(shape, dtype=bool)
        label[dst] = core_local
    return PastedLesion(image=out, label=label, lesion=full_mask, weight=full_weight)


def placement(
    centre: tuple[int, int, int], size: tuple[int, ...], shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a lesion grid of ``size`` centred at ``centre`` lands: (volume slices, grid slices), clipped."""
    starts = [c - s // 2 for c, s in zip(centre, size, strict=True)]
    dst = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(starts, size, shape, strict=True))
    src = tuple(slice(d.start - a, d.stop - a) for d, a in zip(dst, starts, strict=True))
    return dst, src


def blend(
    image: np.ndarray,
    dst: tuple[slice, ...],
    mask_local: np.ndarray,
    lesion_value: np.ndarray,
    rng: np.random.Generator,
    min_opacity: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend ``lesion_value`` into a copy of ``image`` at ``dst`` with a partial-volume boundary.

    Returns (image copy, whole-volume bool lesion mask, whole-volume float32 blend weight); the mask is exactly
    ``weight >= 0.5``.
    """
    weight = _boundary_weight(mask_local, rng.uniform(0.3, 1.0), rng.uniform(min_opacity, 1.0))
    out = image.astype(np.float32, copy=True)
    out[dst] = np.clip((1.0 - weight) * image[dst].astype(np.float32) + weight * lesion_value, 0.0, 1.0)
    full_mask = np.zeros(image.shape, dtype=bool)
    full_mask[dst] = mask_local
    full_weight = np.zeros(image.shape, dtype=np.float32)
    full_weight[dst] = weight
    return out, full_mask, full_weight


def _boundary_weight(mask: np.ndarray, sigma: float, opacity: float) -> np.ndarray:
    """Partial-volume blend weight: a blurred mask kept in [0.5, opacity'] inside and [0, 0.5) outside."""
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    inside = np.clip(blurred, 0.5, 1.0)
    inside = 0.5 + (inside - 0.5) * (max(opacity, 0.5) - 0.5) / 0.5 if opacity < 1.0 else inside
    outside = np.minimum(blurred, 0.49)
    return np.where(mask, inside, outside).astype(np.float32)


def sample_lesion_centre(body: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A random voxel from ``body`` (flat indices), as (z, y, x)."""
    flat = int(body[rng.integers(body.size)]) if body.size else int(rng.integers(int(np.prod(shape))))
    return tuple(int(v) for v in np.unravel_index(flat, shape))  # type: ignore[return-value]


def log_uniform_size(rng: np.random.Generator, low: int, high: int) -> int:
    return int(round(float(np.exp(rng.uniform(np.log(low), np.log(high))))))
