"""Reading one CVPR 2025 challenge input file into typed prompts.

An input ``<name>.npz`` holds ``imgs`` (D, H, W) uint8, ``spacing`` (x, y, z order in challenge files), and
optionally ``boxes`` (one dict per class: z_min, z_max, z_mid, z_mid_x_min, z_mid_y_min, z_mid_x_max,
z_mid_y_max; a 2D box on slice z_mid, x = last axis). From round 2 it also holds ``clicks`` (one dict per
class, ``{'fg': [[z, y, x], ...], 'bg': [...]}``), ``clicks_order`` (per class the kinds 'fg'/'bg' in the
order they were placed) and ``prev_pred`` (the previous round's label map, not needed: we replay).

The i-th box / click dict belongs to class i + 1 of the output label map. Click coordinates are voxel
indices (z, y, x) of ``imgs``. ``boxes`` and ``clicks`` are pickled object arrays: only open trusted files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.cases import Box, SpacingOrder, box_from_challenge
from evaluation.click_rule import Click

CLICK_KINDS = {"fg": 1, "bg": 0}
"""clicks_order entry -> click label (1 foreground, 0 background)."""


@dataclass(frozen=True)
class ClassPrompts:
    """Every prompt one class has received so far, in the order the user gave them.

    Attributes:
        box: inclusive 3D box (z0, y0, x0, z1, y1, x1) made from the mid-slice box, or None.
        clicks: the clicks in ``clicks_order`` order.
    """

    box: Box | None
    clicks: tuple[Click, ...]


@dataclass(frozen=True)
class ChallengeCase:
    """One input file.

    Attributes:
        name: the file name without ``.npz`` (the output file gets the same name).
        image: (D, H, W) volume, as stored.
        spacing: (sz, sy, sx) in mm.
        prompts: one entry per class; entry i is class i + 1.
    """

    name: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    prompts: tuple[ClassPrompts, ...]


def _entries(value: Any) -> list[Any]:
    """The per-class entries of a stored list: an object array, a 0-d array holding a list, or a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _entries(value.item())
        return list(value)
    return list(value)


def _point(raw: Any, field: str) -> tuple[int, int, int]:
    arr = np.asarray(raw)
    if arr.shape != (3,) or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{field}: expected a [z, y, x] voxel index, got {raw!r}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise ValueError(f"{field}: expected integer voxel indices, got {arr.tolist()}")
    return int(arr[0]), int(arr[1]), int(arr[2])


def ordered_clicks(clicks: Mapping[str, Any], order: Iterable[Any], class_index: int) -> tuple[Click, ...]:
    """Interleave one class's 'fg' and 'bg' click lists as ``order`` says (the n-th 'fg' is fg[n])."""
    if not isinstance(clicks, Mapping):
        raise ValueError(f"clicks: entry {class_index} must be a dict with 'fg' and 'bg', got {type(clicks).__name__}")
    by_kind = {kind: [_point(p, f"clicks[{class_index}][{kind!r}]") for p in _entries(clicks.get(kind))]
               for kind in CLICK_KINDS}
    used = dict.fromkeys(CLICK_KINDS, 0)
    out: list[Click] = []
    for raw_kind in _entries(order):
        kind = str(raw_kind)
        if kind not in CLICK_KINDS:
            raise ValueError(f"clicks_order: entry {class_index} holds {kind!r}; expected 'fg' or 'bg'")
        if used[kind] >= len(by_kind[kind]):
            raise ValueError(f"clicks_order: entry {class_index} lists more {kind!r} clicks than clicks holds "
                             f"({len(by_kind[kind])})")
        out.append(Click(point=by_kind[kind][used[kind]], label=CLICK_KINDS[kind]))
        used[kind] += 1
    unused = {k: len(by_kind[k]) - used[k] for k in CLICK_KINDS if used[k] < len(by_kind[k])}
    if unused:
        raise ValueError(f"clicks_order: entry {class_index} leaves clicks unordered: {unused}")
    return tuple(out)


def read_case(path: str | Path, *, spacing_order: SpacingOrder = "xyz") -> ChallengeCase:
    """Read one challenge input file (see the module docstring); ``spacing_order`` is the file's axis order."""
    path = Path(path)
    with np.load(path, allow_pickle=True) as npz:
        files = set(npz.files)
        if "imgs" not in files:
            raise ValueError(f"imgs: {path.name} has no 'imgs'")
        image = np.asarray(npz["imgs"])
        spacing = np.asarray(npz["spacing"], dtype=np.float64).reshape(-1) if "spacing" in files else None
        boxes = _entries(npz["boxes"]) if "boxes" in files else None
        clicks = _entries(npz["clicks"]) if "clicks" in files else None
        order = _entries(npz["clicks_order"]) if "clicks_order" in files else None

    if image.ndim != 3:
        raise ValueError(f"imgs: expected a (D, H, W) volume, got shape {image.shape}")
    if spacing is None or spacing.shape != (3,):
        raise ValueError(f"spacing: expected 3 values, got {None if spacing is None else spacing.tolist()}")
    if spacing_order == "xyz":
        spacing = spacing[::-1]
    elif spacing_order != "zyx":
        raise ValueError(f"spacing_order: expected 'xyz' or 'zyx', got {spacing_order!r}")
    if clicks is not None and order is None:
        raise ValueError("clicks_order: missing while 'clicks' is given (the order of fg/bg clicks is needed)")
    if clicks is not None and order is not None and len(order) != len(clicks):
        raise ValueError(f"clicks_order: {len(order)} entries for {len(clicks)} click dicts")
    if boxes is not None and clicks is not None and len(boxes) != len(clicks):
        raise ValueError(f"clicks: {len(clicks)} click dicts for {len(boxes)} boxes")

    n_classes = len(boxes) if boxes is not None else len(clicks or [])
    if n_classes > np.iinfo(np.uint8).max:
        raise ValueError(f"boxes: {n_classes} classes do not fit the uint8 output label map")
    prompts = tuple(
        ClassPrompts(
            box=box_from_challenge(boxes[i]) if boxes is not None else None,
            clicks=ordered_clicks(clicks[i], order[i], i) if clicks is not None and order is not None else (),
        )
        for i in range(n_classes)
    )
    return ChallengeCase(
        name=path.name.removesuffix(".npz"),
        image=image,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        prompts=prompts,
    )
