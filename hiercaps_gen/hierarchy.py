"""The row contract: Arrow schemas, text normalisation, and positive hierarchies as validated
pydantic models, plus the checks other stages reuse.

A hierarchy is four descriptions, generic → specific, the last being the caption. The checks are
the cheap, explainable ones (each failure has a stable reason code that lands in the reject
ledger); the optional embedding-order check (`encoders.EmbeddingScorer`) adds the Radial-Embedding
view: the distance of each level from the root (the embedding of "") should grow with the level.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from hiercaps_gen import hypernyms

# Arrow schemas of the rows each stage writes: the data contract between stages. Each stage's
# schema extends the one before it, so a row carries its whole lineage forward.

LEVELS = 4
ANYTHING = "anything"  # level 0: the implicit root every level-1 description is a child of

CAPTION = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("image_id", pa.string()),
        ("image_url", pa.string()),
        ("caption", pa.string()),
    ]
)

POSITIVE = pa.schema(
    list(CAPTION)
    + [
        ("positive", pa.list_(pa.string())),
        ("positive_origin", pa.string()),  # "llm" or "distilled"
        ("generator_model", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_hash", pa.string()),
        ("seed", pa.int64()),
        ("attempts", pa.int32()),
    ]
)

NEGATIVE = pa.schema(
    list(POSITIVE)
    + [
        ("negative", pa.list_(pa.string())),
        ("ordering_model_hash", pa.string()),
    ]
)

FILTERED = pa.schema(list(NEGATIVE) + [("filter_score", pa.float64())])

RELEASE = pa.schema(list(FILTERED) + [("split", pa.string())])

REJECT = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("row", pa.string()),  # the rejected input row as JSON: nothing is lost
    ]
)


# Caption text normalisation: one canonical form before anything is hashed or prompted.

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFC, control and format characters removed, whitespace collapsed and trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co"}
    )
    return _WHITESPACE.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """Key under which two captions count as duplicates: case- and punctuation-insensitive."""
    return " ".join(re.findall(r"\w+", text.casefold()))


# Words that carry no content for the containment check.
STOPWORDS = frozenset(
    "a an the of on in at to with and or for from by over under near next into onto up down is are was "
    "were be been being it its this that these those there here some his her their our your my one two "
    "three several many while as out off around front top side".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class HierarchyInvalid(ValueError):
    """A hierarchy failed a check; `reason` is the stable code for the reject ledger."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Checks:
    """Thresholds of the lexical checks."""

    max_level1_words: int = 3
    min_overlap: float = 0.5
    level1_generic: bool = True  # level 1 must name level 2's head or a known hypernym of it
    repair_level1: bool = False  # validate_hierarchy: replace a failing level 1 by the table's category of level 2's head
    head_level1: bool = False  # validate_hierarchy: level 1 becomes the head noun of a modified level 2 ("bear" ⊐ "brown bear")


def clean_level(text: str) -> str:
    """Whitespace collapsed, wrapping quotes and a final period dropped: how levels are stored."""
    text = " ".join(text.split())
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text.rstrip(" .")


def words(text: str) -> list[str]:
    """The one tokenisation of a level or caption: letter and digit runs, lower-cased."""
    return _WORD.findall(text.lower())


def word_count(text: str) -> int:
    """Words of a text as every stage and statistic counts them (`words`)."""
    return len(words(text))


def repeats_ngram(text: str, n: int) -> bool:
    """Whether some run of `n` words occurs twice in `text`: a sampled sentence that loops ("a
    kitten in the light of a kitten in the light of a kitten")."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


# A hierarchy as a row holds it: LEVELS non-empty strings, generic → specific; in the authors'
# CSV layout the levels are joined by SEPARATOR.
SEPARATOR = " => "


def level_problem(levels: object) -> str | None:
    """Why `levels` is not a hierarchy (a stable reason code), or None when it is one."""
    if not isinstance(levels, (list, tuple)) or len(levels) != LEVELS:
        return "not_4_levels"
    if any(not isinstance(t, str) or not t.strip() for t in levels):
        return "empty_level"
    return None


def is_hierarchy(levels: object) -> bool:
    return level_problem(levels) is None


def join_levels(levels: Sequence[str]) -> str:
    return SEPARATOR.join(levels)


def split_levels(text: str | None) -> list[str]:
    """The levels of a SEPARATOR-joined text, each trimmed ([] for None or "")."""
    return [t.strip() for t in text.split(SEPARATOR)] if text else []


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if w not in STOPWORDS}


def overlap(part: str, whole: str) -> float:
    """Share of `part`'s content words found in `whole`: a lexical 'is contained in'."""
    mine = content_words(part)
    if not mine:
        return 0.0
    return len(mine & content_words(whole)) / len(mine)


class PositiveHierarchy(BaseModel):
    """Levels 1..4, generic → specific; validation enforces the checks (context: `Checks`)."""

    model_config = ConfigDict(frozen=True)

    levels: tuple[str, str, str, str]

    @field_validator("levels")
    @classmethod
    def _non_empty_distinct(cls, levels: tuple[str, ...]) -> tuple[str, ...]:
        if any(not words(level) for level in levels):
            raise HierarchyInvalid("empty_level", f"levels {list(levels)}")
        normal = [frozenset(content_words(level)) or " ".join(words(level)) for level in levels]
        if len(set(normal)) != len(normal):  # "a bus" and "bus" say the same thing
            raise HierarchyInvalid("duplicate_levels", f"levels {list(levels)}")
        return levels

    @model_validator(mode="after")
    def _shape(self, info: ValidationInfo) -> PositiveHierarchy:
        checks: Checks = (info.context or {}).get("checks", Checks())
        counts = [len(words(level)) for level in self.levels]
        if counts[0] > checks.max_level1_words:
            raise HierarchyInvalid("level1_too_long", f"level 1 has {counts[0]} words (max {checks.max_level1_words})")
        if not counts[1] <= counts[2] < counts[3]:  # level 1 is capped instead ("motorized transport")
            raise HierarchyInvalid("length_order", f"word counts {counts} must grow from level 2 to the caption")
        for k in (1, 2):  # level 2 in 3, level 3 in the caption; level 1 is a category (a hypernym)
            share = overlap(self.levels[k], self.levels[k + 1])
            if share < checks.min_overlap:
                raise HierarchyInvalid(
                    "not_contained", f"level {k + 1} {self.levels[k]!r} shares {share:.2f} of its words with level {k + 2}"
                )

        if checks.level1_generic:
            problem = level1_problem(self.levels[0], self.levels[1])
            if problem is not None:
                raise HierarchyInvalid("level1_not_generic", problem)
        return self

    def lexical_score(self) -> float:
        """Mean containment of levels 2 and 3 in the next level: a tie-breaker between candidates."""
        return (overlap(self.levels[1], self.levels[2]) + overlap(self.levels[2], self.levels[3])) / 2


def _content(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


def level1_problem(level1: str, level2: str) -> str | None:
    """Why level 1 is not more generic than level 2 (None: it is).

    Level 1 must be level 2's head noun — its last or first words: "bear" for "brown bear", "cat"
    for "cat sleeping" — or a category the hypernym table (`hypernyms.py`) gives that head
    ("animal", "wild animal"); a level 2 whose head the table does not know cannot be vouched
    for. Offline, deterministic, and explainable.
    """
    mine, theirs = _content(level1), _content(level2)
    if not mine or not theirs:
        return f"level 1 {level1!r} or level 2 {level2!r} has no content word"
    phrase = " ".join(hypernyms.singular(w) for w in mine)
    last = hypernyms.singular(mine[-1])
    if phrase == " ".join(hypernyms.singular(w) for w in theirs):
        return f"level 1 {level1!r} repeats level 2"
    forms = [hypernyms.singular(w) for w in theirs]
    if len(theirs) > len(mine) and phrase.split() in (forms[-len(mine):], forms[: len(mine)]):
        return None  # level 1 is level 2's head: "bear" ⊐ "brown bear", "cat" ⊐ "cat sleeping"
    found = hypernyms.lookup(theirs)
    if found is None:
        return f"head of level 2 {level2!r} is not in the hypernym table"
    head, categories = found
    if phrase in categories or last in categories:  # "wild animal": its head "animal" is the category
        return None
    return f"level 1 {level1!r} is not a known hypernym of {head!r} ({', '.join(sorted(categories))})"


def repair_level1(levels: tuple[str, ...]) -> tuple[str, ...]:
    """Levels with a failing level 1 replaced by the category the table gives level 2's head.

    Sound because the new level 1 is true by construction (the table says head is-a category)
    and it changes nothing the LLM wrote about the image; done only when the head has exactly
    one direct category ("chicken" is food and animal: left alone, the check rejects it). A
    head that names its own category ("person") gets the first broader one ("people").
    """
    if level1_problem(levels[0], levels[1]) is None:
        return levels
    found = hypernyms.lookup(_content(levels[1]))
    if found is None:
        return levels
    direct = hypernyms.direct_categories(found[0])
    if len(direct) != 1:
        return levels
    category = direct[0] if direct[0] != found[0] else next(iter(hypernyms.BROADER.get(direct[0], ())), None)
    return levels if category is None else (category, *levels[1:])  # "person" ⊏ "people"


def head_level1(levels: tuple[str, ...]) -> tuple[str, ...]:
    """Levels with level 1 replaced by level 2's head noun when level 2 is that head with words
    before it ("brown bear" → "bear", "tennis player" → "player"); otherwise unchanged.

    Why: in a third of the authors' chains level 1 is a word of level 2 ("kite" ⊐ "kite flying",
    "bear" ⊐ "teddy bear"), a pair an encoder tuned only on category level 1s orders worst; set on
    a release's rows post hoc it lifted the RE proxy by 0.0027 ± 0.0009 over ten paired draws
    (docs/decisions.md, stop 28). True by construction: the head names what level 2 names, with
    less said. Only a head-final level 2 the table knows, and not a coordination ("broccoli and
    cauliflower").
    """
    content = _content(levels[1])
    if {"and", "or"} & set(words(levels[1])):
        return levels
    found = hypernyms.lookup(content)
    if found is None:
        return levels
    head = found[0].split()
    if len(head) >= len(content) or [hypernyms.singular(w) for w in content[-len(head):]] != head:
        return levels
    return (" ".join(head), *levels[1:])


def level1_options(level1: str, level2: str) -> list[str]:
    """Every table category of level 2's head that could stand as level 1 (sorted), when level 1 is
    itself one of them; [] when it is not (a head-noun level 1, "bear" for "brown bear", is the
    LLM's own and stays)."""
    found = hypernyms.lookup(_content(level2))
    if found is None or level1.lower() not in found[1]:
        return []
    return sorted(c for c in found[1] if level1_problem(c, level2) is None)


def draw_level1(levels: tuple[str, ...], seed: int) -> tuple[str, ...]:
    """Levels with a table-category level 1 redrawn (seeded) among every category of level 2's head,
    each weighted by its specificity (1 / the members it covers).

    Why: the small LLM (and the repair) name the head's direct category, so level 1 spans a few
    dozen one-word terms ("person" in 37 % of rows) and the RE loss learns "fewer words, more
    generic"; drawn over the table's closure, kinds included ("canine", "hoofed mammal", "motor
    vehicle", "living thing"), level 1 has every breadth and is two words long in about a third of
    rows, as in the authors' data; the weights keep the shared roots ("entity") from crowding out
    the kinds (docs/decisions.md, measured). True by construction, as the repair; a head-noun
    level 1 ("bear" for "brown bear") is the LLM's and kept.
    """
    options = level1_options(levels[0], levels[1])
    if not options:
        return levels
    sizes = hypernyms.category_sizes()
    return (random.Random(seed).choices(options, [1 / sizes[c] for c in options])[0], *levels[1:])


def validate_hierarchy(
    generated: Sequence[str], caption: str, checks: Checks = Checks(), level1_seed: int | None = None
) -> PositiveHierarchy:
    """Levels 1..3 as generated plus the caption, cleaned (level 1 repaired and set to level 2's
    head if asked, redrawn with `level1_seed`) and checked; raises HierarchyInvalid."""
    if len(generated) != LEVELS - 1:
        raise HierarchyInvalid("format", f"expected {LEVELS - 1} generated levels, got {len(generated)}")
    levels = tuple(clean_level(level) for level in generated) + (caption,)
    if checks.repair_level1 and checks.level1_generic:
        levels = repair_level1(levels)
    if checks.head_level1 and checks.level1_generic:
        levels = head_level1(levels)
    if level1_seed is not None and checks.level1_generic:
        levels = draw_level1(levels, level1_seed)
    try:
        return PositiveHierarchy.model_validate({"levels": levels}, context={"checks": checks})
    except HierarchyInvalid:
        raise
    except ValueError as exc:  # pydantic wraps errors raised inside validators
        cause = _invalid_cause(exc)
        if cause is not None:
            raise cause from None
        raise HierarchyInvalid("format", str(exc)) from None


def _invalid_cause(exc: BaseException) -> HierarchyInvalid | None:
    for error in getattr(exc, "errors", lambda: [])():
        ctx = error.get("ctx") or {}
        if isinstance(ctx.get("error"), HierarchyInvalid):
            return ctx["error"]
    return None
