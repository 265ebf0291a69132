"""`abstract` with the embedded default model (SmolLM2-135M, GGUF) on sample and hostile captions:
accepted rows are well-formed hierarchies whatever the caption said, the rest are rejected with a
reason, and a rerun is answered by the cache alone."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from hiercaps_gen.stages.abstract import AbstractStage
from hiercaps_gen.config import RunConfig
from hiercaps_gen.hierarchy import validate_hierarchy
from hiercaps_gen.llm.prompts import load_prompt

from .test_llm_helpers import sample_captions, write_ingest
from .test_llm_prompts import HOSTILE

pytestmark = pytest.mark.slow


def test_sample_and_hostile_captions(tmp_path):
    captions = sample_captions(100)[::12] + HOSTILE  # 9 sample + 7 hostile (one of 10,000 characters)
    rows = write_ingest(tmp_path, captions, shards=1)
    config = RunConfig().with_overrides({"abstract.llm.device": "cpu", "abstract.max_attempts": 2})
    manifest = AbstractStage(config, tmp_path).run()
    totals = manifest["totals"]
    assert totals["in"] == len(rows) == totals["accepted"] + totals["rejected"]
    assert totals["reasons"].get("caption_too_long") == 1  # the 10,000 characters never reach the LLM
    assert totals["accepted"] >= 4  # the 135M model does write hierarchies for plain captions
    template = load_prompt(config.abstract.prompt)
    out = pq.read_table(tmp_path / "abstract" / "part-00000.parquet").to_pylist()
    for row in out:
        positive = row["positive"]
        assert len(positive) == 4 and positive[3] == row["caption"]
        assert not any("\n" in level or "level" in level.lower().split() for level in positive[:3])
        validate_hierarchy(positive[:3], row["caption"])  # still passes every check
        assert row["prompt_hash"] == template.hash and row["positive_origin"] == "llm"
        assert row["generator_model"].startswith("embedded:smollm2@") and 1 <= row["attempts"] <= 2
    ledger = pq.read_table(tmp_path / "abstract" / "rejects" / "part-00000.parquet").to_pylist()
    assert all(r["reason"] for r in ledger)
    by_id = {r["id"]: r["caption"] for r in rows}
    hostile_ids = {i for i, c in by_id.items() if c in HOSTILE}
    assert hostile_ids <= {r["id"] for r in out} | {r["id"] for r in ledger}
    stats = manifest["stats"]
    assert stats["generated_tokens"] > 0 and stats["hierarchies_per_s"] > 0 and len(stats["mean_words_per_level"]) == 4

    shutil.rmtree(tmp_path / "abstract" / "_done")
    again = AbstractStage(config, tmp_path).run()
    assert again["stats"]["backend_prompts"] == 0 and again["totals"] == totals
    assert pq.read_table(tmp_path / "abstract" / "part-00000.parquet").to_pylist() == out
