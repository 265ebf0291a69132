"""negatives: siblings sampled from the trained ordering model, checked, seeded, all rows counted."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hiercaps_gen import hypernyms
from hiercaps_gen.encoders import get_embedder
from hiercaps_gen.fluency import get_fluency_scorer, reads_worse
from hiercaps_gen.geometry import exterior_angle
from hiercaps_gen.ordering.tasks import down_source
from hiercaps_gen.stages.negatives import NegativesStage, _seed
from hiercaps_gen.ordering.model import torch_threads
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.hierarchy import dedup_key, level1_options, word_count, words

from .test_ordering_data import hierarchy_rows, tiny_config, trained_run, write_abstract

POSITIVE = ["animal", "dog", "a dog on a couch", "A small white dog asleep on a grey couch."]


def _copy(tmp_path: Path, name: str = "run", rows: int | None = None) -> Path:
    """A copy of the trained run; with `rows`, its abstract stage cut to that many hierarchies
    (the model stays the one trained on all of them: the negatives stage only samples from it)."""
    run_dir = tmp_path / name
    shutil.copytree(trained_run(), run_dir)
    if rows is not None:
        shutil.rmtree(run_dir / "abstract")
        write_abstract(run_dir, hierarchy_rows(rows))
    return run_dir


def _rejects(run_dir: Path) -> list[dict]:
    files = sorted((run_dir / "negatives" / "rejects").glob("*.parquet"))
    return [r for p in files for r in pq.read_table(p).to_pylist()]


def _sims(texts: list[str]) -> np.ndarray:
    embedder = get_embedder("embedded:minilm", "cpu")
    with torch_threads(1):
        return embedder.encode(texts) @ embedder.encode(POSITIVE).T


@pytest.mark.parametrize(
    ("text", "level", "problem"),
    [
        ("a dog on a couch", 2, "same_as_positive"),
        ("A dog on a couch.", 2, "same_as_positive"),
        ("puppy", 1, "paraphrase"),
        # the hypernym table places the head at, above or below p_k's: true of the image, no sibling
        ("dogs", 1, "same_head"),
        ("a large dog", 1, "same_head"),  # MiniLM cosine to "dog" 0.61: no paraphrase by similarity
        ("pet", 1, "ancestor"),
        ("cat", 0, "descendant"),
        ("animal", 1, "ancestor"),
        ("anything", 0, "ancestor"),
        ("a dog on a couch", 1, "descendant"),
        ("", 3, "malformed"),
        ("cat => kitten", 1, "malformed"),
        ("cat = > kitten", 1, "malformed"),
        ("a sleeping cat", 3, "not_a_sentence"),
        ("cat", 1, None),
        ("vehicle", 0, None),
        ("a big brown dog with a red collar", 1, "too_long"),
        ("a cat on a couch. A cat on a couch. A cat on a couch. A cat on a couch. A cat on a couch.", 3, "too_long"),
        ("a striped cat sleeping on a wooden bench", 3, None),
        # near p_3 "a dog on a couch": a restatement is its ancestor, an extension one of its children
        ("a dog is on a couch", 3, "ancestor"),
        ("a dog on the sofa", 3, "ancestor"),
        ("a dog on a couch in a sunny living room", 3, None),
    ],
)
def test_candidate_checks(tmp_path: Path, text: str, level: int, problem: str | None) -> None:
    stage = NegativesStage(tiny_config(**{"negatives.paraphrase_threshold": 0.8}), tmp_path)
    assert stage.candidate_problem(text, level, _sims([text])[0], POSITIVE) == problem


def test_negatives_are_siblings_not_positives_and_every_row_counted(tmp_path: Path) -> None:
    run_dir = _copy(tmp_path)
    manifest = NegativesStage(tiny_config(), run_dir).run()
    totals = manifest["totals"]
    assert totals["in"] == 60 == totals["accepted"] + totals["rejected"]
    assert totals["accepted"] > 0
    assert set(totals["reasons"]) <= {"no_valid_negative"}
    ordering_hash = json.loads((run_dir / "train-ordering" / "manifest.json").read_text())["model_hash"]
    for row in read_stage_rows(run_dir, "negatives"):
        assert len(row["negative"]) == 4 and all(n.strip() for n in row["negative"])
        positives = {dedup_key(p) for p in row["positive"]}
        assert not positives & {dedup_key(n) for n in row["negative"]}
        assert len(row["negative"][3].split()) >= 5
        assert row["ordering_model_hash"] == ordering_hash
    stats = manifest["stats"]
    assert len(stats["negative"]["words_mean"]) == 4 and len(stats["positive"]["containment"]) == 3
    assert stats["candidates_examined"] >= 4 * totals["accepted"]
    for reject in _rejects(run_dir):
        assert reject["reason"] == "no_valid_negative" and "level" in reject["detail"]


def test_same_seed_same_negatives_other_seed_other_negatives(tmp_path: Path) -> None:
    outputs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = _copy(tmp_path, name, rows=12)
        config = tiny_config()
        config = config.with_overrides({"seed": seed}) if seed else config
        stage = NegativesStage(config, run_dir)
        # train-ordering's fingerprint includes the seed, but the model on disk is the same one:
        # only the sampling seed differs between "a"/"b" and "c".
        stage.run()
        outputs[name] = {r["id"]: r["negative"] for r in read_stage_rows(run_dir, "negatives")}
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_a_retrained_model_redoes_the_shards(tmp_path: Path) -> None:
    run_dir = _copy(tmp_path)
    stage = NegativesStage(tiny_config(), run_dir)
    before = stage.fingerprint()
    manifest_path = run_dir / "train-ordering" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "model_hash": "0" * 16}))
    assert NegativesStage(tiny_config(), run_dir).fingerprint() != before


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_low_levels_keep_the_first_valid_sample_higher_levels_the_most_likely(tmp_path: Path, share: float) -> None:
    """The choice among one round's samples, replayed from the same seed: levels below
    `rank_from_level` take the first valid sample (a draw, not the mode), the others the valid
    sample with the highest mean log-probability — with `min_words_share`, among those with at
    least that share of p_k's words when there are any."""
    run_dir = _copy(tmp_path, rows=12)
    config = tiny_config(**{"negatives.rounds": 1, "negatives.rank_from_level": 3, "negatives.min_words_share": share})
    stage = NegativesStage(config, run_dir)
    rows = hierarchy_rows(12)
    with torch_threads(1):
        out = stage.process(rows, "shard-x")
        cfg = config.negatives
        keys = [(i, k) for i in range(len(rows)) for k in range(4)]
        samples = stage.model.scored([down_source(rows[i]["positive"][:k]) for i, k in keys], cfg.candidates,
                                     sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                     seed=_seed(config.seed, "shard-x", 0, 0))
        embedder = get_embedder("embedded:minilm", "cpu")
        chosen = {r["id"]: r["negative"] for r in out.rows}
        differs = {"first": 0, "length": 0}
        for (i, k), outs in zip(keys, samples):
            if rows[i]["id"] not in chosen:
                continue
            positive = rows[i]["positive"]
            sims = embedder.encode([t for t, _ in outs]) @ embedder.encode(positive).T
            valid = [(score, text) for (text, score), s in zip(outs, sims)
                     if stage.candidate_problem(text, k, s, positive) is None]
            long_enough = [pair for pair in valid if word_count(pair[1]) >= share * word_count(positive[k])]
            first, likeliest = valid[0][1], max(valid, key=lambda pair: pair[0])[1]
            ranked = max(long_enough or valid, key=lambda pair: pair[0])[1]
            assert chosen[rows[i]["id"]][k] == (first if k + 1 < 3 else ranked)
            differs["first"] += k + 1 < 3 and first != likeliest
            differs["length"] += k + 1 >= 3 and ranked != likeliest
    assert differs["first"] > 0  # the two rules disagree somewhere at levels 1-2: the test tells them apart
    assert (differs["length"] > 0) == (share > 0)  # the length preference changes some pick at levels 3-4


def test_level1_from_categories_is_a_seeded_sibling_no_positive_names(tmp_path: Path) -> None:
    """`level1_source: categories`: n_1 is one of the table's categories that no positive level
    names (never p_1, an ancestor or a descendant of it), drawn per row from the seed."""
    run_dir = _copy(tmp_path, rows=12)
    rows = hierarchy_rows(12)
    firsts = {}
    for seed in (0, 0, 1):
        config = tiny_config(**{"negatives.level1_source": "categories", "seed": seed})
        with torch_threads(1):
            out = NegativesStage(config, run_dir).process(rows, "shard-x")
        assert out.rows
        for row in out.rows:
            named = {p.lower() for p in row["positive"]}
            absent = hypernyms.absent_categories([w for p in row["positive"] for w in words(p)], named)
            assert row["negative"][0] in absent and row["negative"][0] != row["positive"][0]
        firsts.setdefault(seed, []).append({r["id"]: r["negative"][0] for r in out.rows})
    assert firsts[0][0] == firsts[0][1] and firsts[0][0] != firsts[1][0]
    assert len(set(firsts[0][0].values())) > 1  # a draw per row, not one category for all


def test_level1_categories_no_wordier_than_p1_come_first(tmp_path: Path) -> None:
    """The seeded order of n_1 candidates tries categories no wordier than p_1 before the others,
    and keeps every lexically valid absent category (a preference, not a filter)."""
    stage = NegativesStage(tiny_config(**{"negatives.level1_source": "categories"}), _copy(tmp_path, rows=12))
    for row in hierarchy_rows(12):
        options = stage.level1_categories(row)
        named = {p.lower() for p in row["positive"]}
        absent = hypernyms.absent_categories([w for p in row["positive"] for w in words(p)], named)
        assert sorted(options) == sorted(c for c in absent if stage.lexical_problem(c, 0, row["positive"]) is None)
        longer = [word_count(c) > word_count(row["positive"][0]) for c in options]
        assert 0 < sum(longer) < len(options) and longer == sorted(longer), row["positive"][0]


def test_level1_order_breadth_tries_categories_as_broad_as_p1_first(tmp_path: Path) -> None:
    """`level1_order: breadth`: the n_1 candidates are every valid absent category, the three whose
    breadth (table members under them) is nearest p_1's, no narrower ones before narrower ones,
    first in a seeded order, then the rest by that order; a p_1 the table has no breadth for (a
    head noun, "bear") keeps the words order."""
    run_dir = _copy(tmp_path, rows=12)
    breadth = hypernyms.category_sizes()
    base = hierarchy_rows(1)[0]
    firsts: dict[int, set[str]] = {}
    for p1 in ("animal", "person", "plumbing fixture", "furniture"):
        row = {**base, "positive": [p1, *base["positive"][1:]]}
        distance = lambda c: (breadth[c] < breadth[p1], abs(math.log(breadth[c]) - math.log(breadth[p1])))  # noqa: E731
        for seed in range(4):
            stage = NegativesStage(tiny_config(**{"negatives.level1_source": "categories", "negatives.level1_order":
                                                  "breadth", "seed": seed}), run_dir)
            options = stage.level1_categories(row)
            named = {p.lower() for p in row["positive"]}
            absent = hypernyms.absent_categories([w for p in row["positive"] for w in words(p)], named)
            assert sorted(options) == sorted(c for c in absent if stage.lexical_problem(c, 0, row["positive"]) is None)
            assert max(map(distance, options[:3])) <= min(map(distance, options[3:]))
            assert [distance(c) for c in options[3:]] == sorted(distance(c) for c in options[3:])
            firsts.setdefault(seed, set()).add(options[0])
    assert len({frozenset(f) for f in firsts.values()}) > 1  # the nearest three are drawn, not fixed
    row = {**base, "positive": ["bear", "brown bear", *base["positive"][2:]]}
    options = NegativesStage(tiny_config(**{"negatives.level1_source": "categories",
                                            "negatives.level1_order": "breadth"}), run_dir).level1_categories(row)
    longer = [word_count(c) > 1 for c in options]
    assert longer == sorted(longer) and 0 < sum(longer) < len(options)


def test_short_negatives_with_a_word_nobody_knows_are_refused(tmp_path: Path) -> None:
    """`known_word_levels: 2`: at levels 1-2 every word must be in the scorer's vocabulary, the
    run's positives or the hypernym table; longer levels are left to the fluency filter."""
    run_dir = _copy(tmp_path, rows=12)
    stage = NegativesStage(tiny_config(**{"negatives.known_word_levels": 2}), run_dir)
    assert stage.lexical_problem("roadassistant", 1, POSITIVE) == "unknown_word"
    assert stage.lexical_problem("pl := peoplee", 0, POSITIVE) == "unknown_word"
    assert stage.lexical_problem("A cat on a roadassistant couch.", 3, POSITIVE) is None  # level 4: not judged here
    assert stage.lexical_problem("giraffes", 1, POSITIVE) is None  # not MiniLM's, but the table's (and plural)
    assert stage.lexical_problem("brown horse", 1, POSITIVE) is None
    assert stage.is_known("trotting") and stage.lexical_problem("horse trotting", 1, POSITIVE) is None  # a positive's word
    assert NegativesStage(tiny_config(), run_dir).lexical_problem("roadassistant", 1, POSITIVE) is None  # off by default


def test_sampled_levels_that_loop_are_refused(tmp_path: Path) -> None:
    """`repeat_ngram: 3`: a level-3/4 candidate saying a run of three words twice is `repetitive`;
    levels 1-2 and texts that only share short words pass; off by default."""
    stage = NegativesStage(tiny_config(**{"negatives.repeat_ngram": 3}), tmp_path)
    loop = "a kitten in the light of a kitten in the light"
    assert stage.lexical_problem(loop, 2, POSITIVE) == "repetitive"
    assert stage.lexical_problem("A cat sits on a bench and a cat sits on a chair.", 3, POSITIVE) == "repetitive"
    assert stage.lexical_problem("A cat on a bench next to a bird on a wire.", 3, POSITIVE) is None
    assert stage.lexical_problem("cat cat cat cat", 1, POSITIVE) is None  # levels 1-2: the table's checks, not this one
    assert NegativesStage(tiny_config(), tmp_path).lexical_problem(loop, 2, POSITIVE) is None


def _level1_margins(options: list[str], level2: str, negative: str) -> dict[str, float]:
    """Ξ(o, n_1) − Ξ(o, p_2) for each option o, computed here from the geometry module."""
    embedder = get_embedder("embedded:minilm", "cpu")
    with torch_threads(1):
        vectors = torch.from_numpy(np.asarray(embedder.encode([*options, level2, negative])))
        root = torch.from_numpy(np.asarray(embedder.root()))
    margins = exterior_angle(vectors[:-2], vectors[-1], root) - exterior_angle(vectors[:-2], vectors[-2], root)
    return dict(zip(options, margins.tolist()))


def test_level1_pair_rechooses_p1_only_where_its_margin_is_not_positive(tmp_path: Path) -> None:
    """`level1_pair: margin`: a drawn p_1 the encoder does not see as containing p_2 beside n_1
    (margin ≤ 0) becomes the table option with the highest margin; a positive margin, a head-noun
    p_1 with no options, or an n_1 no option would make valid, leaves the row as it was."""
    caption = "A small white dog asleep on a grey couch."
    dog = ["dog", "a dog on a couch", caption]
    rows = [{"id": "low", "positive": ["organism", *dog]},
            {"id": "stuck", "positive": ["organism", *dog]},
            {"id": "high", "positive": ["pet", *dog]},
            {"id": "head", "positive": ["bear", "brown bear", "a brown bear in a river", "A brown bear in a river."]}]
    chosen = {(0, 0): "food", (1, 0): "canine", (2, 0): "food", (3, 0): "food"}
    options = level1_options("organism", "dog")
    margins, stuck = _level1_margins(options, "dog", "food"), _level1_margins(options, "dog", "canine")
    assert margins["organism"] <= 0 < margins["pet"] and stuck["organism"] <= 0  # the premise
    stage = NegativesStage(tiny_config(**{"negatives.level1_source": "categories", "negatives.level1_pair": "margin"}), tmp_path)
    # "canine" is near p_2 "dog" whatever p_1 is: no option makes it a valid n_1
    assert all(stage.candidate_problem("canine", 0, _sims(["canine"])[0], [o, *dog]) for o in options)
    with torch_threads(1):
        out, changed = stage.rechoose_level1(rows, chosen)
    assert out[0]["positive"] == [max(options, key=margins.get), *dog] and margins[out[0]["positive"][0]] > 0
    assert out[1] is rows[1] and out[2] is rows[2] and out[3] is rows[3] and changed == 1
    assert rows[0]["positive"][0] == "organism"  # the input rows are not changed in place


def test_level1_pair_in_the_stage_keeps_p1_among_the_table_options(tmp_path: Path) -> None:
    """The stage with `level1_pair: margin`: every released p_1 is the drawn one or another table
    option of p_2's head, n_1 is still no positive, and the re-chosen rows are counted."""
    run_dir = _copy(tmp_path, rows=12)
    # "organism": true of every animal, and often not seen by MiniLM as containing it
    rows = {r["id"]: {**r, "positive": ["organism", *r["positive"][1:]]} for r in hierarchy_rows(12)}
    config = tiny_config(**{"negatives.level1_source": "categories", "negatives.level1_pair": "margin"})
    with torch_threads(1):
        out = NegativesStage(config, run_dir).process(list(rows.values()), "shard-x")
    assert out.rows and "level1_rechosen" in out.stats
    moved = [r for r in out.rows if r["positive"][0] != rows[r["id"]]["positive"][0]]
    assert 0 < len(moved) == out.stats["level1_rechosen"]
    for row in moved:
        assert row["positive"][0] in level1_options(*rows[row["id"]]["positive"][:2])
        assert row["positive"][1:] == rows[row["id"]]["positive"][1:] and row["negative"][0] != row["positive"][0]


def test_fluent_tries_the_next_sample_where_the_filter_would_drop_the_row(tmp_path: Path) -> None:
    """`fluent`: a level-4 candidate that reads worse than the filter allows is refused
    (`not_fluent`, counted) and the next valid one taken; levels the filter does not judge, and the
    stage with the option off, keep the first valid candidate."""

    salad = 'a man" vegetable 1 blankets in a ) bedsc [ s.'
    sibling = "A black cat sitting on a wooden bench in a park."
    row = hierarchy_rows(1)[0] | {"positive": POSITIVE, "caption": POSITIVE[-1]}
    on = {"filter.fluency_model": "embedded:smollm2", "negatives.fluent": True}
    picks = {}
    for name, overrides in {"on": on, "off": {**on, "negatives.fluent": False}}.items():
        stage = NegativesStage(tiny_config(**overrides), tmp_path)
        queues = {(0, 3): [salad, sibling], (0, 2): ["a man vegetable blankets in bedsc", "a cat on a bench"]}
        chosen, problems = {}, {key: Counter() for key in queues}
        with torch_threads(1):
            stage._pick_by_similarity(list(queues), [row], queues, chosen, problems)
        picks[name] = (chosen, problems)
    f = tiny_config(**on).filter
    nll = get_fluency_scorer("embedded:smollm2", "cpu").nll([salad, sibling, POSITIVE[3]])
    assert reads_worse(nll[0], nll[2], f.max_negative_nll, f.max_nll_excess)  # the filter would drop the salad
    assert not reads_worse(nll[1], nll[2], f.max_negative_nll, f.max_nll_excess)
    chosen, problems = picks["on"]
    assert chosen[(0, 3)] == sibling and problems[(0, 3)]["not_fluent"] == 1
    assert chosen[(0, 2)] == "a man vegetable blankets in bedsc"  # level 3: not judged for fluency
    assert picks["off"][0] == {(0, 3): salad, (0, 2): "a man vegetable blankets in bedsc"}
    run_dir = _copy(tmp_path)
    fingerprint = {name: NegativesStage(tiny_config(**overrides, **{"filter.max_nll_excess": 2.0}), run_dir).fingerprint()
                   for name, overrides in {"on": on, "off": {}}.items()}
    assert fingerprint["on"] != NegativesStage(tiny_config(**on), run_dir).fingerprint()  # the rule is an input
    assert fingerprint["off"] == NegativesStage(tiny_config(), run_dir).fingerprint()
