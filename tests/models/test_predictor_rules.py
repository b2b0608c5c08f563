"""Rules of the predictor that no mask comparison shows on its own: the corrector's anchor and per-round
seed (read at the call into Algorithm 1, which runs for real), and the depth of the undo stack."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

import app.models.corrector_step as corrector_step_module
from app.models import Predictor, build_predictor
from app.models.sampling import build_corrector_input

SHAPE = (23, 61, 47)
SPACING = (3.0, 0.8, 0.8)
BOX = [4, 18, 8, 16, 42, 31]  # centre (10, 30, 19)
BOX_CENTRE = (10, 30, 19)


def _volume() -> np.ndarray:
    rng = np.random.RandomState(0)
    vol = rng.normal(0, 1, size=SHAPE).astype(np.float32)
    vol[5:15, 20:40, 10:30] += 4.0
    return vol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


@pytest.fixture
def corrector_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[tuple[int, int, int], int]]]:
    """(anchor, generator seed) of every corrector round; the real sampling runs."""
    calls: list[tuple[tuple[int, int, int], int]] = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        anchor, generator = args[5], args[7]
        calls.append((tuple(int(a) for a in anchor), int(generator.initial_seed())))
        return build_corrector_input(*args, **kwargs)

    monkeypatch.setattr(corrector_step_module, "build_corrector_input", recording)
    yield calls


def _three_gru_rounds(predictor: Predictor, seed: int, object_id: int = 1) -> None:
    state = predictor.init_state(_volume(), SPACING, seed=seed)
    predictor.add_box(state, object_id, BOX)
    for point, label in [((6, 19, 9), 1), ((12, 35, 25), 0), ((9, 28, 14), 1)]:
        predictor.add_clicks(state, object_id, [point], [label], mode="gru")


def test_the_anchor_is_the_objects_first_click_not_the_box_centre(predictor: Predictor, corrector_calls) -> None:  # noqa: ANN001
    _three_gru_rounds(predictor, seed=7)
    assert [anchor for anchor, _ in corrector_calls] == [(6, 19, 9)] * 3
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    predictor.add_clicks(state, 1, [(6, 19, 9)], [1], mode="gru")
    predictor.undo(state, 1)  # back to the box alone: the next click is the first one again
    predictor.add_clicks(state, 1, [(12, 35, 25)], [1], mode="gru")
    assert corrector_calls[-1][0] == (12, 35, 25) != BOX_CENTRE


def test_each_round_has_its_own_reproducible_seed(predictor: Predictor, corrector_calls) -> None:  # noqa: ANN001
    _three_gru_rounds(predictor, seed=7)
    first = [seed for _, seed in corrector_calls]
    assert len(set(first)) == 3  # every round samples with another seed
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=7)
    assert [seed for _, seed in corrector_calls] == first  # the same session seed replays the same rounds
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=8)
    assert not set(first) & {seed for _, seed in corrector_calls}  # another session seed: other seeds
    corrector_calls.clear()
    _three_gru_rounds(predictor, seed=7, object_id=2)
    assert not set(first) & {seed for _, seed in corrector_calls}  # another object: other seeds


def test_undo_goes_back_exactly_undo_depth_levels(predictor: Predictor) -> None:
    depth = predictor.config.undo_depth
    assert depth == 16  # SPEC: a 16-level undo stack per object
    state = predictor.init_state(_volume(), SPACING, seed=7)
    predictor.add_box(state, 1, BOX)
    masks = [predictor.get_mask(state, 1)]
    rng = np.random.default_rng(1)
    for _ in range(depth + 4):
        point = [int(rng.integers(5, 15)), int(rng.integers(19, 41)), int(rng.integers(9, 30))]
        predictor.add_clicks(state, 1, [point], [int(rng.integers(0, 2))], mode="gru")
        masks.append(predictor.get_mask(state, 1))
    assert len({m.tobytes() for m in masks}) == len(masks)  # every level is told apart by its mask
    assert len(state.objects[1].undo_stack) == depth
    for level in range(1, depth + 1):
        predictor.undo(state, 1)
        assert np.array_equal(predictor.get_mask(state, 1), masks[-1 - level]), f"undo level {level}"
    with pytest.raises(ValueError, match="^object_id: nothing to undo"):
        predictor.undo(state, 1)  # the 17th level was dropped
    predictor.add_clicks(state, 1, [(9, 28, 14)], [1], mode="gru")  # the stack fills again from here
    predictor.undo(state, 1)
    assert np.array_equal(predictor.get_mask(state, 1), masks[-1 - depth])
