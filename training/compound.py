"""Compound synthetic lesions: a tumour-like structure made of nested sub-regions, one of them the object.

Real lesions as annotators label them are rarely one blob that fills its box: a glioma is an oedema shell
around an enhancing rim around a necrotic core, with scattered non-enhancing islands; a sub-region alone
fills 3-30 % of its box, has holes and may fall apart into several components. Single-blob lesions
(``training.synthetic``) teach the opposite prior ("fill most of the box"), so a model trained on them alone
over-segments such objects. This generator builds the whole structure on one grid and picks one of its
regions as the training object, so the model has to find *which* structure inside the box the box means.

Regions (disjoint integer codes in ``CompoundLesion.regions``):
    1 NECROSIS   the tumour's inner core (sometimes absent)
    2 OEDEMA     the outer envelope minus the tumour (a shell with a hole)
    3 ISLANDS    a few small blobs scattered in the envelope (several components)
    4 RIM        the tumour minus its core (a ring)
The training object (``OBJECTS``) is one region, a union the way users also label (tumour core = necrosis
+ rim + islands, whole = every region), each with its own intensity so every object has a visible boundary.

Arrays are (D, H, W) = (z, y, x). Shapes reuse ``training.synthetic``'s implicit fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.synthetic import PastedLesion, _field, _largest_component, _smooth_noise, blend, placement

NECROSIS, OEDEMA, ISLANDS, RIM = 1, 2, 3, 4
REGION_NAMES = {NECROSIS: "necrosis", OEDEMA: "oedema", ISLANDS: "islands", RIM: "rim"}
# object name -> region codes whose union is the object
OBJECTS: dict[str, tuple[int, ...]] = {
    "necrosis": (NECROSIS,),
    "oedema": (OEDEMA,),
    "islands": (ISLANDS,),
    "rim": (RIM,),
    "tumour_core": (NECROSIS, RIM, ISLANDS),
    "whole": (NECROSIS, OEDEMA, ISLANDS, RIM),
}
# Sub-regions are drawn more often than unions: they are the hard, sparse objects.
OBJECT_WEIGHTS = {"necrosis": 1.0, "oedema": 1.5, "islands": 1.0, "rim": 1.5, "tumour_core": 1.0, "whole": 0.5}


@dataclass
class CompoundLesion:
    """A generated compound lesion on its own small grid.

    Attributes:
        regions: (d, h, w) uint8 region codes (0 = outside the lesion).
    """

    regions: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.regions > 0

    def object_mask(self, name: str) -> np.ndarray:
        return np.isin(self.regions, OBJECTS[name])


def _sublevel(f: np.ndarray, inside: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of ``inside`` voxels with the smallest ``f`` (empty when ``inside`` is)."""
    if not inside.any():
        return inside
    threshold = np.quantile(f[inside], float(np.clip(fraction, 0.0, 1.0)))
    return inside & (f <= threshold)


def _offset_field(f: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """``f`` plus a random linear ramp: the tumour sits off-centre in its envelope, as real ones do."""
    grads = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in f.shape], indexing="ij")
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-8
    ramp = sum(d * g for d, g in zip(direction, grads, strict=True))
    scale = float(np.std(f)) if f.size else 1.0
    return f + spread * scale * ramp


def make_compound_lesion(
    voxels: int, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), rng: np.random.Generator | None = None
) -> CompoundLesion:
    """A compound lesion whose envelope holds about ``voxels`` voxels.

    Args:
        voxels: envelope size, >= 50 (smaller envelopes have no room for sub-regions).
        spacing: (sz, sy, sx) of the target volume, so shapes are isotropic in millimetres.
        rng: random generator.
    """
    if voxels < 50:
        raise ValueError(f"voxels: a compound lesion needs >= 50 voxels, got {voxels}")
    rng = rng if rng is not None else np.random.default_rng()
    envelope_field = _field(str(rng.choice(("irregular", "lobulated", "ellipsoid"))), voxels, spacing, rng)
    n = min(voxels, envelope_field.size)
    envelope = _largest_component(envelope_field <= np.partition(envelope_field.ravel(), n - 1)[n - 1])

    regions = np.zeros(envelope.shape, np.uint8)
    regions[envelope] = OEDEMA
    # The tumour: a smoother, off-centre sublevel set inside the envelope.
    tumour_field = _offset_field(
        ndimage.gaussian_filter(envelope_field, 1.0) + 0.15 * _smooth_noise(envelope.shape, 2.0, rng) * np.std(envelope_field),
        rng,
        spread=rng.uniform(0.0, 0.6),
    )
    tumour = _largest_component(_sublevel(tumour_field, envelope, rng.uniform(0.2, 0.65)))
    if rng.random() < 0.75:  # a necrotic core inside the tumour; else a solid tumour (all rim)
        core = _largest_component(_sublevel(tumour_field, tumour, rng.uniform(0.2, 0.6)))
        regions[tumour] = RIM
        regions[core] = NECROSIS
    else:
        regions[tumour] = RIM
    # Islands: small blobs of smooth noise maxima anywhere in the envelope, several components.
    noise = _smooth_noise(envelope.shape, max(1.0, min(envelope.shape) / 10.0), rng)
    islands = _sublevel(-noise, envelope, rng.uniform(0.03, 0.12)) & (regions != NECROSIS)
    regions[islands] = ISLANDS
    if not (regions == OEDEMA).any():  # the tumour took the whole envelope: keep a thin oedema shell
        regions[envelope & ~ndimage.binary_erosion(envelope)] = OEDEMA
    return CompoundLesion(regions=regions)


def choose_object(lesion: CompoundLesion, rng: np.random.Generator, min_voxels: int = 1) -> str | None:
    """A random object name among those with at least ``min_voxels`` voxels (None when none has)."""
    names = [k for k in OBJECTS if int(lesion.object_mask(k).sum()) >= min_voxels]
    if not names:
        return None
    w = np.asarray([OBJECT_WEIGHTS[k] for k in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def paste_compound(
    image: np.ndarray,
    lesion: CompoundLesion,
    centre: tuple[int, int, int],
    object_name: str,
    rng: np.random.Generator,
) -> PastedLesion:
    """Blend ``lesion`` into a copy of ``image`` at ``centre``; the label is the region(s) ``object_name``.

    Each region gets its own intensity (brighter or darker than the surroundings; the tumour's regions at
    least 0.1 away from the oedema's) and texture; region boundaries are blurred slightly (partial volume),
    the envelope's boundary as in ``paste_lesion``. The label is the hard region mask.

    Args:
        image: (D, H, W) float32 in [0, 1].
        lesion: from ``make_compound_lesion``.
        centre: (z, y, x) voxel where the lesion grid's centre goes (clipped at the volume border).
        object_name: a key of ``OBJECTS``.
        rng: random generator.
    """
    if object_name not in OBJECTS:
        raise ValueError(f"object_name: unknown {object_name!r}; known: {sorted(OBJECTS)}")
    dst, src = placement(centre, lesion.regions.shape, image.shape)
    regions = lesion.regions[src]
    envelope = regions > 0

    region = image[dst].astype(np.float32)
    surround = region[~envelope] if (~envelope).any() else region.ravel()
    base = float(np.median(surround)) if surround.size else 0.5
    values = np.zeros(5, np.float32)
    values[0] = base
    for code in (OEDEMA, RIM, ISLANDS, NECROSIS):
        # Oedema is a mild change, the others stronger; each brighter or darker at random.
        magnitude = {OEDEMA: (0.08, 0.3), RIM: (0.15, 0.5), ISLANDS: (0.1, 0.4), NECROSIS: (0.1, 0.45)}[code]
        value = base + rng.uniform(*magnitude) * (1 if rng.random() < 0.5 else -1)
        value = float(np.clip(value, 0.02, 0.98))
        if code != OEDEMA and abs(value - values[OEDEMA]) < 0.1:
            value = float(np.clip(values[OEDEMA] + (0.15 if values[OEDEMA] < 0.5 else -0.15), 0.0, 1.0))
        values[code] = value
    lesion_value = ndimage.gaussian_filter(values[regions], rng.uniform(0.3, 0.9))
    texture = _smooth_noise(regions.shape, rng.uniform(0.5, 2.0), rng) * rng.uniform(0.01, 0.06)
    lesion_value = np.clip(lesion_value + texture, 0.0, 1.0)

    out, full_lesion, full_weight = blend(image, dst, envelope, lesion_value, rng, min_opacity=0.7)
    label = np.zeros(image.shape, dtype=bool)
    label[dst] = np.isin(regions, OBJECTS[object_name])
    return PastedLesion(image=out, label=label, lesion=full_lesion, weight=full_weight)
