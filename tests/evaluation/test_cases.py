"""Case loading: manifest and bare folders, class selection, box conversion, spacing order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.cases import CaseRef, box_from_challenge, box_from_mask, find_cases, load_case, select_classes


def _challenge_box(z_min: int, z_max: int, z_mid: int, y0: int, x0: int, y1: int, x1: int) -> dict[str, int]:
    return dict(
        z_min=z_min, z_max=z_max, z_mid=z_mid, z_mid_x_min=x0, z_mid_y_min=y0, z_mid_x_max=x1, z_mid_y_max=y1
    )


def _write_case(path: Path, *, boxes: bool = True, spacing: tuple[float, float, float] = (3.0, 1.0, 0.5)) -> None:
    gts = np.zeros((10, 12, 14), dtype=np.uint8)
    gts[2:8, 3:9, 4:12] = 1  # 288 voxels
    gts[5:9, 2:5, 2:6] = 1  # a second part of label 1 on slices 5..8, so its mid slice (5) box spans both
    gts[0, 0, 0:3] = 2  # 3 voxels: below the 50-voxel threshold
    gts[6:9, 9:12, 10:14] = 7  # 36 voxels
    gts[0:2, 9:12, 0:10] = 9  # 60 voxels
    present = [1, 2, 7, 9]
    box_dicts = []
    for label in present:
        zs, ys, xs = np.nonzero(gts == label)
        z_mid = int(np.sort(np.unique(zs))[(len(np.unique(zs)) - 1) // 2])
        on_mid = gts[z_mid] == label
        yy, xx = np.nonzero(on_mid)
        box_dicts.append(_challenge_box(int(zs.min()), int(zs.max()), z_mid, yy.min(), xx.min(), yy.max(), xx.max()))
    arrays = dict(imgs=(gts * 20).astype(np.uint8), gts=gts, spacing=np.array(spacing))
    if boxes:
        arrays["boxes"] = np.array(box_dicts, dtype=object)
    np.savez_compressed(path, **arrays)


def test_box_from_challenge_maps_the_mid_slice_box_to_an_inclusive_3d_box() -> None:
    entry = _challenge_box(z_min=3, z_max=9, z_mid=6, y0=20, x0=40, y1=25, x1=48)
    assert box_from_challenge(entry) == (3, 20, 40, 9, 25, 48)
    entry_np = {k: np.int64(v) for k, v in entry.items()}  # the challenge's own files hold numpy ints
    assert box_from_challenge(entry_np) == (3, 20, 40, 9, 25, 48)
    with pytest.raises(ValueError, match="^boxes"):
        box_from_challenge({"z_min": 1})


def test_box_from_mask_is_the_exact_inclusive_extent() -> None:
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1, 2, 3] = mask[3, 4, 6] = True
    assert box_from_mask(mask) == (1, 2, 3, 3, 4, 6)
    with pytest.raises(ValueError, match="^mask"):
        box_from_mask(np.zeros((2, 2, 2), dtype=bool))


def test_select_classes_applies_the_voxel_threshold() -> None:
    gts = np.zeros((4, 4, 4), dtype=np.uint16)
    gts[0] = 300  # 16 voxels
    gts[1:3] = 5  # 32 voxels
    assert select_classes(gts, 10) == [5, 300]
    assert select_classes(gts, 20) == [5]


def test_load_case_2d_boxes_keep_only_objects_over_the_threshold(tmp_path: Path) -> None:
    _write_case(tmp_path / "MR_demo.npz")
    case = load_case(CaseRef(name="MR_demo", npz=tmp_path / "MR_demo.npz", modality="MR"), min_voxels=50)
    assert case.classes == [1, 9]  # 2 (3 voxels) and 7 (36 voxels) are dropped
    assert set(np.unique(case.ground_truth)) == {0, 1, 9}
    assert case.spacing == (3.0, 1.0, 0.5)
    assert case.boxes is not None
    # label 1 spans z 2..8; its mid slice (z=5) holds both parts: y 2..8, x 2..11.
    assert case.boxes[1] == (2, 2, 2, 8, 8, 11)
    assert case.boxes[9] == (0, 9, 0, 1, 11, 9)  # the 4th dict: boxes are matched to all present labels


def test_load_case_3d_boxes_and_lower_threshold(tmp_path: Path) -> None:
    _write_case(tmp_path / "c.npz")
    case = load_case(CaseRef(name="c", npz=tmp_path / "c.npz", modality=""), box_mode="3d", min_voxels=10)
    assert case.classes == [1, 7, 9]
    assert case.boxes == {1: (2, 2, 2, 8, 8, 11), 7: (6, 9, 10, 8, 11, 13), 9: (0, 9, 0, 1, 11, 9)}


def test_load_case_without_boxes_and_xyz_spacing(tmp_path: Path) -> None:
    _write_case(tmp_path / "c.npz", boxes=False, spacing=(0.8, 0.8, 5.0))
    case = load_case(CaseRef(name="c", npz=tmp_path / "c.npz", modality="CT", spacing_order="xyz"))
    assert case.boxes is None
    assert case.spacing == (5.0, 0.8, 0.8)


def test_load_case_rejects_a_box_count_mismatch_and_missing_gts(tmp_path: Path) -> None:
    gts = np.zeros((4, 4, 4), dtype=np.uint8)
    gts[:2] = 1
    gts[2:] = 2
    boxes = np.array([_challenge_box(0, 1, 0, 0, 0, 3, 3)], dtype=object)
    np.savez(tmp_path / "bad.npz", imgs=gts, gts=gts, spacing=np.ones(3), boxes=boxes)
    with pytest.raises(ValueError, match="^data: .*1 boxes for 2 labels"):
        load_case(CaseRef(name="bad", npz=tmp_path / "bad.npz", modality=""))
    np.savez(tmp_path / "nogt.npz", imgs=gts, spacing=np.ones(3))
    with pytest.raises(ValueError, match="^data: .*no 'gts'"):
        load_case(CaseRef(name="nogt", npz=tmp_path / "nogt.npz", modality=""))


def test_find_cases_from_a_manifest(tmp_path: Path) -> None:
    entries = []
    for name, split in [("b_case", "dev"), ("a_case", "dev"), ("t_case", "train")]:
        (tmp_path / split / name).mkdir(parents=True)
        _write_case(tmp_path / split / name / "case.npz")
        entries.append(dict(id=name, split=split, modality="MR", npz=f"{split}/{name}/case.npz"))
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "cases": entries}))

    assert [r.name for r in find_cases(tmp_path, split="dev")] == ["a_case", "b_case"]
    assert [r.name for r in find_cases(tmp_path, split=None)] == ["a_case", "b_case", "t_case"]
    assert [r.name for r in find_cases(tmp_path, split="dev", select=1)] == ["a_case"]
    assert [r.name for r in find_cases(tmp_path, split="dev", select="1")] == ["a_case"]
    assert [r.name for r in find_cases(tmp_path, split=None, select="t_case,b_case")] == ["t_case", "b_case"]
    ref = find_cases(tmp_path, split="train")[0]
    assert ref.modality == "MR" and ref.npz == tmp_path / "train" / "t_case" / "case.npz"
    with pytest.raises(ValueError, match="^cases: unknown"):
        find_cases(tmp_path, split="dev", select="t_case")
    with pytest.raises(ValueError, match="^data: no cases"):
        find_cases(tmp_path, split="test")


def test_find_cases_in_a_bare_folder_skips_files_without_gts(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write_case(tmp_path / "CT_one.npz")
    _write_case(tmp_path / "sub" / "MR_two.npz")
    np.savez(tmp_path / "CT_input_only.npz", imgs=np.zeros((2, 2, 2), dtype=np.uint8), spacing=np.ones(3))
    refs = find_cases(tmp_path, split="dev", spacing_order="xyz")
    assert [(r.name, r.modality, r.spacing_order) for r in refs] == [("CT_one", "CT", "xyz"), ("MR_two", "MR", "xyz")]
    with pytest.raises(ValueError, match="^data"):
        find_cases(tmp_path / "missing")
