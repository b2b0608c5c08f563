"""A tiny data root in the shared data's layout (manifest + train/ + dev/), built in a temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def _write_case(root: Path, split: str, case_id: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = (20, 40, 44)
    image = rng.normal(100, 10, size=shape).astype(np.float32)
    image[:, 5:35, 5:39] += 200  # a body
    label = np.zeros(shape, np.uint8)
    label[4:12, 10:22, 10:24] = 1
    label[10:18, 24:34, 20:36] = 2
    image[label == 1] += 150
    image[label == 2] -= 80
    folder = root / split / case_id
    folder.mkdir(parents=True)
    for name, arr in (("image.nii.gz", image), ("label.nii.gz", label)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(folder / name))
    u8 = np.clip((image - image.min()) / (image.max() - image.min()) * 255, 0, 255).astype(np.uint8)
    np.savez_compressed(folder / "case.npz", imgs=u8, gts=label, spacing=np.array([2.0, 1.0, 1.0]))
    return {
        "id": case_id, "split": split, "modality": "MR", "license": "CC0-1.0", "source": "test",
        "gt_kind": "synthetic", "image": f"{split}/{case_id}/image.nii.gz",
        "label": f"{split}/{case_id}/label.nii.gz", "npz": f"{split}/{case_id}/case.npz",
    }


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    cases = [
        _write_case(root, "train", "train_a", 0),
        _write_case(root, "train", "train_b", 1),
        _write_case(root, "dev", "dev_a", 2),
    ]
    (root / "manifest.json").write_text(json.dumps({"version": 1, "cases": cases}))
    return root
