"""The data engine's small objects, nested targets and SynthSeg source (each switchable, each checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig, config_from_dict
from training.engine import DataEngine
from training.sampler import exact_box, make_view
from training.sources import (
    CaseInfo,
    TrainVolume,
    composite_mask,
    index_small_components,
    small_component_mask,
)

FRAME = (8, 32, 32)


def _volume(label: np.ndarray) -> TrainVolume:
    info = CaseInfo("hand", "MR", "CC0-1.0", "test", "synthetic", "", "", "")
    image = label.astype(np.float32) / max(int(label.max()), 1)
    return TrainVolume(info=info, images={"nifti": image, "npz": image}, label=label, spacing=(1.0, 1.0, 1.0))


def test_small_components_are_indexed_by_size_and_recovered_exactly() -> None:
    label = np.zeros((20, 40, 40), np.uint8)
    label[0:3, 0:3, 0:3] = 1  # 27 voxels: below the minimum
    label[5:10, 5:15, 5:15] = 1  # 500 voxels: small
    label[10:20, 20:40, 20:40] = 1  # 4,000 voxels: too large
    label[0:4, 30:40, 0:10] = 2  # 400 voxels of another label
    small = index_small_components(label, 50, 2000)
    assert sorted((c.label, c.voxels) for c in small) == [(1, 500), (2, 400)]
    volume = _volume(label)
    for component in small:
        mask = small_component_mask(volume, component)
        assert mask.sum() == component.voxels and (label[mask] == component.label).all()


def test_a_nested_target_box_covers_the_object_and_a_touching_label() -> None:
    label = np.zeros((20, 40, 40), np.uint8)
    label[2:18, 5:35, 5:35] = 1  # the parent
    label[8:12, 15:25, 15:25] = 2  # the core nested in it
    volume = _volume(label)
    core = label == 2
    for seed in range(5):
        composite = composite_mask(volume, core, np.random.default_rng(seed))
        assert composite is not None and (composite >= core).all()
        assert (label[composite & ~core] == 1).all() and (composite & ~core).any()
        box = exact_box(composite)
        assert all(box[a + 3] - box[a] + 1 > exact_box(core)[a + 3] - exact_box(core)[a] + 1 for a in range(3))


def test_an_object_touching_no_other_label_has_no_composite() -> None:
    label = np.zeros((10, 20, 20), np.uint8)
    label[2:6, 5:10, 5:10] = 1
    assert composite_mask(_volume(label), label == 1, np.random.default_rng(0)) is None


def test_make_view_boxes_the_composite_while_the_target_stays_the_object() -> None:
    label = np.zeros((8, 32, 32), np.uint8)
    label[1:7, 4:28, 4:28] = 1
    label[3:5, 12:16, 12:16] = 2
    image = label.astype(np.float32) / 2 + 0.1
    cfg = DataConfig(mid_slice_box_prob=0.0, box_jitter=0.0, zoom_out_prob=1.0, flip_prob=0.0, intensity_prob=0.0)
    view = make_view(image, label == 2, FRAME, cfg, np.random.default_rng(0), box_mask=label > 0)
    np.testing.assert_array_equal(view.mask, label == 2)
    np.testing.assert_array_equal(view.box, [1, 4, 4, 6, 27, 27])


def test_engine_draws_small_objects_and_synthseg_views(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    cfg = DataConfig(root=str(data_root), source_weights={"synthseg": 1.0}, small_object_prob=1.0, nested_prob=1.0)
    engine = DataEngine(cfg, rng)
    for _ in range(6):
        view, source = engine.sample(FRAME, rng)
        assert source == "synthseg" and view.image.shape == FRAME and view.mask.any()
        assert np.isfinite(view.image).all()
    assert engine.draws["synthseg"] == 6 and engine.draws["small"] == 6
    assert engine.draws["nested"] == 0  # the fixture's two labels do not touch


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nested_prob": 1.5}, "data.nested_prob"),
        ({"small_object_prob": -0.1}, "data.small_object_prob"),
        ({"small_object_max_voxels": 10}, "data.small_object_max_voxels"),
        ({"synthseg_max_voxels": 0}, "data.synthseg_max_voxels"),
    ],
)
def test_bad_knobs_are_refused_by_name(data: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        config_from_dict({"data": data})
