"""distill: positives for captions beyond the LLM budget, written by the ordering model.

The abstract stage rejects captions outside `abstract.llm_budget` with reason "beyond_llm_budget"
(the caption row is JSON in the reject ledger). This stage reads those rows, asks the trained
ordering model's specific→generic direction for "p3 => p2 => p1", and puts the result through
the same checks as LLM positives (`hierarchy.validate_hierarchy`, plus the root-distance order
when `abstract.embedding_check` is on). Accepted rows are hierarchy.POSITIVE rows with
positive_origin "distilled" and the ordering model's hash as their generator; shards are named
"distilled-part-NNNNN" so the negatives stage can take them beside the abstract shards
(`ordering.distill: true`).
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hiercaps_gen import hierarchy
from hiercaps_gen.config import RunConfig
from hiercaps_gen.encoders import EmbeddingScorer
from hiercaps_gen.geometry import shows_order
from hiercaps_gen.hierarchy import Checks, HierarchyInvalid, validate_hierarchy
from hiercaps_gen.ordering.generate import OrderingModel, trained_model_hash
from hiercaps_gen.ordering.model import torch_threads
from hiercaps_gen.ordering.tasks import parse_up
from hiercaps_gen.files import verify
from hiercaps_gen.stages.base import (
    Reject, Resources, ShardOutput, ShardStage, StageError, completed_record, stage_dir, write_shard,
)

BUDGET_REASON = "beyond_llm_budget"
PREFIX = "distilled-"
PROMPT_VERSION = "ordering-specific-to-generic"


class DistillStage(ShardStage):
    name = "distill"
    input_stage = "abstract"
    config_section = "ordering"
    output_schema = hierarchy.POSITIVE

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        """A GPU when the model runs on `cuda`: on a mixed cluster such shards go to GPU workers only."""
        return Resources(cpus=1, memory_gb=2.0).on(self.config.ordering.device)

    def ordering_hash(self) -> str:
        return trained_model_hash(self.run_dir)

    def fingerprint_inputs(self) -> dict[str, Any]:
        """The model that writes (the checks that judge, abstract's, are in the registry's `reads`)."""
        return {"ordering_model": self.ordering_hash()}

    @cached_property
    def model(self) -> OrderingModel:
        return OrderingModel.from_run(self.run_dir, self.config.ordering.device)

    def budget_rows(self, upstream: dict[str, Any]) -> list[dict[str, Any]]:
        """The caption rows that one abstract shard left to distillation."""
        path = stage_dir(self.run_dir, self.input_stage) / upstream["rejects"]["path"]
        if not verify(path, upstream["rejects"]["sha256"]):
            raise StageError(f"{path} does not match the abstract manifest; rerun 'abstract'")
        return [json.loads(r["row"]) for r in pq.read_table(path).to_pylist() if r["reason"] == BUDGET_REASON]

    def run_shard(self, upstream: dict[str, Any]) -> dict[str, Any]:
        """Like ShardStage.run_shard, but the input is the abstract shard's budget rejects."""
        name, input_sha = PREFIX + upstream["name"], upstream["rejects"]["sha256"]
        done = completed_record(self.directory, name, self.fingerprint(), input_sha)
        if done is not None:
            return done
        rows = self.budget_rows(upstream)
        start = time.perf_counter()
        output = self.process(rows, name)
        return write_shard(
            self.directory, self.name, name, self.output_schema, output, in_rows=len(rows),
            fingerprint=self.fingerprint(), input_sha256=input_sha, seconds=time.perf_counter() - start,
        )

    def process(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        with torch_threads(self.config.ordering.threads):
            return self._distill(rows)

    def _distill(self, rows: list[dict[str, Any]]) -> ShardOutput:
        a = self.config.abstract
        checks = Checks(a.max_level1_words, a.min_overlap, a.level1_check, a.repair_level1, a.head_level1)
        size = self.config.ordering.batch_size
        captions = [r["caption"] for r in rows]
        texts = [t for s in range(0, len(rows), size) for t in self.model.ancestors(captions[s : s + size])]
        candidates, rejects = [], []
        for row, text in zip(rows, texts):
            levels = parse_up(text)
            if levels is None:
                rejects.append(Reject(row, "format", f"not 'level 3 => level 2 => level 1': {text!r}"))
                continue
            try:
                candidates.append((row, validate_hierarchy(levels, row["caption"], checks).levels))
            except HierarchyInvalid as exc:
                rejects.append(Reject(row, exc.reason, f"{exc.detail}; output {text!r}"))
        if a.embedding_check and candidates:
            scorer = EmbeddingScorer(a.embedding_encoder, self.config.ordering.device)
            taus = scorer.taus([levels for _, levels in candidates])
            kept = []
            for (row, levels), tau in zip(candidates, taus):
                if not shows_order(tau, a.embedding_min_tau):
                    detail = f"root-distance tau {tau:.2f} < {a.embedding_min_tau}"
                    rejects.append(Reject(row, "embedding_order", detail))
                else:
                    kept.append((row, levels))
            candidates = kept
        model_hash = self.model.model_hash
        accepted = [
            {**{k: row[k] for k in hierarchy.CAPTION.names}, "positive": list(levels), "positive_origin": "distilled",
             "generator_model": f"ordering:{model_hash}", "prompt_version": PROMPT_VERSION, "prompt_hash": model_hash,
             "seed": self.config.seed, "attempts": 1}
            for row, levels in candidates
        ]
        return ShardOutput(accepted, rejects, {"captions": float(len(rows))})


def distill(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Entry point: distil positives for the run's over-budget captions; returns the manifest."""
    return DistillStage(config, run_dir).run()
