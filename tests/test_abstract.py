"""The abstract stage on a tiny real model: every caption accounted for, the LLM budget and length
limits applied before any call, seeded reruns identical, finished shards and paid calls reused."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from hiercaps_gen.stages.abstract import AbstractStage, run_abstract
from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.base import load_manifest, read_stage_rows

from .conftest import REPO
from .test_llm_helpers import build_tiny_model, sample_captions, write_ingest

CAPTIONS = sample_captions(60)[::6] + ["x" * 2500]  # 10 sample captions + one too long to prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m"))


def config(model: str, **abstract) -> RunConfig:
    # v1: its shorter prompt fits the tiny model's context (v2's twelve examples do not)
    overrides = {"abstract.llm.model": model, "abstract.llm.device": "cpu", "abstract.llm.batch_size": 4,
                 "abstract.llm.max_new_tokens": 8, "abstract.max_attempts": 2, "abstract.prompt": "abstract_v1"}
    return RunConfig().with_overrides({**overrides, **{f"abstract.{k}": v for k, v in abstract.items()}})


def rejects(run_dir):
    table = pq.read_table(sorted((run_dir / "abstract" / "rejects").glob("*.parquet")))
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_every_caption_is_accounted_for_with_reasons_and_totals(tmp_path, tiny):
    rows = write_ingest(tmp_path, CAPTIONS, shards=2)
    manifest = AbstractStage(config(tiny), tmp_path).run()
    totals, stats = manifest["totals"], manifest["stats"]
    assert totals["in"] == len(rows) == totals["accepted"] + totals["rejected"]
    ledger = rejects(tmp_path)
    ids = [r["id"] for r in ledger] + [r["id"] for r in read_stage_rows(tmp_path, "abstract")]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # each caption exactly once
    assert len({r["id"] for r in ledger}) == len(ledger) == totals["rejected"]
    assert totals["reasons"]["caption_too_long"] == 1
    # the random model never writes the answer format: every prompted caption tried twice, then rejected
    prompted = len(rows) - 1
    assert stats["prompts"] == stats["backend_prompts"] == 2 * prompted and stats["captions"] == len(rows)
    assert stats["generated_tokens"] > 0 and stats["prompt_tokens"] > 0
    for key in ("hierarchies_per_s", "tokens_per_s", "backend_tokens_per_s", "wall_seconds", "load_seconds"):
        assert key in stats
    assert manifest["stats"]["prompt_hash"] and manifest["stats"]["generator_model"].startswith(tiny)
    detail = json.loads(next(r for r in ledger if r["reason"] != "caption_too_long")["detail"])
    assert [d["attempt"] for d in detail] == ["1", "2"] and all(d["reason"] for d in detail)
    assert json.loads(ledger[0]["row"])["caption"] in CAPTIONS  # the input row itself is kept


def test_llm_budget_is_a_seeded_choice_made_before_any_call(tmp_path, tiny):
    write_ingest(tmp_path / "a", CAPTIONS[:10], shards=3)
    manifest = AbstractStage(config(tiny, llm_budget=3), tmp_path / "a").run()
    assert manifest["totals"]["reasons"]["beyond_llm_budget"] == 7
    assert manifest["stats"]["prompts"] == 3 * 2
    chosen = {r["id"] for r in rejects(tmp_path / "a") if r["reason"] != "beyond_llm_budget"}
    assert len(chosen) == 3
    write_ingest(tmp_path / "b", CAPTIONS[:10], shards=1)  # other sharding, same seed: same choice
    assert AbstractStage(config(tiny, llm_budget=3), tmp_path / "b").in_budget() == chosen
    other_seeds = {AbstractStage(config(tiny, llm_budget=3).with_overrides({"seed": s}), tmp_path / "b").in_budget()
                   for s in range(1, 4)}
    assert any(choice != chosen for choice in other_seeds)


def test_same_seed_same_rows_in_fresh_run_dirs(tmp_path, tiny):
    cfg = config(tiny, retry_temperature=1.0, candidates=2)
    for name in ("one", "two"):
        write_ingest(tmp_path / name, CAPTIONS[:4])
        AbstractStage(cfg, tmp_path / name).run()
    one, two = rejects(tmp_path / "one"), rejects(tmp_path / "two")
    assert one == two  # details hold every sampled answer, so the sampling was identical
    texts = [d["text"] for r in one for d in json.loads(r["detail"])]
    assert len(texts) == 4 * (1 + 1) * 2 and len(set(texts)) > 4  # retries drew new candidates


def test_rerun_skips_done_shards_and_reuses_paid_calls(tmp_path, tiny):
    write_ingest(tmp_path, CAPTIONS[:6], shards=2)
    first = AbstractStage(config(tiny), tmp_path).run()
    again = AbstractStage(config(tiny), tmp_path)
    assert again.run()["shards"] == first["shards"] and again.load_seconds == 0.0  # nothing loaded
    shutil.rmtree(tmp_path / "abstract" / "_done")
    redo = AbstractStage(config(tiny), tmp_path).run()
    assert redo["stats"]["backend_prompts"] == 0 and redo["stats"]["cache_hits"] == first["stats"]["prompts"]
    assert rejects(tmp_path) and redo["totals"] == first["totals"]


def test_fingerprint_ignores_how_calls_are_made_but_not_what_is_asked(tmp_path, tiny):
    base = AbstractStage(config(tiny), tmp_path).fingerprint()
    same = config(tiny).with_overrides({"abstract.llm.base_urls": ["http://x"], "abstract.llm.concurrency": 3,
                                        "abstract.llm.batch_size": 64})
    assert AbstractStage(same, tmp_path).fingerprint() == base
    assert AbstractStage(config(tiny, retry_temperature=0.2), tmp_path).fingerprint() != base
    prompt = tmp_path / "p.yaml"
    prompt.write_text((REPO / "prompts/abstract_v1.yaml").read_text(encoding="utf-8") + "\n# edited\n")
    assert AbstractStage(config(tiny, prompt=str(prompt)), tmp_path).fingerprint() != base


def test_isolated_run_in_a_child_process(tmp_path, tiny):
    write_ingest(tmp_path, CAPTIONS[:2])
    manifest = run_abstract(config(tiny, max_attempts=1), tmp_path, isolate=True)
    assert manifest == load_manifest(tmp_path, "abstract") and manifest["totals"]["in"] == 2


def test_answers_cut_off_at_max_new_tokens_are_counted_truncated(tmp_path, tiny):
    rows = write_ingest(tmp_path, CAPTIONS[:4], shards=1)
    manifest = AbstractStage(config(tiny, max_attempts=1), tmp_path).run()
    ledger = rejects(tmp_path)
    assert manifest["totals"]["in"] == len(rows) == len(ledger) + manifest["totals"]["accepted"]
    # 8 new tokens never reach the random model's end token: every answer stopped at the limit
    assert manifest["totals"]["reasons"] == {"truncated": len(rows)}
    assert all(json.loads(r["detail"])[0]["reason"] == "truncated" for r in ledger)
