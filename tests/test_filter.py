"""filter: lexical checks, the offline RE-geometry scorer, the NLI code path; every drop explained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hiercaps_gen import hierarchy
from hiercaps_gen.config import FilterConfig
from hiercaps_gen.stages.filter import FilterStage, NLIScorer, lexical_problem
from hiercaps_gen.models import resolve
from hiercaps_gen.stages.negatives import NegativesStage
from hiercaps_gen.stages.base import read_stage_rows

from .test_ordering_data import positive_row, tiny_config, trained_run, write_stage

CAPTION = "A small white dog asleep on a grey couch."
POSITIVE = ["animal", "dog", "a dog on a couch", CAPTION]
NEGATIVE = ["vehicle", "cat", "a dog in a bathtub", "A large brown dog running across a beach at sunset."]


def negative_row(index: int, positive: list[str], negative: list[str]) -> dict:
    row = positive_row(index, positive)
    return {**row, "caption": CAPTION, "negative": negative, "ordering_model_hash": "test"}


CASES = {  # id suffix -> (positive, negative, expected reason)
    0: (POSITIVE, NEGATIVE, None),
    1: (["a small white dog asleep on a grey couch in a quiet living room", "a dog asleep on a couch", "dog", CAPTION],
        NEGATIVE, "positive_order"),
    2: (POSITIVE, ["vehicle", "cat", "a dog on the couch", NEGATIVE[3]], "negative_too_similar"),
    3: (POSITIVE, ["vehicle", "Dog", NEGATIVE[2], NEGATIVE[3]], "negative_equals_positive"),
    4: (["animal", "dog", "dog", CAPTION], NEGATIVE, "positive_not_refined"),
    5: (["animal", "dog", "a dog on a couch", "A dog."], NEGATIVE, "malformed"),
}


def test_lexical_checks() -> None:
    assert lexical_problem(negative_row(0, POSITIVE, NEGATIVE)) is None
    assert lexical_problem(negative_row(0, POSITIVE, NEGATIVE[:3]))[0] == "malformed"
    for index, (positive, negative, reason) in CASES.items():
        if reason in {"negative_equals_positive", "positive_not_refined", "malformed"}:
            assert lexical_problem(negative_row(index, positive, negative))[0] == reason


def test_every_drop_is_counted_with_its_reason(tmp_path: Path) -> None:
    rows = [negative_row(i, p, n) for i, (p, n, _) in CASES.items()]
    write_stage(tmp_path, "negatives", hierarchy.NEGATIVE, rows)
    manifest = FilterStage(tiny_config(), tmp_path).run()
    totals = manifest["totals"]
    expected = [reason for _, _, reason in CASES.values() if reason]
    assert totals["in"] == len(CASES) == totals["accepted"] + totals["rejected"]
    assert totals["reasons"] == {reason: expected.count(reason) for reason in expected}
    rejects = {r["id"]: r for p in sorted((tmp_path / "filter" / "rejects").glob("*.parquet"))
               for r in pq.read_table(p).to_pylist()}
    assert rejects["test-00001"]["detail"].startswith("tau=")
    assert "cosine" in rejects["test-00002"]["detail"]
    kept = read_stage_rows(tmp_path, "filter")
    assert [r["id"] for r in kept] == ["test-00000"]
    assert isinstance(kept[0]["filter_score"], float)
    assert manifest["stats"]["scorer"] == "embedding"


def test_stricter_threshold_drops_more(tmp_path: Path) -> None:
    rows = [negative_row(0, POSITIVE, NEGATIVE)]
    write_stage(tmp_path, "negatives", hierarchy.NEGATIVE, rows, shards=1)
    strict = FilterStage(tiny_config(**{"filter.max_negative_similarity": 0.1}), tmp_path).run()
    assert strict["totals"]["reasons"] == {"negative_too_similar": 1}


def test_positive_order_starts_at_level2_when_the_table_vouches_for_level1() -> None:
    """Zero-shot MiniLM puts "physical object" farther from the root than "sign": a level 1 the
    hypernym table vouches for is not judged by that, one it does not know still is."""
    from hiercaps_gen.geometry import kendall_tau, root_distance
    from hiercaps_gen.stages.filter import EmbeddingJudge

    caption = "A red stop sign covered in snow next to a road."
    vouched, unknown = (["physical object" if i == 0 else "solid physical stuff", "sign", "a stop sign covered in snow",
                         caption] for i in range(2))
    negative = ["food", "bench", "a bench in the park", "A wooden bench in a park on a sunny day."]
    judge = EmbeddingJudge(FilterConfig(), "cpu")
    vecs = judge.embedder.encode(vouched).reshape(1, 4, -1)
    assert float(kendall_tau(root_distance(vecs, judge.embedder.root()))[0]) < FilterConfig().min_positive_order
    assert hierarchy.level1_problem(vouched[0], "sign") is None and hierarchy.level1_problem(unknown[0], "sign")
    kept, dropped = judge.judge([vouched, unknown], [negative, negative])
    assert kept.reason is None
    assert dropped.reason == "positive_order" and "levels 1-4" in dropped.detail


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, untrained NLI cross-encoder saved like a hub one (labels as in the real models)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("nli")
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:minilm").path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "contradiction", 1: "entailment", 2: "neutral"})
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_nli_scorer_path_and_thresholds(tiny_nli: Path) -> None:
    lenient = NLIScorer(FilterConfig(nli_model=str(tiny_nli), nli_min_entailment=0.0,
                                     nli_max_negative_entailment=1.0), "cpu")
    probs = lenient.entailment([CAPTION, "a dog"], ["dog", "animal"])
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()
    verdicts = lenient.judge([POSITIVE, POSITIVE], [NEGATIVE, NEGATIVE])
    assert [v.reason for v in verdicts] == [None, None] and -1 <= verdicts[0].score <= 1
    strict = NLIScorer(FilterConfig(nli_model=str(tiny_nli), nli_min_entailment=1.0), "cpu")
    verdict = strict.judge([POSITIVE], [NEGATIVE])[0]
    assert verdict.reason == "positive_not_entailed" and "entails level" in verdict.detail


def test_nli_model_without_entailment_label_is_refused(tiny_nli: Path, tmp_path: Path) -> None:
    import json

    shutil.copytree(tiny_nli, tmp_path / "nli")
    config_path = tmp_path / "nli" / "config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = {"0": "negative", "1": "positive", "2": "neutral"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="entailment"):
        NLIScorer(FilterConfig(nli_model=str(tmp_path / "nli")), "cpu")


def test_pipeline_abstract_to_filter_accounts_for_every_row(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run(), run_dir)
    config = tiny_config()
    negatives = NegativesStage(config, run_dir).run()
    filtered = FilterStage(config, run_dir).run()
    assert negatives["totals"]["in"] == 60 == negatives["totals"]["accepted"] + negatives["totals"]["rejected"]
    assert negatives["totals"]["accepted"] > 0
    assert filtered["totals"]["in"] == negatives["totals"]["accepted"]
    assert filtered["totals"]["in"] == filtered["totals"]["accepted"] + filtered["totals"]["rejected"]
    for row in read_stage_rows(run_dir, "filter"):
        assert row["positive"][3] == row["caption"] and len(row["negative"]) == 4
        assert all(n != p for n, p in zip(row["negative"], row["positive"]))
