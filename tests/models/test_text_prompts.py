"""Text prompts on the predictor: a name alone or with a box / clicks, through SegVol's inference and text branch.

A real (tiny, random) SegVol with the CLIP text branch; the tokenizer reads CLIP's real vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from app.models import (  # noqa: E402
    Predictor,
    PredictorConfig,
    build_predictor,  # noqa: E402
)
from app.models.clip_tokenizer import packaged_vocabulary, tokenize  # noqa: E402
from app.models.segvol_inference import SegVolPrompt, segment  # noqa: E402
from tests.volumes import synthetic_volume  # noqa: E402

try:
    packaged_vocabulary()
except FileNotFoundError:
    pytest.skip("CLIP's vocabulary (open-clip-torch, the 'text' extra) is not installed", allow_module_level=True)

BOX = (6, 20, 20, 17, 43, 43)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return build_predictor("segvol-test", weights=None, with_text=True,
                           predictor_config=PredictorConfig(zoom_in="segvol"))


def _reference(predictor: Predictor, state, name: str | None, box=None, points=None, labels=None):  # noqa: ANN001, ANN202
    """SegVol's inference run directly with the name's embedding (tokens -> CLIP -> dim_align)."""
    text = None
    if name is not None:
        tokens = tokenize([name])
        with torch.inference_mode():
            text = predictor.backbone.embed_text(tokens.input_ids, tokens.attention_mask)
    pts = np.zeros((0, 3), np.int64) if points is None else np.asarray(points, np.int64)
    labs = np.zeros(0, np.int64) if labels is None else np.asarray(labels, np.int64)
    return segment(predictor.backbone, state.image[0, 0], state.crop, state.zoom_out_embedding,
                   SegVolPrompt(box=box, points=pts, labels=labs, text_embedding=text))


def _mask(shape: tuple[int, int, int], roi, logits) -> np.ndarray:  # noqa: ANN001
    out = np.zeros(shape, np.uint8)
    if roi is not None:
        out[roi[0]:roi[3], roi[1]:roi[4], roi[2]:roi[5]] = (logits > 0).numpy()
    return out


def test_capabilities_name_the_prompt_kinds(predictor: Predictor) -> None:
    assert predictor.supports_text and predictor.prompt_kinds == ["box", "points", "text"]
    plain = build_predictor("segvol-test", weights=None, predictor_config=PredictorConfig(zoom_in="segvol"))
    assert not plain.supports_text and plain.prompt_kinds == ["box", "points"]


def test_a_name_alone_segments_with_the_text_embedding(predictor: Predictor) -> None:
    state = predictor.init_state(synthetic_volume(), (2.0, 1.0, 1.0))
    change = predictor.add_text(state, 1, "liver")
    assert change.step == "decoder" and state.objects[1].text == "liver"
    expected = _mask(state.shape, *_reference(predictor, state, "liver"))
    assert np.array_equal(predictor.get_mask(state, 1), expected)
    other = _mask(state.shape, *_reference(predictor, state, "left kidney"))
    assert not np.array_equal(expected, other)  # the name reaches the decoder


def test_a_name_with_a_box_then_clicks_keeps_the_name_and_undo_restores(predictor: Predictor) -> None:
    state = predictor.init_state(synthetic_volume(), (2.0, 1.0, 1.0))
    predictor.add_text(state, 1, "left kidney", box=BOX)
    assert np.array_equal(predictor.get_mask(state, 1),
                          _mask(state.shape, *_reference(predictor, state, "left kidney", box=BOX)))
    predictor.add_clicks(state, 1, [[12, 30, 30]], [1], mode="decoder")
    obj = state.objects[1]
    assert obj.text == "left kidney" and obj.box == BOX
    expected = _reference(predictor, state, "left kidney", box=BOX, points=[[12, 30, 30]], labels=[1])
    assert np.array_equal(predictor.get_mask(state, 1), _mask(state.shape, *expected))
    predictor.undo(state, 1)
    predictor.undo(state, 1)
    assert state.objects[1].text is None and state.objects[1].box is None


def test_a_model_without_the_text_branch_refuses_and_keeps_its_state() -> None:
    for predictor in (build_predictor("segvol-test", weights=None, predictor_config=PredictorConfig(zoom_in="segvol")),
                      build_predictor("compact", weights=None)):
        state = predictor.init_state(synthetic_volume(), (2.0, 1.0, 1.0))
        with pytest.raises(ValueError, match="^text: the loaded model"):
            predictor.add_text(state, 1, "liver")
        assert state.objects == {}


@pytest.mark.parametrize("bad", ["", "  ", 7])
def test_bad_names_are_refused_before_any_work(predictor: Predictor, bad: object) -> None:
    state = predictor.init_state(synthetic_volume(), (2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="^text"):
        predictor.add_text(state, 1, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^box"):
        predictor.add_text(state, 1, "liver", box=(0, 0, 0, 99, 1, 1))
    assert state.objects == {}
