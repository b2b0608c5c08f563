from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import SHAPES, make_lesion, paste_lesion


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("voxels", [50, 800, 6000])
def test_lesion_has_the_requested_size(kind: str, voxels: int) -> None:
    lesion = make_lesion(voxels, (2.0, 1.0, 1.0), kind=kind, rng=np.random.default_rng(voxels))
    size = int(lesion.mask.sum())
    assert 0.7 * voxels <= size <= 1.3 * voxels
    if lesion.core is not None:
        assert not (lesion.core & ~lesion.mask).any()  # the core is nested inside the lesion


def test_rings_have_a_core() -> None:
    lesion = make_lesion(2000, kind="ring", rng=np.random.default_rng(0))
    assert lesion.core is not None and 0 < lesion.core.sum() < lesion.mask.sum()


@pytest.mark.parametrize("seed", range(6))
def test_pasted_label_matches_the_pasted_voxels_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.2, 0.6, size=(24, 48, 48)).astype(np.float32)
    lesion = make_lesion(int(rng.integers(50, 3000)), rng=rng)
    centre = (12, 24, 2 if seed == 0 else 24)  # seed 0: clipped at the volume border
    pasted = paste_lesion(image, lesion, centre, rng, target_core_prob=0.0)

    assert pasted.image.shape == image.shape and pasted.label.dtype == bool
    np.testing.assert_array_equal(pasted.label, pasted.lesion)
    np.testing.assert_array_equal(pasted.lesion, pasted.weight >= 0.5)  # the label is exactly the blend >= 0.5
    untouched = pasted.weight == 0
    np.testing.assert_array_equal(pasted.image[untouched], image[untouched])
    assert pasted.lesion.any() and not np.array_equal(pasted.image[pasted.lesion], image[pasted.lesion])
    assert image.min() >= 0.0 and pasted.image.max() <= 1.0


def test_core_target_is_inside_the_lesion() -> None:
    rng = np.random.default_rng(3)
    image = np.full((24, 48, 48), 0.4, np.float32)
    lesion = make_lesion(3000, kind="ring", rng=rng)
    pasted = paste_lesion(image, lesion, (12, 24, 24), rng, target_core_prob=1.0)
    assert pasted.label.any() and pasted.label.sum() < pasted.lesion.sum()
    assert not (pasted.label & ~pasted.lesion).any()
