from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.compound import (
    NECROSIS,
    OBJECTS,
    OEDEMA,
    RIM,
    choose_object,
    make_compound_lesion,
    paste_compound,
)
from training.config import DataConfig
from training.engine import DataEngine


def _box_fill(mask: np.ndarray) -> float:
    coords = np.argwhere(mask)
    lo, hi = coords.min(0), coords.max(0)
    return float(mask.sum() / np.prod(hi - lo + 1))


@pytest.mark.parametrize("seed", range(5))
def test_regions_partition_the_envelope_and_nest(seed: int) -> None:
    lesion = make_compound_lesion(6000, (2.0, 1.0, 1.0), rng=np.random.default_rng(seed))
    codes = set(np.unique(lesion.regions).tolist()) - {0}
    assert {OEDEMA, RIM} <= codes <= set(range(1, 5))
    np.testing.assert_array_equal(lesion.object_mask("whole"), lesion.mask)
    # The oedema is a shell: its box holds the tumour it surrounds, so it fills less of its box than the whole.
    assert lesion.object_mask("oedema").sum() < lesion.mask.sum()
    assert _box_fill(lesion.object_mask("oedema")) < _box_fill(lesion.mask)
    if NECROSIS in codes:  # the rim surrounds the core: the core's box lies inside the tumour's box
        core, tumour = np.argwhere(lesion.regions == NECROSIS), np.argwhere(np.isin(lesion.regions, (NECROSIS, RIM)))
        assert (core.min(0) >= tumour.min(0)).all() and (core.max(0) <= tumour.max(0)).all()


def test_sub_regions_are_sparse_in_their_box_on_average() -> None:
    """What the generator is for: objects that fill little of their box (single blobs fill about half)."""
    rng = np.random.default_rng(0)
    fills = []
    for _ in range(10):
        lesion = make_compound_lesion(int(rng.integers(3000, 20000)), rng=rng)
        fills += [_box_fill(lesion.object_mask(k)) for k in ("oedema", "rim", "islands") if lesion.object_mask(k).any()]
    assert np.mean(fills) < 0.3


def test_choose_object_respects_the_minimum_size() -> None:
    lesion = make_compound_lesion(3000, rng=np.random.default_rng(1))
    sizes = {k: int(lesion.object_mask(k).sum()) for k in OBJECTS}
    rng = np.random.default_rng(0)
    for _ in range(20):
        name = choose_object(lesion, rng, min_voxels=200)
        assert name is not None and sizes[name] >= 200
    assert choose_object(lesion, rng, min_voxels=10**9) is None


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_pasted_label_is_the_named_regions(name: str) -> None:
    rng = np.random.default_rng(4)
    image = rng.uniform(0.3, 0.5, size=(56, 64, 64)).astype(np.float32)
    lesion = make_compound_lesion(8000, rng=rng)  # on a 45^3 grid
    pasted = paste_compound(image, lesion, (28, 32, 32), name, rng)

    d, h, w = lesion.regions.shape
    placed = np.zeros(image.shape, np.uint8)
    placed[28 - d // 2 : 28 - d // 2 + d, 32 - h // 2 : 32 - h // 2 + h, 32 - w // 2 : 32 - w // 2 + w] = lesion.regions
    np.testing.assert_array_equal(pasted.label, np.isin(placed, OBJECTS[name]))
    np.testing.assert_array_equal(pasted.lesion, placed > 0)
    untouched = pasted.weight == 0
    np.testing.assert_array_equal(pasted.image[untouched], image[untouched])
    assert 0.0 <= pasted.image.min() and pasted.image.max() <= 1.0


def test_paste_names_a_bad_object() -> None:
    lesion = make_compound_lesion(500, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="object_name"):
        paste_compound(np.zeros((20, 20, 20), np.float32), lesion, (10, 10, 10), "tumor", np.random.default_rng(0))
    with pytest.raises(ValueError, match="voxels"):
        make_compound_lesion(10)


def test_engine_draws_compound_objects_when_asked(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    cfg = DataConfig(root=str(data_root), source_weights={"synthetic": 1.0}, compound_prob=1.0,
                     compound_min_voxels=200, compound_max_voxels=2000)
    engine = DataEngine(cfg, rng)
    for _ in range(6):
        view, source = engine.sample((8, 32, 32), rng)
        assert source == "synthetic" and view.mask.any()
    draws = engine.summary()["draws"]
    assert sum(n for k, n in draws.items() if k.startswith("compound:")) == 6
