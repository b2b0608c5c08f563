"""DSC, NSD (spacing and tolerance), the NSD shortcut, the click AUC and the runtime rule."""

from __future__ import annotations

import numpy as np
import pytest
import surface_distance  # DeepMind's, the reference NSD (dev extra)
from scipy.integrate import cumulative_trapezoid

from evaluation.metrics import (
    CSV_COLUMNS,
    CaseResult,
    class_round_scores,
    click_auc,
    dice,
    round_scores,
    surface_dice,
)


def _cube(shift: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    m = np.zeros((12, 12, 12), dtype=bool)
    m[3:8, 3:8, 3:8] = True
    return np.roll(m, shift, axis=(0, 1, 2))


def test_dice_hand_values_and_empty_cases() -> None:
    gt = np.zeros((4, 4, 4), dtype=bool)
    gt[0:2, 0:2, 0:2] = True  # 8 voxels
    pred = np.zeros_like(gt)
    pred[0:1, 0:2, 0:2] = True  # 4 voxels, all inside
    assert dice(gt, pred) == pytest.approx(2 * 4 / 12)
    assert dice(gt, np.zeros_like(gt)) == 0.0
    assert dice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_round_dsc_is_the_mean_over_the_given_classes() -> None:
    gt = np.zeros((2, 4, 4), dtype=np.uint8)
    gt[0] = 1
    gt[1, :2] = 3
    pred = gt.copy()
    pred[1, :2] = 0  # class 3 missed entirely
    per_class, per_class_nsd = class_round_scores(gt, pred, [1, 3], (1.0, 1.0, 1.0))
    assert per_class == pytest.approx([1.0, 0.0]) and per_class_nsd == pytest.approx([1.0, 0.0])
    assert round_scores(gt, pred, [1, 3], (1.0, 1.0, 1.0)) == pytest.approx((0.5, 0.5))


def test_surface_dice_within_tolerance_is_one() -> None:
    # A one-voxel shift is 1 mm (or 0.5 mm) away everywhere: within 2 mm.
    assert surface_dice(_cube(), _cube((1, 0, 0)), (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert surface_dice(_cube(), _cube((0, 2, 0)), (1.0, 0.5, 1.0)) == pytest.approx(1.0)


# The reference is DeepMind's surface-distance (the implementation the challenge code uses), run here: our
# metric goes through MONAI, so the two are independent implementations of the same definition.
# (It calls scipy.ndimage.morphology, deprecated: its warning is the reference's, not ours.)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")


def _reference_nsd(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], tolerance: float = 2.0) -> float:
    distances = surface_distance.compute_surface_distances(gt, pred, spacing)
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance))


@pytest.mark.parametrize(
    ("spacing", "shift"),
    [
        ((5.0, 1.0, 1.0), (1, 0, 0)),
        ((5.0, 1.0, 1.0), (0, 0, 1)),
        ((1.0, 1.0, 5.0), (0, 0, 1)),
        ((1.0, 1.0, 5.0), (1, 0, 0)),
        ((3.0, 0.5, 0.5), (1, 0, 0)),
    ],
)
def test_surface_dice_anisotropic_spacing_follows_the_axis_order(
    spacing: tuple[float, float, float], shift: tuple[int, int, int]
) -> None:
    expected = _reference_nsd(_cube(), _cube(shift), spacing)
    assert 0.5 < expected <= 1.0  # the case is not degenerate
    assert surface_dice(_cube(), _cube(shift), spacing) == pytest.approx(expected, abs=1e-6)
    # A shift along the 5 mm axis moves the surface past the 2 mm tolerance, one along a 1 mm axis does not.
    coarse = spacing[int(np.argmax(shift))] > 2.0
    assert (expected < 1.0) == coarse


@pytest.mark.parametrize("seed", range(4))
def test_surface_dice_agrees_with_the_reference_on_random_shapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spacing = tuple(float(v) for v in rng.choice([0.5, 0.8, 1.0, 2.5, 5.0], size=3))
    gt = np.zeros((14, 16, 18), dtype=bool)
    pred = np.zeros_like(gt)
    for mask in (gt, pred):  # a few overlapping random boxes each: edges, corners and holes of many kinds
        for _ in range(3):
            lo = rng.integers(0, 10, size=3)
            hi = lo + rng.integers(2, 7, size=3)
            mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert surface_dice(gt, pred, spacing) == pytest.approx(_reference_nsd(gt, pred, spacing), abs=1e-6)


def _blobs(shape_of_one: np.ndarray, corners: list[tuple[int, int, int]]) -> np.ndarray:
    out = np.zeros((40, 40, 40), dtype=bool)
    d, h, w = shape_of_one.shape
    for z, y, x in corners:
        out[z:z + d, y:y + h, x:x + w] |= shape_of_one
    return out


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 0.7, 0.7), (2.5, 1.0, 3.0)])
def test_surface_dice_of_matched_and_unmatched_copies_is_their_area_ratio(spacing: tuple[float, ...]) -> None:
    """Derived by hand, whatever the surface-element weights: copies of one shape placed far apart (> 2 mm at
    any spacing here) all have the same surface area S. A copy in both masks has all of its surface within
    tolerance, a copy in one mask only has none. NSD = (S_gt within + S_pred within) / (S_gt + S_pred)."""
    shape = np.zeros((5, 6, 4), dtype=bool)
    shape[1:4, 1:5, 1:3] = True
    shape[0, 2:4, 1:3] = True  # not a plain box: edges and corners of several kinds
    a, b, c = (2, 2, 2), (2, 20, 25), (25, 10, 5)
    gt, pred = _blobs(shape, [a, b]), _blobs(shape, [a])
    assert surface_dice(gt, pred, spacing) == pytest.approx((1 + 1) / (2 + 1), abs=1e-6)  # 2S / 3S
    pred = _blobs(shape, [a, c])  # one matched copy each, one stray copy each
    assert surface_dice(gt, pred, spacing) == pytest.approx((1 + 1) / (2 + 2), abs=1e-6)
    assert surface_dice(gt, _blobs(shape, [c]), spacing) == pytest.approx(0.0, abs=1e-9)


def test_surface_dice_of_masks_touching_the_volume_border() -> None:
    gt = np.zeros((4, 6, 6), dtype=bool)
    gt[0:2, 1:5, 1:5] = True
    pred = np.zeros_like(gt)
    pred[0:3, 1:5, 1:6] = True
    # Outside the volume counts as background, as in the reference.
    assert surface_dice(gt, pred, (2.5, 1.0, 1.0)) == pytest.approx(_reference_nsd(gt, pred, (2.5, 1.0, 1.0)),
                                                                    abs=1e-6)


def test_surface_dice_tolerance_matters() -> None:
    assert surface_dice(_cube(), _cube((1, 0, 0)), (5.0, 1.0, 1.0), tolerance_mm=5.0) == pytest.approx(1.0)


def test_surface_dice_empty_cases() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    assert surface_dice(_cube()[:5, :5, :5], empty, (1.0, 1.0, 1.0)) == 0.0
    assert surface_dice(empty, empty, (1.0, 1.0, 1.0)) == 1.0
    with pytest.raises(ValueError, match="^spacing"):
        surface_dice(empty, empty, (1.0, 1.0))


def test_nsd_is_only_computed_when_dsc_exceeds_0_2() -> None:
    gt = np.zeros((8, 8, 8), dtype=np.uint8)
    gt[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred = np.zeros_like(gt)
    pred[2:4, 2:4, 2:3] = 1  # 4 voxels inside: DSC = 8 / 68 < 0.2, though some surface agrees
    dsc, nsd = round_scores(gt, pred, [1], (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(8 / 68)
    assert nsd == 0.0
    pred[2:6, 2:6, 2:5] = 1  # 48 voxels inside: DSC = 96 / 112
    dsc, nsd = round_scores(gt, pred, [1], (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(96 / 112)
    assert nsd == pytest.approx(1.0)


def test_dsc_of_exactly_0_2_gives_no_nsd() -> None:
    gt = np.zeros((1, 1, 10), dtype=np.uint8)
    gt[0, 0, :9] = 1  # 9 voxels
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = 1  # 1 voxel: DSC = 2 / 10 = 0.2, not > 0.2
    dsc, nsd = round_scores(gt, pred, [1], (1.0, 1.0, 1.0))
    assert dsc == pytest.approx(0.2)
    assert nsd == 0.0


def test_click_auc_formula_and_official_integration() -> None:
    values = [0.9, 0.1, 0.4, 0.6, 0.8, 1.0]
    assert click_auc(values) == pytest.approx(0.5 * 0.1 + 0.4 + 0.6 + 0.8 + 0.5 * 1.0)
    assert click_auc(values) == pytest.approx(cumulative_trapezoid(np.array(values[-5:]), np.arange(5))[-1])
    assert click_auc([1.0] * 6) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="^per_round"):
        click_auc([1.0] * 5)


def _result(times: list[float], n_classes: int = 2) -> CaseResult:
    return CaseResult(
        case_name="case",
        method="m",
        modality="CT",
        classes=list(range(1, n_classes + 1)),
        dsc=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        nsd=[0.4, 0.5, 0.6, 0.7, 0.8, 0.85],
        running_time=times,
        n_clicks=[0, 2, 2, 2, 2, 2],
    )


def test_runtime_budget_zeroes_a_case_over_90_s_per_class() -> None:
    within = _result([30.0] * 6)  # 180 s = 90 s x 2 classes: not over
    assert not within.over_budget
    row = within.row()
    assert row["DSC_Final"] == 0.95 and row["NSD_1"] == 0.4
    assert row["DSC_AUC"] == pytest.approx(0.5 * 0.6 + 0.7 + 0.8 + 0.9 + 0.5 * 0.95)
    assert row["runtime_upperbound"] == 180.0 and row["num_class"] == 2
    assert row["NSD_Final"] == 0.85 and row["NSD_AUC"] == pytest.approx(0.5 * 0.5 + 0.6 + 0.7 + 0.8 + 0.5 * 0.85)
    assert (row["CaseName"], row["method"], row["modality"], row["over_budget"]) == ("case", "m", "CT", False)
    assert [row[f"RunningTime_{i}"] for i in range(1, 7)] == [30.0] * 6

    over = _result([30.0] * 5 + [30.5])
    assert over.over_budget
    row = over.row()
    assert row["over_budget"] is True
    assert row["TotalRunningTime"] == pytest.approx(180.5)
    for key in ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"] + [f"DSC_{i}" for i in range(1, 7)]:
        assert row[key] == 0.0
    assert over.dsc[-1] == 0.95  # the raw scores are kept on the result


def test_row_has_the_official_columns_in_order() -> None:
    row = _result([1.0] * 6).row()
    assert list(row) == CSV_COLUMNS
    official = ["CaseName", "TotalRunningTime", *[f"RunningTime_{i}" for i in range(1, 7)], "DSC_AUC", "NSD_AUC"]
    assert CSV_COLUMNS[: len(official)] == official


def test_round_scores_use_the_tolerance_they_are_given() -> None:
    """A one-voxel shift along a 5 mm axis is out of a 2 mm tolerance on the shifted faces, within 5 mm."""
    gt = _cube().astype(np.uint8) * 4
    pred = _cube((1, 0, 0)).astype(np.uint8) * 4
    (_, nsd_2mm), (_, nsd_5mm) = (round_scores(gt, pred, [4], (5.0, 1.0, 1.0), tol) for tol in (2.0, 5.0))
    assert nsd_2mm < 1.0 and nsd_5mm == pytest.approx(1.0)
    assert class_round_scores(gt, pred, [4], (5.0, 1.0, 1.0), 5.0)[1] == pytest.approx([1.0])
