"""Pseudo-objects from real train volumes: regions of coherent intensity found by SLIC supervoxels.

They teach "the coherent structure in this box" on real boundaries and real textures, which labelled atlases
and organs alone do not cover (tumours, lesions, unseen tissues). A pseudo-object is one SLIC supervoxel,
or the connected union of a seed supervoxel with neighbours of similar mean intensity, computed on a random
crop (SLIC on a whole volume is too slow to run per sample, so objects are kept in a refreshed pool).

Arrays are (D, H, W) = (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from skimage.segmentation import slic

from training.sources import TrainVolume


@dataclass
class PseudoObject:
    """A pseudo-object: ``mask`` (d, h, w) bool placed at ``offset`` (z, y, x) in volume ``volume_index``."""

    volume_index: int
    offset: tuple[int, int, int]
    mask: np.ndarray

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        z, y, x = self.offset
        d, h, w = self.mask.shape
        out[z : z + d, y : y + h, x : x + w] = self.mask
        return out


def make_pseudo_object(
    volume: TrainVolume, volume_index: int, rng: np.random.Generator, min_voxels: int = 50
) -> PseudoObject | None:
    """One pseudo-object from a random crop of ``volume`` (None when the crop had no usable region)."""
    image = volume.images["nifti"]
    shape = np.asarray(image.shape)
    crop = np.minimum(shape, [rng.integers(16, 49), rng.integers(40, 129), rng.integers(40, 129)])
    flat = int(volume.body[rng.integers(volume.body.size)]) if volume.body.size else int(rng.integers(image.size))
    centre = np.asarray(np.unravel_index(flat, image.shape))
    start = np.clip(centre - crop // 2, 0, shape - crop)
    sl = tuple(slice(int(a), int(a + c)) for a, c in zip(start, crop, strict=True))
    region = image[sl]
    if float(region.max() - region.min()) < 1e-3:
        return None
    segments = slic(
        region,
        n_segments=int(rng.integers(20, 150)),
        compactness=float(rng.uniform(0.03, 0.3)),
        channel_axis=None,
        spacing=np.asarray(volume.spacing) / min(volume.spacing),
        start_label=1,
        enforce_connectivity=True,
    )
    n = int(segments.max())
    counts = np.bincount(segments.ravel(), minlength=n + 1)
    means = np.bincount(segments.ravel(), weights=region.ravel(), minlength=n + 1) / np.maximum(counts, 1)
    usable = np.flatnonzero((counts >= min_voxels) & (means > 0.05))
    usable = usable[usable > 0]
    if usable.size == 0:
        return None
    seed = int(rng.choice(usable))
    mask = segments == seed
    if rng.random() < 0.5:
        # Grow into neighbours of similar mean intensity, keep the part connected to the seed.
        tolerance = rng.uniform(0.02, 0.08)
        similar = np.flatnonzero(np.abs(means - means[seed]) < tolerance)
        grown = np.isin(segments, similar[similar > 0])
        components = cc3d.connected_components(grown, connectivity=6)
        seed_component = np.bincount(components[mask]).argmax()
        mask = components == seed_component
    if mask.sum() < min_voxels:
        return None
    # Tighten to the mask's bounds so the pool stays small.
    nz = np.nonzero(mask)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    mask = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    offset = tuple(int(s + a) for s, a in zip(start, lo, strict=True))
    return PseudoObject(volume_index=volume_index, offset=offset, mask=mask)  # type: ignore[arg-type]


class PseudoObjectPool:
    """A pool of pseudo-objects; each draw refreshes one entry with probability ``refresh_prob``."""

    def __init__(
        self,
        volumes: list[TrainVolume],
        size: int,
        refresh_prob: float,
        rng: np.random.Generator,
        min_voxels: int = 50,
    ) -> None:
        if not volumes:
            raise ValueError("volumes: the pseudo-object pool needs at least one volume")
        self.volumes = volumes
        self.size = max(1, size)
        self.refresh_prob = refresh_prob
        self.min_voxels = min_voxels
        self.created = 0
        self.objects: list[PseudoObject] = []
        while len(self.objects) < self.size:
            self.objects.append(self._new(rng))

    def _new(self, rng: np.random.Generator) -> PseudoObject:
        for _ in range(50):
            index = int(rng.integers(len(self.volumes)))
            obj = make_pseudo_object(self.volumes[index], index, rng, self.min_voxels)
            if obj is not None:
                self.created += 1
                return obj
        raise ValueError("volumes: could not find any pseudo-object in 50 tries")

    def draw(self, rng: np.random.Generator) -> tuple[TrainVolume, np.ndarray]:
        """A pseudo-object as (its volume, its full-volume bool mask)."""
        slot = int(rng.integers(len(self.objects)))
        if rng.random() < self.refresh_prob:
            self.objects[slot] = self._new(rng)
        obj = self.objects[slot]
        volume = self.volumes[obj.volume_index]
        return volume, obj.full_mask(volume.shape)
