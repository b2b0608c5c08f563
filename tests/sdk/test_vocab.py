"""Each word list of the prompt vocabulary is spelled once: the typing aliases hold exactly the tuples' words."""

from __future__ import annotations

import typing

import pytest

from client.wire import vocab


@pytest.mark.parametrize(("alias", "words"), [
    (vocab.RefineMode, vocab.REFINE_MODES),
    (vocab.RegionMode, vocab.REGION_MODES),
    (vocab.OverlapRuleName, vocab.OVERLAP_RULES),
])
def test_the_literal_aliases_match_the_word_tuples(alias: object, words: tuple[str, ...]) -> None:
    assert typing.get_args(alias) == words


def test_overlap_rules_are_the_enum_values_default_first() -> None:
    assert vocab.OVERLAP_RULES == ("confidence", "recent")
    assert [r.value for r in vocab.OverlapRule] == list(vocab.OVERLAP_RULES)
