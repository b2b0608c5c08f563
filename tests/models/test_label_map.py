"""Composing objects into one label map: the confidence and recent overlap rules, alone and on a predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models import Predictor, UnknownObjectError, build_predictor
from app.models.label_map import OVERLAP_RULES, paint_by_confidence, paint_in_order
from app.schemas.prompts import OverlapRule

SHAPE = (6, 8, 8)


def test_paint_in_order_later_objects_win() -> None:
    a = np.zeros((2, 2, 2), dtype=bool)
    b = np.zeros_like(a)
    a[0] = True
    b[:, 0] = True
    labels = paint_in_order({7: b, 2: a}, [7, 2], a.shape, np.dtype(np.uint16))
    assert labels.dtype == np.uint16
    assert labels[0, 0, 0] == 2 and labels[0, 1, 0] == 2 and labels[1, 0, 1] == 7 and labels[1, 1, 1] == 0


def test_the_most_confident_object_wins_and_no_object_grows() -> None:
    # Object 1 claims a large ROI with logit 2; object 2 claims a nested core with logit 5, and its ROI
    # margin (logit -3) overlaps object 1 without claiming it.
    roi1, roi2 = (0, 0, 0, 6, 8, 8), (2, 2, 2, 5, 6, 6)
    logits1 = np.full((6, 8, 8), 2.0, np.float32)
    logits1[:, :, 7] = -1.0  # object 1 does not claim the last column
    logits2 = np.full((3, 4, 4), -3.0, np.float32)
    logits2[1:, 1:3, 1:3] = 5.0
    labels = paint_by_confidence([(2, roi2, logits2), (1, roi1, logits1)], SHAPE, np.dtype(np.uint8))
    core = np.zeros(SHAPE, bool)
    core[3:5, 3:5, 3:5] = True
    assert (labels[core] == 2).all()  # nested, more confident: on top although painted first
    assert (labels[~core & (np.arange(8) < 7)[None, None, :]] == 1).all()  # object 1 keeps what it claims
    assert (labels[:, :, 7] == 0).all()  # a negative logit never takes a label


def test_rois_away_from_the_origin_compose_like_full_volume_masks() -> None:
    # Two ROIs far from the volume's corner, overlapping in part: the result must not depend on where the
    # ROIs' union starts.
    a, b = (3, 4, 5, 6, 9, 9), (5, 6, 2, 8, 8, 7)
    la = np.full((3, 5, 4), 1.0, np.float32)
    lb = np.full((3, 2, 5), 2.0, np.float32)
    labels = paint_by_confidence([(1, a, la), (2, b, lb)], (9, 10, 11), np.dtype(np.uint8))
    expected = np.zeros((9, 10, 11), np.uint8)
    expected[3:6, 4:9, 5:9] = 1
    expected[5:8, 6:8, 2:7] = 2
    assert np.array_equal(labels, expected)


def test_the_wire_enum_and_the_model_rules_agree() -> None:
    assert tuple(r.value for r in OverlapRule) == OVERLAP_RULES


def test_equal_logits_go_to_the_later_object() -> None:
    roi = (0, 0, 0, 2, 2, 2)
    ten = np.full((2, 2, 2), 10.0, np.float32)
    first = paint_by_confidence([(3, roi, ten), (4, roi, ten)], (2, 2, 2), np.dtype(np.uint8))
    second = paint_by_confidence([(4, roi, ten), (3, roi, ten)], (2, 2, 2), np.dtype(np.uint8))
    assert (first == 4).all() and (second == 3).all()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.set_num_threads(1)
    return build_predictor("segvol-test", weights=None)


def test_predictor_label_map_follows_each_rule(predictor: Predictor) -> None:
    volume = np.random.default_rng(0).normal(0, 1, (20, 32, 32)).astype(np.float32)
    state = predictor.init_state(volume, (2.0, 1.0, 1.0))
    big = np.zeros(volume.shape, np.uint8)
    big[2:18, 4:28, 4:28] = 1
    core = np.zeros(volume.shape, np.uint8)
    core[8:12, 12:20, 12:20] = 1
    predictor.set_mask(state, 1, core)
    predictor.set_mask(state, 2, big)  # uploaded masks: logit +-mask_logit everywhere, a tie on the core
    tie = predictor.get_label_map(state, [1, 2])
    assert tie.dtype == np.uint8 and (tie[core == 1] == 2).all() and (tie[big == 1] == 2).all()
    assert (predictor.get_label_map(state, [2, 1])[core == 1] == 1).all()  # the order breaks the tie

    # The model being more sure of the core than of the surrounding object: the core wins under "confidence",
    # the later object under "recent". (Logits set by hand: random weights give no controlled confidences.)
    state.objects[2].logits = state.objects[2].logits * 0.5
    confident = predictor.get_label_map(state, [1, 2])
    assert (confident[core == 1] == 1).all() and (confident[(big == 1) & (core == 0)] == 2).all()
    assert (confident[big == 0] == 0).all()
    recent = predictor.get_label_map(state, [1, 2], overlap="recent")
    assert np.array_equal(recent, np.where(big == 1, 2, 0))
    assert np.array_equal(predictor.get_label_map(state, [2]), big * 2)  # only the listed objects


def test_predictor_label_map_rejects_bad_arguments(predictor: Predictor) -> None:
    state = predictor.init_state(np.zeros((20, 32, 32), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="^overlap: expected one of"):
        predictor.get_label_map(state, [], overlap="newest")  # type: ignore[arg-type]
    with pytest.raises(UnknownObjectError):
        predictor.get_label_map(state, [3])
    assert predictor.get_label_map(state).shape == (20, 32, 32)  # no objects: all background
    big_id = np.zeros((20, 32, 32), np.uint8)
    big_id[0, 0, 0] = 1
    predictor.set_mask(state, 300, big_id)
    assert predictor.get_label_map(state).dtype == np.uint16
