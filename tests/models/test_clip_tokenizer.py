"""SegVol's text prompts tokenise offline to the ids and padding of SegVol's own tokenizer.

The expected ids were produced by SegVol's tokenizer itself: ``tokenizers.Tokenizer.from_file`` on
``config/clip/tokenizer.json`` of github.com/BAAI-DCAI/SegVol @ 5768c97 (the file its ``AutoTokenizer`` loads),
encoding ``"A computerized tomography of a {name}."``. Single-word checks against the vocabulary file: in
CLIP's vocabulary "liver</w>" is 12639, "kidney</w>" 14610, "left</w>" 1823, "right</w>" 1155, "a</w>" 320.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")

from app.models.clip_tokenizer import (  # noqa: E402
    END_ID,
    packaged_vocabulary,
    tokenize,
    validate_name,
    vocabulary_from_bpe,
)

PREFIX = [49406, 320, 11639, 704, 7690, 999, 22399, 539, 320]  # <start> a computerized tomography of a
SEGVOL_IDS = {
    "liver": PREFIX + [12639, 269, 49407],
    "left kidney": PREFIX + [1823, 14610, 269, 49407],
    "Right  Kidney": PREFIX + [1155, 14610, 269, 49407],  # lower-cased, blanks collapsed
    "aorta": PREFIX + [32044, 1397, 269, 49407],
    "inferior vena cava": PREFIX + [16258, 2498, 47442, 48682, 269, 49407],
    "kidney_right": PREFIX + [14610, 318, 1155, 269, 49407],
    "spleen": PREFIX + [588, 15940, 269, 49407],
    "café": PREFIX + [15304, 269, 49407],
}

try:
    packaged_vocabulary()
except FileNotFoundError:
    pytest.skip("CLIP's vocabulary (open-clip-torch, the 'text' extra) is not installed", allow_module_level=True)


@pytest.mark.parametrize("name", sorted(SEGVOL_IDS))
def test_ids_equal_segvols_tokenizer(name: str) -> None:
    tokens = tokenize([name])
    assert tokens.input_ids[0].tolist() == SEGVOL_IDS[name]
    assert tokens.attention_mask[0].tolist() == [1] * len(SEGVOL_IDS[name])  # one name: no padding


def test_a_batch_is_padded_to_the_longest_with_end_of_text() -> None:
    tokens = tokenize(["liver", "inferior vena cava"])
    long = SEGVOL_IDS["inferior vena cava"]
    assert tokens.input_ids[1].tolist() == long
    assert tokens.input_ids[0].tolist() == SEGVOL_IDS["liver"] + [END_ID] * (len(long) - len(SEGVOL_IDS["liver"]))
    assert tokens.attention_mask[0].tolist() == [1] * len(SEGVOL_IDS["liver"]) + [0] * 3


def test_vocabulary_ids_of_single_words() -> None:
    vocab, merges = vocabulary_from_bpe(packaged_vocabulary())
    assert len(vocab) == 49408 and len(merges) == 48894
    assert [vocab[w] for w in ("liver</w>", "kidney</w>", "left</w>", "right</w>", "a</w>")] == [
        12639, 14610, 1823, 1155, 320]


@pytest.mark.parametrize("bad", ["", "   ", None, 3, "x" * 201])
def test_bad_names_are_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="^text"):
        validate_name(bad)
