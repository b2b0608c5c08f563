"""MONAI Label click parameters: (i, j, k) voxel indices become (z, y, x), both request styles, clear errors
(unknown labels and fractional coordinates are refused, never guessed or rounded)."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.sessions.monailabel_bridge import label_value, parse_click_params

SHAPE = (16, 40, 56)  # (D, H, W)
LABELS = ["liver", "spleen"]


def test_deepgrow_clicks_are_reordered_to_zyx() -> None:
    params = {"foreground": [[40, 14, 6], [55.0, 39, 15]], "background": [[0, 1, 2]], "label": "spleen"}
    (req,), style = parse_click_params(params, LABELS, SHAPE)
    assert style == "deepgrow" and req.label == "spleen"
    assert req.foreground == ((6, 14, 40), (15, 39, 55)) and req.background == ((2, 1, 0),)  # 55.0 is whole


def test_deepgrow_without_a_label_uses_the_first_one() -> None:
    (req,), _ = parse_click_params({"foreground": [[1, 2, 3]]}, LABELS, SHAPE)
    assert req.label == "liver" and req.background == ()


def test_deepedit_gives_one_request_per_label_the_params_name() -> None:
    params = {"liver": [[1, 2, 3]], "spleen": [], "background": [[4, 5, 6]], "label": "liver"}
    requests, style = parse_click_params(params, ["background", *LABELS], SHAPE)
    assert style == "deepedit"
    assert [(r.label, r.foreground, r.background) for r in requests] == [
        ("liver", ((3, 2, 1),), ((6, 5, 4),)), ("spleen", (), ((6, 5, 4),))]  # spleen: its clicks are gone


@pytest.mark.parametrize("params", [{"foreground": [], "background": [[1, 2, 3]]}, {"foreground": []},
                                    {"background": [[1, 2, 3]]}, {}])
def test_background_only_and_empty_click_sets_are_accepted(params: dict) -> None:
    requests, _ = parse_click_params(params, LABELS, SHAPE)
    assert all(not r.foreground for r in requests)


def test_a_fractional_click_is_refused_not_rounded() -> None:  # issue 18, item 14
    with pytest.raises(InvalidInput) as e:
        parse_click_params({"foreground": [[40.4, 14, 6]], "label": "liver"}, LABELS, SHAPE)
    assert e.value.field == "params.foreground" and "whole voxel indices" in e.value.message
    with pytest.raises(InvalidInput) as e:
        parse_click_params({"liver": [[1, 2, 3]], "background": [[1, 2.5, 3]]}, LABELS, SHAPE)
    assert e.value.field == "params.background"


@pytest.mark.parametrize("params", [{"foreground": [[1, 2, 3]], "label": "kidney"},
                                    {"liver": [[1, 2, 3]], "label": "kidney"},
                                    {"foreground": [[1, 2, 3]], "label": "background"}])
def test_an_unknown_label_is_refused(params: dict) -> None:  # issue 18, item 14
    with pytest.raises(InvalidInput) as e:
        parse_click_params(params, LABELS, SHAPE)
    assert e.value.field == "params.label" and "unknown label" in e.value.message and "spleen" in e.value.message


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"foreground": [[56, 0, 0]]}, "params.foreground", "outside the image"),  # i == W
    ({"foreground": [[0, 0, 16]]}, "params.foreground", "outside the image"),  # k == D
    ({"foreground": [[0, 0, 0]], "background": [[-1, 0, 0]]}, "params.background", "outside"),
    ({"foreground": [[0, 0]]}, "params.foreground", "[i, j, k]"),
    ({"foreground": [[0, 0, "a"]]}, "params.foreground", "[i, j, k]"),
    ({"foreground": "x"}, "params.foreground", "list"),
    ({"foreground": [[0, 0, 0]], "label": 3}, "params.label", "unknown label"),
])
def test_bad_clicks_name_their_field(params: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_click_params(params, LABELS, SHAPE)
    assert e.value.field == field and words in e.value.message


def test_label_values_follow_the_configured_order() -> None:
    assert [label_value(n, LABELS) for n in ("liver", "spleen", "other")] == [1, 2, 1]


def test_click_box_widens_the_foreground_clicks_by_the_margin_in_mm_and_clips() -> None:
    from app.sessions.monailabel_bridge import CLICK_BOX_MARGIN_MM, _inside, click_box

    spacing, shape = (5.0, 0.5, 1.0), (20, 200, 100)
    box = click_box([(10, 100, 50), (11, 90, 60)], spacing, shape)
    mz, my, mx = (max(2, round(CLICK_BOX_MARGIN_MM / s)) for s in spacing)
    assert box == (10 - mz, 90 - my, 50 - mx, 11 + mz, 100 + my, 60 + mx)
    assert click_box([(0, 0, 99)], spacing, shape) == (0, 0, 99 - mx, mz, my, 99)  # clipped to the image
    assert click_box([], spacing, shape) is None  # background clicks only: no box
    assert _inside([(10, 100, 50)], box) and not _inside([(19, 100, 50)], box)
    assert _inside([], None) and not _inside([(1, 1, 1)], None)  # a first foreground click needs a box
