"""The challenge's metrics: DSC, NSD at 2 mm, their areas under the click curve, and the runtime budget.

Per round, DSC and NSD are means over the case's classes of a (D, H, W) label map against the ground truth
label map. NSD is only computed when that round's mean DSC exceeds 0.2 (else 0), as in the official code.
Surface Dice is MONAI's ``compute_surface_dice`` with ``use_subvoxels=True``, which follows DeepMind's
``surface_distance`` (the official implementation: surfel areas, distances in mm with the case spacing).
Spacing is (sz, sy, sx) in mm, in the array's axis order.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.metrics import compute_surface_dice
from scipy.integrate import trapezoid

from evaluation.click_contract import size_group

NSD_TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2
SECONDS_PER_CLASS = 90.0
N_ROUNDS = 6


def dice(ground_truth: np.ndarray, prediction: np.ndarray) -> float:
    """2|G∩S| / (|G|+|S|) of two boolean masks; 1.0 when both are empty (the official code gives NaN there,
    but its classes always exist in the ground truth)."""
    gt = np.asarray(ground_truth, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    total = int(gt.sum()) + int(pred.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(gt, pred).sum()) / total


def surface_dice(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice of two boolean (D, H, W) masks at ``tolerance_mm`` with (sz, sy, sx) spacing.

    1.0 when both masks are empty, 0.0 when exactly one is. Both masks are cropped to their joint bounding
    box plus one voxel first: outside the volume counts as background, as in the reference implementation.
    """
    gt = np.asarray(ground_truth, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    if len(spacing) != gt.ndim:
        raise ValueError(f"spacing: expected {gt.ndim} values, got {len(spacing)}")
    gt_any, pred_any = bool(gt.any()), bool(pred.any())
    if not gt_any and not pred_any:
        return 1.0
    if gt_any != pred_any:
        return 0.0
    union = gt | pred
    window = []
    for axis in range(gt.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(gt.ndim) if a != axis)))
        window.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    gt_c, pred_c = gt[tuple(window)], pred[tuple(window)]
    # MONAI wants one-hot [B, C, ...]; channel 0 is the (ignored) background.
    y = torch.from_numpy(np.stack([~gt_c, gt_c])[None].astype(np.float32))
    y_pred = torch.from_numpy(np.stack([~pred_c, pred_c])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nsd = compute_surface_dice(
            y_pred, y, [float(tolerance_mm)], spacing=[float(s) for s in spacing], use_subvoxels=True
        )
    return float(nsd[0, 0])


def round_scores(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> tuple[float, float]:
    """(DSC, NSD) of one round; NSD only when DSC > 0.2, else 0 (the official shortcut)."""
    dsc, nsd = class_round_scores(ground_truth, prediction, classes, spacing, tolerance_mm)
    return float(np.mean(dsc)), float(np.mean(nsd))


def class_round_scores(
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> tuple[list[float], list[float]]:
    """Per class (DSC, NSD) lists of one round; their means are ``round_scores``. The official shortcut holds
    for the round as a whole: every class's NSD is 0 when the mean DSC is <= 0.2."""
    dsc = [dice(ground_truth == c, prediction == c) for c in classes]
    if float(np.mean(dsc)) <= NSD_MIN_DSC:
        return dsc, [0.0] * len(dsc)
    return dsc, [surface_dice(ground_truth == c, prediction == c, spacing, tolerance_mm) for c in classes]


def click_auc(per_round: Sequence[float]) -> float:
    """Trapezoid area over the five click rounds: 0.5*v2 + v3 + v4 + v5 + 0.5*v6 (at most 4).

    ``per_round`` holds the six values of rounds 1..6; round 1 (the box) is not part of the area.
    """
    if len(per_round) != N_ROUNDS:
        raise ValueError(f"per_round: expected {N_ROUNDS} values, got {len(per_round)}")
    return float(trapezoid(np.asarray(per_round[1:], dtype=np.float64), dx=1.0))


@dataclass
class CaseResult:
    """One case scored with one method: the official per-case row (before the runtime rule is applied).

    Attributes:
        case_name: the case's name (CaseName).
        method: the method's name.
        modality: CT, MR, ... ("" when unknown).
        classes: the label values scored.
        dsc, nsd: per-round means over classes, rounds 1..6.
        running_time: seconds of inference per round, rounds 1..6 (click simulation and scoring excluded).
        n_clicks: clicks actually placed per round (rounds 1..6; round 1 is the box round, always 0).
        class_dsc, class_nsd: per round (1..6) the per-class values in ``classes`` order (empty when not
            recorded); their means are ``dsc`` and ``nsd``.
        class_voxels: ground-truth voxels per class (empty when not recorded); sets the object's size group.
        class_obeyed, class_fixed: per click round (2..6) and class, the click contract's "obeyed" (1.0/0.0)
            and "region fixed" share (``evaluation.click_contract``); None where the class got no click.
            They describe what the clicks did, so the runtime rule does not zero them.
    """

    case_name: str
    method: str
    modality: str
    classes: list[int]
    dsc: list[float]
    nsd: list[float]
    running_time: list[float]
    n_clicks: list[int]
    class_dsc: list[list[float]] = field(default_factory=list)
    class_nsd: list[list[float]] = field(default_factory=list)
    class_voxels: list[int] = field(default_factory=list)
    class_obeyed: list[list[float | None]] = field(default_factory=list)
    class_fixed: list[list[float | None]] = field(default_factory=list)

    @property
    def num_class(self) -> int:
        return len(self.classes)

    @property
    def total_running_time(self) -> float:
        return float(sum(self.running_time))

    @property
    def runtime_upperbound(self) -> float:
        return SECONDS_PER_CLASS * self.num_class

    @property
    def over_budget(self) -> bool:
        """The challenge scores a case 0 when inference took longer than 90 s per class in total."""
        return self.total_running_time > self.runtime_upperbound

    @property
    def scored_dsc(self) -> list[float]:
        return [0.0] * N_ROUNDS if self.over_budget else list(self.dsc)

    @property
    def scored_nsd(self) -> list[float]:
        return [0.0] * N_ROUNDS if self.over_budget else list(self.nsd)

    def row(self) -> dict[str, object]:
        """The official CSV columns (runtime rule applied), then method, modality and the budget flag."""
        dsc, nsd = self.scored_dsc, self.scored_nsd
        row: dict[str, object] = {"CaseName": self.case_name, "TotalRunningTime": self.total_running_time}
        row.update({f"RunningTime_{i + 1}": t for i, t in enumerate(self.running_time)})
        row.update(
            DSC_AUC=click_auc(dsc), NSD_AUC=click_auc(nsd), DSC_Final=dsc[-1], NSD_Final=nsd[-1]
        )
        row.update({f"DSC_{i + 1}": v for i, v in enumerate(dsc)})
        row.update({f"NSD_{i + 1}": v for i, v in enumerate(nsd)})
        row.update(
            num_class=self.num_class,
            runtime_upperbound=self.runtime_upperbound,
            method=self.method,
            modality=self.modality,
            over_budget=self.over_budget,
        )
        return row

    def object_rows(self) -> list[dict[str, object]]:
        """One row per class: case, method, modality, label, size, DSC_1..6 and NSD_1..6 (runtime rule
        applied), then the click contract per click round (empty where the class got no click)."""
        zero = self.over_budget
        rows = []
        for k, label in enumerate(self.classes):
            voxels = self.class_voxels[k] if self.class_voxels else None
            row: dict[str, object] = {"CaseName": self.case_name, "method": self.method, "modality": self.modality,
                                      "label": label, "voxels": voxels,
                                      "size_group": size_group(voxels) if voxels is not None else None}
            row.update({f"DSC_{i + 1}": 0.0 if zero else r[k] for i, r in enumerate(self.class_dsc)})
            row.update({f"NSD_{i + 1}": 0.0 if zero else r[k] for i, r in enumerate(self.class_nsd)})
            row.update({f"obeyed_{i + 2}": r[k] for i, r in enumerate(self.class_obeyed)})
            row.update({f"fixed_{i + 2}": r[k] for i, r in enumerate(self.class_fixed)})
            rows.append(row)
        return rows


OBJECT_CSV_COLUMNS: list[str] = (
    ["CaseName", "method", "modality", "label", "voxels", "size_group"]
    + [f"DSC_{i}" for i in range(1, 7)]
    + [f"NSD_{i}" for i in range(1, 7)]
    + [f"obeyed_{i}" for i in range(2, 7)]
    + [f"fixed_{i}" for i in range(2, 7)]
)
"""Columns of ``objects.csv``: one row per case, method and label (ours; the official CSV is per case)."""

CSV_COLUMNS: list[str] = (
    ["CaseName", "TotalRunningTime"]
    + [f"RunningTime_{i}" for i in range(1, 7)]
    + ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"]
    + [f"DSC_{i}" for i in range(1, 7)]
    + [f"NSD_{i}" for i in range(1, 7)]
    + ["num_class", "runtime_upperbound", "method", "modality", "over_budget"]
)
