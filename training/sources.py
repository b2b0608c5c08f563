"""Train-split volumes and their labelled objects: any label map becomes many binary objects.

Only the manifest's ``train`` split is ever read. A case whose manifest ``split`` is not "train", or a path
outside ``<root>/train``, raises ``ValueError`` before any file is opened: dev images must never reach
training in any form, and the challenge example in ``formats/`` has no licence, so it is refused too.

Arrays are (D, H, W) = (z, y, x) in SimpleITK ``GetArrayFromImage`` order; bounds are half-open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from app.models.preprocess import normalize_intensity

TRAIN_SPLIT = "train"
Bounds = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class CaseInfo:
    """One manifest entry of the train split (paths relative to the data root)."""

    case_id: str
    modality: str
    license: str
    source: str
    gt_kind: str
    image: str
    label: str
    npz: str


@dataclass(frozen=True)
class LabelledObject:
    """One label value of one volume: ``bounds`` half-open, ``voxels`` its size."""

    label: int
    bounds: Bounds
    voxels: int


@dataclass(frozen=True)
class SmallComponent:
    """One 26-connected component of one label: ``seed`` (z, y, x) is one of its voxels, bounds half-open."""

    label: int
    bounds: Bounds
    seed: tuple[int, int, int]
    voxels: int


@dataclass
class TrainVolume:
    """A loaded train case.

    Attributes:
        images: intensity variants, each (D, H, W) float32 in [0, 1] after ``normalize_intensity``:
            "nifti" (original intensities) and "npz" (the challenge's uint8 rendering).
        label: (D, H, W) integer label map, 0 = background.
        spacing: (sz, sy, sx) in mm.
        objects: labelled objects with at least ``min_object_voxels`` voxels.
        body: (n,) flat indices of foreground voxels (where synthetic lesions and pseudo-objects go).
        small: connected components of any label with a size in the small-object range (indexed only when
            the engine oversamples small objects, see ``index_small_components``).
    """

    info: CaseInfo
    images: dict[str, np.ndarray]
    label: np.ndarray
    spacing: tuple[float, float, float]
    objects: list[LabelledObject] = field(default_factory=list)
    body: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    small: list[SmallComponent] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)  # type: ignore[return-value]


def read_manifest(root: str | Path) -> list[dict]:
    with open(Path(root) / "manifest.json", encoding="utf-8") as f:
        return json.load(f)["cases"]


def train_cases(root: str | Path, case_ids: list[str] | None = None) -> list[CaseInfo]:
    """The train-split cases of the manifest (all, or ``case_ids``); any other split raises ``ValueError``."""
    entries = {e["id"]: e for e in read_manifest(root)}
    wanted = list(case_ids) if case_ids is not None else [i for i, e in entries.items() if e["split"] == TRAIN_SPLIT]
    infos = []
    for case_id in wanted:
        if case_id not in entries:
            raise ValueError(f"cases: {case_id!r} is not in the manifest")
        entry = entries[case_id]
        if entry["split"] != TRAIN_SPLIT:
            raise ValueError(f"cases: {case_id!r} is in the {entry['split']!r} split; only train may be used")
        infos.append(
            CaseInfo(
                case_id=case_id,
                modality=entry["modality"],
                license=entry["license"],
                source=entry["source"],
                gt_kind=entry["gt_kind"],
                image=entry["image"],
                label=entry["label"],
                npz=entry["npz"],
            )
        )
    return infos


def require_train_path(root: str | Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root`` and refuse anything outside ``<root>/train``."""
    train_dir = (Path(root) / TRAIN_SPLIT).resolve()
    path = (Path(root) / relative).resolve()
    if train_dir not in path.parents:
        raise ValueError(f"path: {relative!r} is outside the train split; refusing to read it")
    return path


def load_train_volume(root: str | Path, info: CaseInfo, min_object_voxels: int = 50) -> TrainVolume:
    """Read one train case (both intensity variants + label map) and index its objects."""
    image_path = require_train_path(root, info.image)
    label_path = require_train_path(root, info.label)
    npz_path = require_train_path(root, info.npz)
    image = sitk.ReadImage(str(image_path))
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    raw = sitk.GetArrayFromImage(image)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    with np.load(npz_path, allow_pickle=True) as npz:
        npz_image = np.asarray(npz["imgs"])
    if label.shape != raw.shape or npz_image.shape != raw.shape:
        raise ValueError(f"cases: {info.case_id!r} image, label and npz shapes differ")
    images = {
        "nifti": normalize_intensity(raw.astype(np.float32)),
        "npz": normalize_intensity(npz_image.astype(np.float32)),
    }
    volume = TrainVolume(info=info, images=images, label=label, spacing=spacing)  # type: ignore[arg-type]
    volume.objects = index_objects(label, min_object_voxels)
    volume.body = body_voxels(images["nifti"])
    return volume


def index_objects(label: np.ndarray, min_voxels: int) -> list[LabelledObject]:
    """Every label value with at least ``min_voxels`` voxels, with its half-open bounds."""
    counts = np.bincount(label.ravel().astype(np.int64))
    objects = []
    for value, slices in enumerate(ndimage.find_objects(label.astype(np.int64)), start=1):
        if slices is None or value >= len(counts) or counts[value] < min_voxels:
            continue
        bounds = tuple(s.start for s in slices) + tuple(s.stop for s in slices)
        objects.append(LabelledObject(label=value, bounds=bounds, voxels=int(counts[value])))  # type: ignore[arg-type]
    return objects


def body_voxels(image: np.ndarray, max_count: int = 20000, seed: int = 0) -> np.ndarray:
    """A subsample of flat indices of voxels above the volume's low intensities (inside the body)."""
    threshold = np.percentile(image, 30) if image.max() > 0 else 0.0
    idx = np.flatnonzero(image > max(threshold, 1e-3))
    if idx.size == 0:
        idx = np.arange(image.size)
    if idx.size > max_count:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_count, replace=False))
    return idx.astype(np.int64)


def object_mask(
    volume: TrainVolume, obj: LabelledObject, rng: np.random.Generator, component_prob: float, min_voxels: int
) -> np.ndarray:
    """The full-volume bool mask of ``obj``; with ``component_prob`` one of its connected components."""
    z0, y0, x0, z1, y1, x1 = obj.bounds
    local = volume.label[z0:z1, y0:y1, x0:x1] == obj.label
    if rng.random() < component_prob:
        components, n = cc3d.connected_components(local, connectivity=26, return_N=True)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            big = np.flatnonzero(sizes >= min_voxels) + 1
            if big.size:
                local = components == rng.choice(big)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[z0:z1, y0:y1, x0:x1] = local
    return mask


def sample_labelled(
    volumes: list[TrainVolume], rng: np.random.Generator, component_prob: float, min_voxels: int
) -> tuple[TrainVolume, np.ndarray]:
    """A random labelled object: volume drawn with weight sqrt(#objects), then an object uniformly."""
    candidates = [v for v in volumes if v.objects]
    if not candidates:
        raise ValueError("data: no labelled objects in the selected train cases")
    weights = np.sqrt([len(v.objects) for v in candidates])
    volume = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
    obj = volume.objects[rng.integers(len(volume.objects))]
    return volume, object_mask(volume, obj, rng, component_prob, min_voxels)


def index_small_components(label: np.ndarray, min_voxels: int, max_voxels: int) -> list[SmallComponent]:
    """Every 26-connected component of every label with ``min_voxels`` to ``max_voxels`` voxels.

    Small structures are rare among whole labels (most are organs or parcels), yet users' hardest objects are
    small; their components are indexed once so a draw can pick one directly.
    """
    components, n = cc3d.connected_components(label, connectivity=26, return_N=True)
    if n == 0:
        return []
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    out = []
    for index, slices in enumerate(ndimage.find_objects(components), start=1):
        if slices is None or not (min_voxels <= sizes[index] <= max_voxels):
            continue
        local = components[slices] == index
        offset = np.argwhere(local)[0]
        seed = tuple(int(s.start + o) for s, o in zip(slices, offset, strict=True))
        bounds = tuple(s.start for s in slices) + tuple(s.stop for s in slices)
        out.append(SmallComponent(int(label[seed]), bounds, seed, int(sizes[index])))  # type: ignore[arg-type]
    return out


def small_component_mask(volume: TrainVolume, component: SmallComponent) -> np.ndarray:
    """The full-volume bool mask of one indexed small component."""
    sl = tuple(slice(a, b) for a, b in zip(component.bounds[:3], component.bounds[3:], strict=True))
    local = volume.label[sl] == component.label
    labels = cc3d.connected_components(local, connectivity=26)
    seed = tuple(s - a for s, a in zip(component.seed, component.bounds[:3], strict=True))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[sl] = labels == labels[seed]
    return mask


def sample_small(volumes: list[TrainVolume], rng: np.random.Generator) -> tuple[TrainVolume, np.ndarray] | None:
    """A random small component (volume drawn with weight sqrt(#components)); None when none is indexed."""
    candidates = [v for v in volumes if v.small]
    if not candidates:
        return None
    weights = np.sqrt([len(v.small) for v in candidates])
    volume = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
    return volume, small_component_mask(volume, volume.small[rng.integers(len(volume.small))])


def composite_mask(volume: TrainVolume, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A nested target's box region: the object plus some of the labels that touch it, near it.

    The neighbours are looked for in the object's box grown on each side by 25-100 % of its extent, so an
    enclosing parent (white matter around a nucleus, the cord around its grey matter) contributes only its
    part around the object and the composite box stays a few times the object's. Each touching label joins
    with probability 0.5 (at least one). None when no other label touches the object.

    Args:
        volume: the object's volume.
        mask: (D, H, W) bool object (one label or one of its components).
    """
    coords = np.argwhere(mask)
    lo, hi = coords.min(0), coords.max(0) + 1
    grow = np.ceil((hi - lo) * rng.uniform(0.25, 1.0)).astype(int) + 1
    a, b = np.maximum(lo - grow, 0), np.minimum(hi + grow, volume.shape)
    sl = tuple(slice(int(x), int(y)) for x, y in zip(a, b, strict=True))
    local_label, local_mask = volume.label[sl], mask[sl]
    own = np.unique(local_label[local_mask])
    ring = ndimage.binary_dilation(local_mask, structure=np.ones((3, 3, 3), bool)) & ~local_mask
    neighbours = np.setdiff1d(np.unique(local_label[ring]), np.append(own, 0))
    if neighbours.size == 0:
        return None
    chosen = neighbours[rng.random(neighbours.size) < 0.5]
    if chosen.size == 0:
        chosen = neighbours[[int(rng.integers(neighbours.size))]]
    composite = np.zeros(volume.shape, dtype=bool)
    composite[sl] = local_mask | np.isin(local_label, chosen)
    return composite
