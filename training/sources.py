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
    """

    info: CaseInfo
    images: dict[str, np.ndarray]
    label: np.ndarray
    spacing: tuple[float, float, float]
    objects: list[LabelledObject] = field(default_factory=list)
    body: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

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
