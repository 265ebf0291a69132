"""The row contract in hierarchy.py: what a hierarchy is, how levels are joined and counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiercaps_gen.hierarchy import SEPARATOR, is_hierarchy, join_levels, level_problem, split_levels, word_count, words


@pytest.mark.parametrize(
    ("levels", "problem"),
    [
        (["animal", "dog", "a dog on grass", "A dog on the grass."], None),
        (("animal", "dog", "a dog", "A dog."), None),
        (["animal", "dog", "a dog"], "not_4_levels"),
        (None, "not_4_levels"),
        ("abcd", "not_4_levels"),  # a string is not a list of levels
        (["animal", " ", "a dog", "A dog."], "empty_level"),
        (["animal", None, "a dog", "A dog."], "empty_level"),
    ],
)
def test_level_problem(levels: object, problem: str | None) -> None:
    assert level_problem(levels) == problem
    assert is_hierarchy(levels) == (problem is None)


level = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).map(str.strip).filter(
    lambda t: t and SEPARATOR.strip() not in t)


@given(st.lists(level, min_size=1, max_size=6))
def test_split_inverts_join(levels: list[str]) -> None:
    assert split_levels(join_levels(levels)) == levels


def test_split_levels_trims_and_handles_missing() -> None:
    assert split_levels("a =>  b  => c") == ["a", "b", "c"]
    assert split_levels(None) == [] and split_levels("") == []


def test_word_count_is_the_checks_tokenisation() -> None:
    text = "A man - on a tennis_court, 2 rackets!"
    assert word_count(text) == len(words(text)) == 8
