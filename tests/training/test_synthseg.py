"""Label-to-image synthesis: shape, dtype, determinism, and every label painted as its own region."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.synthseg import SynthSegParams, bias_field, label_means, synthesize, thick_slices


def _labels() -> np.ndarray:
    """Background, a parent block, a core nested in it and a separate blob."""
    label = np.zeros((16, 40, 40), np.int16)
    label[2:14, 5:30, 5:30] = 3
    label[5:11, 12:22, 12:22] = 7
    label[4:12, 32:38, 30:38] = 9
    return label


def test_shape_dtype_range() -> None:
    image = synthesize(_labels(), np.random.default_rng(0))
    assert image.shape == (16, 40, 40) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_the_same_seed_gives_the_same_image_and_another_seed_another() -> None:
    a = synthesize(_labels(), np.random.default_rng(5))
    b = synthesize(_labels(), np.random.default_rng(5))
    c = synthesize(_labels(), np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


@pytest.mark.parametrize("seed", range(6))
def test_the_target_label_is_painted_distinct_from_its_neighbours(seed: int) -> None:
    """Inside each label (away from blurred boundaries) the target's intensity differs from the others'."""
    label = _labels()
    # No noise and no resolution loss: the label means alone decide the painted intensities.
    params = SynthSegParams(std_max=0.0, noise_max=0.0, thick_slice_prob=0.0, blur_max=0.5, bias_std=0.0)
    image = synthesize(label, np.random.default_rng(seed), target=7, params=params)
    medians = {}
    for value in (0, 3, 7, 9):
        core = ndimage.binary_erosion(label == value, iterations=2)
        inside = image[core]
        medians[value] = float(np.median(inside))
        assert inside.std() < 0.02  # one intensity per label
    for value in (0, 3, 9):
        assert abs(medians[7] - medians[value]) > 0.02


def test_label_means_keep_the_target_away_from_the_others() -> None:
    values = np.array([0, 1, 2, 3])
    for seed in range(20):
        means = label_means(values, 2, np.random.default_rng(seed), 0.1)
        assert np.min(np.abs(np.delete(means, 2) - means[2])) >= 0.1


def test_bias_field_is_smooth_positive_and_shaped() -> None:
    field = bias_field((9, 30, 17), 0.3, np.random.default_rng(0))
    assert field.shape == (9, 30, 17) and (field > 0).all()
    assert np.abs(np.diff(np.log(field), axis=1)).max() < 0.2


def test_thick_slices_repeat_block_values_along_the_axis() -> None:
    image = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 2, 2), np.float32)
    out = thick_slices(image, 0, 4)
    assert len(np.unique(out[:4])) == 1 and len(np.unique(out[4:])) == 1 and out[0, 0, 0] != out[4, 0, 0]


def test_a_non_3d_label_map_is_refused() -> None:
    with pytest.raises(ValueError, match="^label: "):
        synthesize(np.zeros((4, 4), np.int16), np.random.default_rng(0))
