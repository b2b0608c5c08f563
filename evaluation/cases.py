"""Evaluation cases: challenge-format npz files with ground truth, chosen through a manifest or a folder.

A case is one (D, H, W) uint8 volume (``imgs``), its label map (``gts``), its spacing and one box per class.
Boxes are our inclusive 3D boxes [z0, y0, x0, z1, y1, x1], made either from the challenge's 2D mid-slice box
(z extent from ``z_min``/``z_max``, y/x extent of the object on slice ``z_mid``; "2d", the official prompt) or
from the exact 3D extent of the ground truth ("3d").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Box = tuple[int, int, int, int, int, int]
"""Inclusive voxel box (z0, y0, x0, z1, y1, x1)."""

BoxMode = Literal["2d", "3d"]
SpacingOrder = Literal["zyx", "xyz"]
MODALITIES = ("CT", "MR", "PET", "US", "Microscopy", "Endoscopy", "XRay")
DEFAULT_MIN_VOXELS = 50


@dataclass(frozen=True)
class CaseRef:
    """Where a case lives before it is loaded.

    Attributes:
        name: the case name (manifest id, or the npz file stem).
        npz: path of the challenge-format npz holding ``imgs`` and ``gts``.
        modality: "CT", "MR", ... or "" when unknown.
        spacing_order: axis order of the file's ``spacing`` ("zyx" for our cases, "xyz" for challenge files).
    """

    name: str
    npz: Path
    modality: str
    spacing_order: SpacingOrder = "zyx"


@dataclass
class EvalCase:
    """One loaded case.

    Attributes:
        name, modality: as in ``CaseRef``.
        image: (D, H, W) uint8 volume.
        ground_truth: (D, H, W) label map holding only the scored classes (other labels set to 0).
        spacing: (sz, sy, sx) in mm.
        classes: the scored label values, ascending; they are also the object ids.
        boxes: class -> inclusive box, or None when the case has no box prompt (round 1 scores 0).
    """

    name: str
    modality: str
    image: np.ndarray
    ground_truth: np.ndarray
    spacing: tuple[float, float, float]
    classes: list[int]
    boxes: dict[int, Box] | None


def box_from_challenge(entry: Mapping[str, int]) -> Box:
    """The inclusive 3D box of a challenge box dict: z from z_min..z_max, y/x from the z_mid slice's 2D box."""
    try:
        return (
            int(entry["z_min"]),
            int(entry["z_mid_y_min"]),
            int(entry["z_mid_x_min"]),
            int(entry["z_max"]),
            int(entry["z_mid_y_max"]),
            int(entry["z_mid_x_max"]),
        )
    except KeyError as err:
        raise ValueError(f"boxes: box dict lacks key {err.args[0]!r}") from None


def box_from_mask(mask: np.ndarray) -> Box:
    """The exact inclusive 3D box of a non-empty (D, H, W) mask."""
    coords = np.argwhere(mask)
    if coords.size == 0:
        raise ValueError("mask: empty mask has no box")
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


def select_classes(ground_truth: np.ndarray, min_voxels: int = DEFAULT_MIN_VOXELS) -> list[int]:
    """Label values (not 0) with at least ``min_voxels`` voxels, ascending."""
    values, counts = np.unique(ground_truth, return_counts=True)
    return [int(v) for v, n in zip(values, counts, strict=True) if v != 0 and n >= min_voxels]


def load_case(ref: CaseRef, *, box_mode: BoxMode = "2d", min_voxels: int = DEFAULT_MIN_VOXELS) -> EvalCase:
    """Read one npz into an ``EvalCase`` (objects = labels with >= ``min_voxels`` voxels)."""
    with np.load(ref.npz, allow_pickle=True) as npz:
        if "gts" not in npz.files:
            raise ValueError(f"data: {ref.npz} has no 'gts' (ground truth); it cannot be scored")
        image = np.asarray(npz["imgs"])
        gts = np.asarray(npz["gts"])
        spacing = np.asarray(npz["spacing"], dtype=np.float64).reshape(-1)
        raw_boxes = npz["boxes"] if "boxes" in npz.files else None
    if image.ndim != 3 or image.shape != gts.shape:
        raise ValueError(f"data: {ref.npz}: imgs {image.shape} and gts {gts.shape} must be the same 3D shape")
    if spacing.shape != (3,):
        raise ValueError(f"data: {ref.npz}: spacing must hold 3 values, got {spacing.shape}")
    if ref.spacing_order == "xyz":
        spacing = spacing[::-1]

    classes = select_classes(gts, min_voxels)
    boxes: dict[int, Box] | None
    if box_mode == "3d":
        boxes = {c: box_from_mask(gts == c) for c in classes}
    elif raw_boxes is None:
        boxes = None
    else:
        # One dict per label present in gts, in ascending label order.
        present = [int(v) for v in np.unique(gts) if v != 0]
        entries = list(raw_boxes.item()) if raw_boxes.ndim == 0 else list(raw_boxes)
        if len(entries) != len(present):
            raise ValueError(f"data: {ref.npz}: {len(entries)} boxes for {len(present)} labels in gts")
        by_label = dict(zip(present, entries, strict=True))
        boxes = {c: box_from_challenge(by_label[c]) for c in classes}

    ground_truth = np.where(np.isin(gts, classes), gts, 0).astype(gts.dtype)
    return EvalCase(
        name=ref.name,
        modality=ref.modality,
        image=image,
        ground_truth=ground_truth,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        classes=classes,
        boxes=boxes,
    )


def _has_ground_truth(path: Path) -> bool:
    with np.load(path, allow_pickle=True) as npz:
        return "gts" in npz.files


def _modality_from_name(stem: str) -> str:
    prefix = stem.split("_", 1)[0]
    return next((m for m in MODALITIES if m.lower() == prefix.lower()), "")


def find_cases(
    data: str | Path,
    *,
    split: str | None = "dev",
    select: str | int | Sequence[str] | None = None,
    spacing_order: SpacingOrder = "zyx",
) -> list[CaseRef]:
    """List the cases of ``data``, sorted by name.

    Args:
        data: a folder with ``manifest.json`` (our data: cases of ``split``, or of every split when None), or
            any folder of challenge-format npz files with ``gts`` (searched recursively; ``split`` ignored).
        select: None for all; an int N (or a digit string) for the first N; a comma-separated string or a
            sequence of names for those cases.
        spacing_order: axis order of ``spacing`` in a bare folder's files (manifest cases are always zyx).
    """
    root = Path(data)
    manifest = root / "manifest.json"
    refs: list[CaseRef]
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["cases"]
        refs = [
            CaseRef(name=e["id"], npz=root / e["npz"], modality=e.get("modality", ""), spacing_order="zyx")
            for e in entries
            if split is None or e["split"] == split
        ]
    elif root.is_dir():
        refs = [
            CaseRef(name=p.stem, npz=p, modality=_modality_from_name(p.stem), spacing_order=spacing_order)
            for p in root.rglob("*.npz")
            if _has_ground_truth(p)
        ]
    else:
        raise ValueError(f"data: {root} is not a folder")
    refs.sort(key=lambda r: r.name)
    if not refs:
        where = f" for split {split!r}" if manifest.is_file() and split else " (npz files with 'gts')"
        raise ValueError(f"data: no cases found in {root}{where}")
    return _select(refs, select)


def _select(refs: list[CaseRef], select: str | int | Sequence[str] | None) -> list[CaseRef]:
    if select is None:
        return refs
    if isinstance(select, str) and select.strip().isdigit():
        select = int(select)
    if isinstance(select, int):
        if select < 1:
            raise ValueError(f"cases: expected a positive count, got {select}")
        return refs[:select]
    names = [n.strip() for n in select.split(",")] if isinstance(select, str) else list(select)
    by_name = {r.name: r for r in refs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"cases: unknown case(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]
