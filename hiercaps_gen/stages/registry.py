"""The run's stages, in pipeline order, and the one fingerprint recipe they all use.

A stage's fingerprint is the hash of everything its output depends on: the seed, the config
values it reads (`reads`, less the operational keys in `ignores`) and the inputs that are not
config (upstream shard hashes, model hashes, the prompt's hash). A completed shard is reused only
under the same fingerprint, so a value left out of `reads` would let a changed config reuse stale
shards; `tests/test_registry.py` changes every value under each stage's `reads`, one at a time.

The CLI, the flows and release lineage read `STAGES`; this module imports no stage, so the
release package can read it without importing the pipeline.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiercaps_gen.config import RunConfig

# LLM settings that change how calls are made, not what they return: pointing at another server
# or raising concurrency does not redo finished abstract shards.
LLM_OPERATIONAL = ("base_urls", "api_key_env", "concurrency", "timeout_s", "max_retries", "gpu_memory_utilization",
                   "batch_size", "prefix_cache", "threads", "kv_cache_gib", "compile", "max_model_len")
# Abstract's checks, which distill re-applies to the ordering model's output.
ABSTRACT_CHECKS = ("max_level1_words", "min_overlap", "level1_check", "repair_level1", "head_level1", "embedding_check",
                   "embedding_min_tau", "embedding_encoder")


@dataclass(frozen=True)
class StageSpec:
    """One stage: its name, the config it reads, the stages it reads from, and where it lives."""

    name: str
    reads: tuple[str, ...]  # dotted config paths (a section or a single value)
    upstream: tuple[str, ...] = ()  # run stages whose outputs it reads
    ignores: tuple[str, ...] = ()  # dotted paths under `reads` that do not change the output
    entry: str = ""  # "module:attr": a ShardStage class, or a function (config, run_dir) -> fingerprint
    optional: str | None = None  # a boolean config path that turns the stage on

    def config_inputs(self, config: RunConfig) -> dict[str, Any]:
        """The config values this stage reads, by dotted path, with the ignored keys removed."""
        data = config.model_dump(mode="json")
        values = {path: _at(data, path) for path in self.reads}
        for ignored in self.ignores:
            owner = next(p for p in self.reads if ignored.startswith(p + "."))
            *parents, leaf = ignored[len(owner) + 1 :].split(".")
            node = values[owner] = json.loads(json.dumps(values[owner]))  # a copy: never edit the dump
            for key in parents:
                node = node[key]
            node.pop(leaf)
        return values

    def fingerprint(self, config: RunConfig, **inputs: Any) -> str:
        """sha256 (16 hex) of the seed, the config values read and the non-config `inputs`."""
        payload = {"seed": config.seed, "config": self.config_inputs(config), "inputs": inputs}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def enabled(self, config: RunConfig) -> bool:
        return self.optional is None or bool(_at(config.model_dump(mode="json"), self.optional))


def _at(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", reads=("ingest",), entry="hiercaps_gen.stages.ingest:fingerprint"),
    StageSpec("abstract", reads=("abstract",), upstream=("ingest",),
              ignores=tuple(f"abstract.llm.{key}" for key in LLM_OPERATIONAL),
              entry="hiercaps_gen.stages.abstract:AbstractStage"),
    StageSpec("train-ordering", reads=("ordering",), upstream=("abstract",),
              ignores=("ordering.distill", "ordering.threads"), entry="hiercaps_gen.stages.train_ordering:fingerprint"),
    StageSpec("distill", reads=("ordering", *(f"abstract.{key}" for key in ABSTRACT_CHECKS)),
              upstream=("abstract", "train-ordering"), ignores=("ordering.distill", "ordering.threads"),
              entry="hiercaps_gen.stages.distill:DistillStage",
              optional="ordering.distill"),
    StageSpec("negatives", reads=("negatives",), upstream=("abstract", "distill", "train-ordering"),
              ignores=("negatives.kv_cache_gib",), entry="hiercaps_gen.stages.negatives:NegativesStage"),
    StageSpec("filter", reads=("filter",), upstream=("negatives",), entry="hiercaps_gen.stages.filter:FilterStage"),
)
SPECS: dict[str, StageSpec] = {spec.name: spec for spec in STAGES}
NAMES: tuple[str, ...] = tuple(SPECS)


def current_fingerprint(name: str, config: RunConfig, run_dir: Path) -> str:
    """The fingerprint stage `name` would run under now (reads upstream manifests as the stage does)."""
    module, attr = SPECS[name].entry.split(":")
    target: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    if isinstance(target, type):
        return target(config, Path(run_dir)).fingerprint()
    return target(config, Path(run_dir))
