from __future__ import annotations

from pathlib import Path

import pytest

from training.config import DataConfig
from training.engine import DataEngine
from training.sources import load_train_volume, require_train_path, train_cases


def test_only_train_cases_are_listed(data_root: Path) -> None:
    assert [c.case_id for c in train_cases(data_root)] == ["train_a", "train_b"]


def test_dev_case_is_refused(data_root: Path) -> None:
    with pytest.raises(ValueError, match="^cases: 'dev_a' is in the 'dev' split"):
        train_cases(data_root, ["train_a", "dev_a"])


@pytest.mark.parametrize("path", ["dev/dev_a/image.nii.gz", "formats/x.npz", "train/../dev/dev_a/case.npz"])
def test_paths_outside_train_are_refused(data_root: Path, path: str) -> None:
    with pytest.raises(ValueError, match="^path: "):
        require_train_path(data_root, path)


def test_a_manifest_entry_pointing_into_dev_is_refused(data_root: Path) -> None:
    info = train_cases(data_root, ["train_a"])[0]
    forged = type(info)(**{**info.__dict__, "image": "dev/dev_a/image.nii.gz"})
    with pytest.raises(ValueError, match="^path: "):
        load_train_volume(data_root, forged)


def test_label_map_becomes_objects(data_root: Path) -> None:
    volume = load_train_volume(data_root, train_cases(data_root, ["train_a"])[0])
    assert [o.label for o in volume.objects] == [1, 2]
    assert volume.objects[0].bounds == (4, 10, 10, 12, 22, 24)
    assert volume.objects[0].voxels == 8 * 12 * 14
    for image in volume.images.values():
        assert image.dtype.name == "float32" and image.min() >= 0 and image.max() <= 1


def test_engine_reads_no_dev_image(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    opened: list[str] = []
    real_read = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda p, *a: opened.append(str(p)) or real_read(p, *a))
    import numpy as np

    DataEngine(DataConfig(root=str(data_root), pseudo_pool_size=2), np.random.default_rng(0))
    assert opened and all("/train/" in p for p in opened)
