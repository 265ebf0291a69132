"""distill: over-budget captions get positives from the specific→generic direction, validated
like LLM positives, and flow into the negatives stage beside the abstract shards."""

from __future__ import annotations

import shutil
from pathlib import Path

from hiercaps_gen import hierarchy
from hiercaps_gen.stages.distill import PREFIX, DistillStage
from hiercaps_gen.stages.negatives import NegativesStage
from hiercaps_gen.stages.base import (
    Reject, ShardOutput, read_stage_rows, shard_name, stage_dir, write_shard, write_stage_manifest,
)

from .test_ordering_data import hierarchy_rows, tiny_config, trained_run

HIERARCHY_REASONS = {"format", "empty_level", "duplicate_levels", "level1_too_long", "length_order", "not_contained",
                     "level1_not_generic"}


def _with_budget_rejects(tmp_path: Path) -> Path:
    """The trained run, its abstract stage rewritten: 8 hierarchies kept, 10 captions over budget."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run(), run_dir)
    shutil.rmtree(run_dir / "abstract")
    rows = hierarchy_rows(18)
    directory = stage_dir(run_dir, "abstract")
    records = []
    for i in range(2):
        kept = rows[i * 4 : i * 4 + 4]
        over = [{k: r[k] for k in hierarchy.CAPTION.names} for r in rows[8 + i * 5 : 8 + i * 5 + 5]]
        output = ShardOutput(kept, [Reject(r, "beyond_llm_budget", "llm_budget=8") for r in over])
        records.append(write_shard(directory, "abstract", shard_name(i), hierarchy.POSITIVE, output, 9, "test", None, 0.0))
    write_stage_manifest(directory, "abstract", "test", {}, records)
    return run_dir


def test_distilled_positives_are_validated_marked_and_reach_negatives(tmp_path: Path) -> None:
    run_dir = _with_budget_rejects(tmp_path)
    config = tiny_config(**{"ordering.distill": True})
    manifest = DistillStage(config, run_dir).run()
    totals = manifest["totals"]
    assert totals["in"] == 10 == totals["accepted"] + totals["rejected"]
    assert set(totals["reasons"]) <= HIERARCHY_REASONS
    assert [s["name"] for s in manifest["shards"]] == [PREFIX + "part-00000", PREFIX + "part-00001"]
    distilled = read_stage_rows(run_dir, "distill")
    for row in distilled:
        assert row["positive_origin"] == "distilled" and row["positive"][-1] == row["caption"]
        assert row["generator_model"].startswith("ordering:")
    negatives = NegativesStage(config, run_dir).run()
    assert negatives["totals"]["in"] == 8 + totals["accepted"]
    assert DistillStage(config, run_dir).run()["shards"] == manifest["shards"]  # rerun: nothing redone
