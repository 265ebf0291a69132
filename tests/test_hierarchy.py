"""The row contract in hierarchy.py: what a hierarchy is, how levels are joined and counted."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiercaps_gen.hierarchy import (
    SEPARATOR, is_hierarchy, join_levels, level_problem, repeats_ngram, split_levels, word_count, words,
)


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


def test_repeats_ngram_finds_a_run_of_words_said_twice() -> None:
    loop = "a kitten in the light of a kitten in the light of a kitten"
    assert repeats_ngram(loop, 3) and repeats_ngram(loop, 8) and not repeats_ngram(loop, 9)  # 14 words, period 6
    assert repeats_ngram("A cat, on a mat. a cat on the mat", 2)  # the words, not the punctuation or case
    assert not repeats_ngram("a cat on a mat next to a dog on a rug", 3)  # "on a" twice is no loop of three
    assert not repeats_ngram("a cat", 3)


# -- level 1 more generic than level 2 (issue 11) --------------------------------------------------

from hiercaps_gen.hierarchy import (  # noqa: E402
    Checks, HierarchyInvalid, draw_level1, head_level1, level1_problem, repair_level1, validate_hierarchy,
)
from hiercaps_gen.hypernyms import absent_categories, lookup, relation, singular  # noqa: E402

BAD_LEVEL1 = [("mug", "knife"), ("building", "sheep"), ("mother", "baby"), ("bear", "bear"), ("animal", "teddy bear"),
              ("food", "dogs"), ("street", "bus")]
GOOD_LEVEL1 = [("animal", "brown bear"), ("bear", "brown bear"), ("wild animal", "bear"), ("people", "young boys"),
               ("person", "tennis player"), ("vehicle", "double-decker bus"), ("toy", "teddy bear"),
               ("food", "hot dog"), ("sports equipment", "skis"), ("animals", "two giraffes"),
               ("person", "group of people"), ("transportation", "train"), ("sign", "stop sign")]


@pytest.mark.parametrize(("level1", "level2"), BAD_LEVEL1)
def test_level1_that_is_not_more_generic_is_rejected(level1: str, level2: str) -> None:
    assert level1_problem(level1, level2) is not None
    caption = f"A photo of the {level2} on a table."
    with pytest.raises(HierarchyInvalid) as raised:
        validate_hierarchy((level1, level2, f"the {level2} on a table"), caption)
    assert raised.value.reason in {"level1_not_generic", "duplicate_levels"}


@pytest.mark.parametrize(("level1", "level2"), GOOD_LEVEL1)
def test_level1_that_names_the_head_or_a_known_hypernym_passes(level1: str, level2: str) -> None:
    assert level1_problem(level1, level2) is None
    levels = validate_hierarchy((level1, level2, f"the {level2} on a wooden table"), f"A photo of the {level2} on a wooden table.").levels
    assert levels[0] == level1


def test_unknown_head_is_a_reason_not_a_guess() -> None:
    problem = level1_problem("thing", "flux capacitor")
    assert problem is not None and "not in the hypernym table" in problem
    with pytest.raises(HierarchyInvalid, match="level1_not_generic"):
        validate_hierarchy(("thing", "flux capacitor", "a flux capacitor on a desk"), "A flux capacitor on a desk in a lab.")
    # the check can be turned off (abstract.level1_check), the others still apply
    off = Checks(level1_generic=False)
    assert validate_hierarchy(("thing", "flux capacitor", "a flux capacitor on a desk"), "A flux capacitor on a desk in a lab.", off)


def test_lookup_finds_the_head_two_word_members_first_and_plurals() -> None:
    assert lookup(["teddy", "bear"])[0] == "teddy bear" and "toy" in lookup(["teddy", "bear"])[1]
    assert lookup(["brown", "bear"])[0] == "bear" and "animal" in lookup(["brown", "bear"])[1]
    assert lookup(["man", "riding"])[0] == "man"
    assert lookup(["flux", "capacitor"]) is None
    assert [singular(w) for w in ("buses", "knives", "giraffes", "puppies", "women", "skis", "glass")] == \
        ["bus", "knife", "giraffe", "puppy", "woman", "ski", "glass"]


def test_lookup_stops_at_the_post_modifier() -> None:
    """The head is named before a preposition or a participle with an object, not at the last noun."""
    assert lookup("a person sitting on a bench".split())[0] == "person"
    assert lookup("woman eating food".split())[0] == "woman"
    assert lookup("man riding a horse".split())[0] == "man"
    assert lookup("a building with a clock".split())[0] == "building"  # -ing noun with no noun before it
    assert lookup("group of people".split())[0] == "people"  # "of" does not end the head
    assert lookup("church building".split())[0] == "building"  # a last -ing word is no participle
    assert lookup("a blue sky over xyzzy".split())[0] == "sky"
    assert lookup("xyzzy on a bench".split())[0] == "bench"  # nothing known before it: the whole phrase
    assert relation("a person sitting on a bench".split(), ["man"]) == "above"  # refused as n_2 of "man"


def test_repair_replaces_only_a_failing_level1_by_the_heads_single_category() -> None:
    caption = "A brown bear swimming in the water."
    assert repair_level1(("bear", "bear", "a bear swimming in water", caption))[0] == "animal"
    assert repair_level1(("building", "sheep", "sheep near a building", caption))[0] == "animal"
    assert repair_level1(("person", "person", "a person on a bench", caption))[0] == "people"  # head = its category
    for level2 in ("computers", "two sheep", "rear view mirror", "place setting", "parachute"):  # a repair always passes
        repaired_levels = repair_level1(("kitchen", level2, "x", caption))  # a category of none of them
        assert repaired_levels[0] != "kitchen" and level1_problem(repaired_levels[0], level2) is None, level2
    kept = ("wild animal", "bear", "a bear swimming in water", caption)
    assert repair_level1(kept) == kept  # a passing level 1 is the LLM's own
    assert repair_level1(("thing", "flux capacitor", "x", caption))[0] == "thing"  # unknown head: nothing to repair with
    assert repair_level1(("meal", "chicken", "x", caption))[0] == "meal"  # food and animal: ambiguous, left alone
    repaired = validate_hierarchy(("bear", "bear", "a bear swimming in water"), caption, Checks(repair_level1=True))
    assert repaired.levels[:2] == ("animal", "bear")
    with pytest.raises(HierarchyInvalid, match="duplicate_levels"):  # without repair the same answer fails
        validate_hierarchy(("bear", "bear", "a bear swimming in water"), caption)


def test_draw_spreads_a_category_level1_over_every_category_of_the_head() -> None:
    from hiercaps_gen.hypernyms import table

    caption = "A red double decker bus driving down a city street."
    levels = ("vehicle", "bus", "a red bus on a street", caption)
    counts = Counter(draw_level1(levels, seed)[0] for seed in range(400))
    assert set(counts) <= table()["bus"] and len(counts) >= 8  # the table's closure of "bus", kinds and roots
    assert {"public transport", "motor vehicle"} <= set(counts)  # kinds, two words long
    assert counts["public transport"] > counts["entity"]  # weighted by specificity: the shared roots are rare
    assert all(level1_problem(level1, "bus") is None for level1 in counts)
    assert draw_level1(levels, 7) == draw_level1(levels, 7) and draw_level1(levels, 7)[1:] == levels[1:]
    kept = ("bear", "brown bear", "a brown bear in water", caption)
    assert {draw_level1(kept, seed) for seed in range(10)} == {kept}  # a head-noun level 1 is the LLM's own
    unknown = ("thing", "flux capacitor", "x", caption)
    assert draw_level1(unknown, 3) == unknown
    people = {draw_level1(("person", "people", "people on a bus", caption), seed)[0] for seed in range(40)}
    assert "people" not in people and people <= table()["people"]  # never a repeat of level 2
    checked = {validate_hierarchy(levels[:3], caption, level1_seed=seed).levels[0] for seed in range(8)}
    assert len(checked) > 1 and validate_hierarchy(levels[:3], caption).levels[0] == "vehicle"


def test_head_level1_takes_a_modified_level2s_head_noun_and_leaves_the_rest() -> None:
    caption = "A large brown bear walks through tall grass next to a river."
    for level2, head in (("brown bear", "bear"), ("tennis player", "player"), ("wild turkeys", "turkey"),
                         ("stuffed teddy bears", "teddy bear"), ("double-decker bus", "bus")):
        levels = head_level1(("animal", level2, "x", caption))
        assert levels == (head, level2, "x", caption) and level1_problem(head, level2) is None, level2
    for level2 in ("bear", "two men", "broccoli and cauliflower", "snow boards", "cat sleeping", "flux capacitor"):
        # one word; no head before it; a coordination; a head not last (the table knows "snow", not "boards");
        # head first; a head the table does not know: level 1 stays
        assert head_level1(("animal", level2, "x", caption))[0] == "animal", level2
    answer = ("wild animal", "brown bear", "a large brown bear walks through tall grass")
    assert validate_hierarchy(answer, caption, Checks(head_level1=True)).levels[0] == "bear"
    assert validate_hierarchy(answer, caption, Checks(head_level1=True), level1_seed=3).levels[0] == "bear"  # not redrawn
    assert validate_hierarchy(answer, caption).levels[0] == "wild animal"  # off by default


def test_relation_places_one_head_against_another() -> None:
    assert relation(["two", "dogs"], ["large", "dog"]) == "same"
    assert relation(["person"], ["man"]) == "above" and relation(["pet"], ["dog"]) == "above"
    assert relation(["woman"], ["group", "of", "people"]) == "below"
    assert relation(["cat"], ["dog"]) is None and relation(["man"], ["woman"]) is None  # siblings
    assert relation(["xyzzy"], ["dog"]) is None  # a head the table does not know: no verdict


def test_absent_categories_are_those_no_word_names() -> None:
    absent = absent_categories("a man riding a horse on the beach".split(), set())
    assert not {"person", "animal", "place"} & set(absent) and {"vehicle", "food"} <= set(absent)
    assert "toy" not in absent_categories("a teddy bear on a bed".split(), set())  # two-word member
    assert not {"food", "fruit", "vegetable"} & set(absent_categories(["thing"], {"food"}))  # narrower than a named one
    assert "animal" not in absent_categories(["thing"], {"creature"})  # a named broader term
    assert not {"plant", "animal", "canine"} & set(absent_categories(["thing"], {"organism"}))  # under a named root
    assert {"kitchen appliance", "baked goods"} <= set(absent)  # kinds are siblings too
    assert not {"hoofed mammal", "canine", "adult"} & set(absent)  # a kind of a named member, or a sibling under it


def test_level1_may_be_the_first_words_of_level2_but_not_a_middle_word() -> None:
    assert level1_problem("cat", "cat sleeping") is None
    assert level1_problem("train", "train at a station") is None
    assert level1_problem("dog", "big dog bed") is not None  # neither head nor a hypernym of "bed"


def test_every_repair_the_table_can_make_passes_the_check() -> None:
    from hiercaps_gen.hypernyms import direct_categories, table

    repaired = 0
    for member in table():
        levels = repair_level1(("zzz", member, "x", "y"))
        if len(direct_categories(member)) == 1 and levels[0] != "zzz":
            repaired += 1
            assert level1_problem(levels[0], member) is None, (member, levels[0])
            plural = member + ("es" if member.endswith(("s", "x", "ch", "sh")) else "s")
            if plural not in table():  # "glasses" is a member of its own (eyewear)
                assert level1_problem(levels[0], f"two {plural}") is None, (member, levels[0])  # plural heads too
    assert repaired > 300
