"""The `abstract` stage: an LLM writes levels 1–3 of each caption's positive hierarchy.

Per shard, every caption still without a valid hierarchy is sent in one `generate` call per
attempt (so vLLM and the batched transformers backend see the whole shard at once). Attempt 1 is
greedy at the configured temperature; later attempts sample with `retry_temperature` and seeds
derived from the run seed, the row id, the attempt and the candidate, so a rerun gives the same
rows. Answers are parsed and checked (`hierarchy.py`); what never passes goes to the reject ledger
with the reason of its last failure. All calls go through a content-addressed cache under the run
directory, so a resumed or repeated run does not pay for a call twice.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from hiercaps_gen.config import RunConfig
from hiercaps_gen.encoders import EmbeddingScorer
from hiercaps_gen.geometry import shows_order
from hiercaps_gen.hierarchy import (
    LEVELS, POSITIVE, Checks, HierarchyInvalid, PositiveHierarchy, clean_level, validate_hierarchy, words,
)
from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, Sampling
from hiercaps_gen.llm.cache import CachedGenerator, LLMCache
from hiercaps_gen.llm.identity import model_identity
from hiercaps_gen.llm.prompts import PromptError, load_prompt, parse_answer
from hiercaps_gen.stages.base import Reject, Resources, ShardOutput, ShardStage, StageError, load_manifest, stage_dir

CACHE_FILE = "cache.sqlite"
# cache_hits / cached_tokens: answers the stage's response cache gave; prefix_cached_tokens: prompt
# tokens the engine's prefix cache served (vLLM), i.e. prefill the shared few-shot prefix saved
STAT_KEYS = ("captions", "prompts", "backend_prompts", "cache_hits", "prompt_tokens", "prefix_cached_tokens",
             "generated_tokens", "cached_tokens", "generate_seconds", "repaired_level1")


def derive_seed(seed: int, row_id: str, attempt: int, candidate: int) -> int:
    digest = hashlib.sha256(f"{seed}:{row_id}:{attempt}:{candidate}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class AbstractStage(ShardStage):
    """Caption shards → positive hierarchies (level 4 = caption, levels 1–3 by the LLM)."""

    name = "abstract"
    input_stage = "ingest"
    config_section = "abstract"
    output_schema = POSITIVE

    def __init__(self, config: RunConfig, run_dir: Path, generator: Generator | None = None) -> None:
        super().__init__(config, run_dir)
        self.settings = config.abstract
        self.template = load_prompt(self.settings.prompt)
        self.checks = Checks(self.settings.max_level1_words, self.settings.min_overlap, self.settings.level1_check,
                             self.settings.repair_level1, self.settings.head_level1)
        llm = self.settings.llm  # an engine in this process needs a GPU unless told `cpu` (auto: vLLM's GPU)
        device = "cpu" if llm.backend == "openai" else llm.device if llm.device != "auto" else "cuda" if llm.backend == "vllm" else "cpu"
        self.resources = Resources(cpus=2, memory_gb=4.0).on(device)
        self.model_id = model_identity(self.settings.llm.model, self.settings.llm.revision)
        self._backend = generator
        self._owns_backend = generator is None
        self._generator: Generator | None = None
        self._scorer: EmbeddingScorer | None = None
        self._budget: frozenset[str] | None = None
        self._lock = threading.Lock()  # shards may run on a thread pool: load the model once
        self._started = time.perf_counter()
        self.load_seconds = 0.0

    def fingerprint_inputs(self) -> dict[str, Any]:
        """The prompt file's hash and the generator's identity (a weights hash for local models)."""
        return {"prompt_hash": self.template.hash, "generator_model": self.model_id}

    # -- resources -----------------------------------------------------------------------------

    @property
    def generator(self) -> Generator:
        """The backend (loaded on first use, so a fully resumed run loads nothing), cached."""
        with self._lock:
            if self._generator is None:
                if self._backend is None:  # one per worker process, shared by its shards (llm/pool.py)
                    from hiercaps_gen.llm import pool

                    start = time.perf_counter()
                    self._backend = pool.acquire(self.settings.llm)
                    self.load_seconds += time.perf_counter() - start
                self._generator = self._backend
                if self.settings.cache:
                    self._generator = CachedGenerator(self._backend, LLMCache(self.directory / CACHE_FILE))
            return self._generator

    @property
    def scorer(self) -> EmbeddingScorer:
        if self._scorer is None:
            self._scorer = EmbeddingScorer(self.settings.embedding_encoder)
        return self._scorer

    def close(self) -> None:
        """Free the backend (GPU memory) and the cache connection."""
        if isinstance(self._generator, CachedGenerator):
            self._generator.cache.close()
        if self._backend is not None and self._owns_backend:
            from hiercaps_gen.llm import pool

            pool.close(self.settings.llm)
            self._backend = None
        self._generator = None

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to a worker (Dask) without models or connections: the worker loads its own."""
        state = {**self.__dict__, "_lock": None, "_generator": None, "_scorer": None}
        if self._owns_backend:
            state["_backend"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    # -- budget ----------------------------------------------------------------------------------

    def in_budget(self) -> frozenset[str] | None:
        """Ids of the captions the LLM may see: the `llm_budget` lowest seeded hashes of all ids."""
        if self.settings.llm_budget is None:
            return None
        if self._budget is None:
            ids: list[str] = []
            for entry in self.shards():
                path = stage_dir(self.run_dir, self.input_stage) / entry["output"]["path"]
                ids.extend(pq.read_table(path, columns=["id"]).column("id").to_pylist())
            rank = sorted(ids, key=lambda i: (hashlib.sha256(f"{self.config.seed}:{i}".encode()).hexdigest(), i))
            self._budget = frozenset(rank[: self.settings.llm_budget])
        return self._budget

    # -- one shard -------------------------------------------------------------------------------

    def request(self, row: dict[str, Any], attempt: int, candidate: int) -> GenerationRequest:
        llm = self.settings.llm
        first = attempt == 1 and candidate == 0
        sampling = Sampling(
            max_new_tokens=llm.max_new_tokens,
            temperature=llm.temperature if first else self.settings.retry_temperature,
            top_p=llm.top_p,
            seed=derive_seed(self.config.seed, row["id"], attempt, candidate),
        )
        regex = self.template.answer_regex(row["caption"]) if llm.structured_output else None
        return GenerationRequest(self.template.messages(row["caption"]), sampling, regex)

    def judge(self, row: dict[str, Any], generation: Generation) -> PositiveHierarchy | HierarchyInvalid:
        """The checked hierarchy of `row`'s caption, or why this answer is not one."""
        if generation.error is not None:
            return HierarchyInvalid("llm_error", generation.error)
        if generation.finish_reason == "length":  # cut off at max_new_tokens: its last level may be half a phrase
            return HierarchyInvalid("truncated", f"stopped at the {self.settings.llm.max_new_tokens}-token limit")
        try:
            levels = parse_answer(generation.text, self.template.answer_order)
            draw = self.settings.draw_level1  # attempt 0 seeds the draw: generation attempts count from 1
            seed = derive_seed(self.config.seed, row["id"], 0, 0) if draw else None
            return validate_hierarchy(levels, row["caption"], self.checks, level1_seed=seed)
        except PromptError as exc:
            return HierarchyInvalid("format", str(exc))
        except HierarchyInvalid as exc:
            return exc

    def process(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        stats: Counter[str] = Counter({key: 0 for key in STAT_KEYS})
        stats["captions"] = len(rows)
        rejects: list[Reject] = []
        budget = self.in_budget()
        pending: list[dict[str, Any]] = []
        for row in rows:
            if budget is not None and row["id"] not in budget:
                rejects.append(Reject(row, "beyond_llm_budget", f"llm_budget={self.settings.llm_budget}"))
            elif len(row["caption"]) > self.settings.max_caption_chars:
                rejects.append(Reject(row, "caption_too_long", f"{len(row['caption'])} > {self.settings.max_caption_chars} chars"))
            else:
                pending.append(row)
        accepted: dict[str, dict[str, Any]] = {}
        failures: dict[str, list[dict[str, str]]] = {row["id"]: [] for row in pending}
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                break
            pending = self._attempt(pending, attempt, shard, accepted, failures, stats)
        for row in pending:
            last = failures[row["id"]][-1]
            rejects.append(Reject(row, last["reason"], json.dumps(failures[row["id"]], ensure_ascii=False)))
        out = [accepted[row["id"]] for row in rows if row["id"] in accepted]
        return ShardOutput(rows=out, rejects=rejects, stats={k: float(v) for k, v in stats.items()})

    def _attempt(
        self, pending: list[dict[str, Any]], attempt: int, shard: str, accepted: dict[str, dict[str, Any]],
        failures: dict[str, list[dict[str, str]]], stats: Counter[str],
    ) -> list[dict[str, Any]]:
        """One generate call for every pending row; returns the rows still without a hierarchy."""
        candidates = self.settings.candidates
        requests = [self.request(row, attempt, c) for row in pending for c in range(candidates)]
        with tqdm(total=len(requests), desc=f"abstract {shard} attempt {attempt}", unit="prompt", leave=False) as bar:
            start = time.perf_counter()
            generations = self.generator.generate(requests, on_result=lambda _i, _g: bar.update(1))
            stats["generate_seconds"] += time.perf_counter() - start
        for generation in generations:
            stats["prompts"] += 1
            stats["cache_hits" if generation.cached else "backend_prompts"] += 1
            stats["cached_tokens" if generation.cached else "generated_tokens"] += generation.completion_tokens
            stats["prompt_tokens"] += generation.prompt_tokens
            if not generation.cached:
                stats["prefix_cached_tokens"] += generation.prefix_cached_tokens
        verdicts = [self.judge(pending[i // candidates], g) for i, g in enumerate(generations)]
        scores = self._scores(verdicts)
        still: list[dict[str, Any]] = []
        for r, row in enumerate(pending):
            options = range(r * candidates, (r + 1) * candidates)
            valid = [i for i in options if isinstance(verdicts[i], PositiveHierarchy) and scores[i] is not None]
            if not valid:
                for i in options:
                    verdict = verdicts[i]
                    reason = verdict.reason if isinstance(verdict, HierarchyInvalid) else "embedding_order"
                    detail = verdict.detail if isinstance(verdict, HierarchyInvalid) else f"root-distance tau below {self.settings.embedding_min_tau}"
                    failures[row["id"]].append({"attempt": str(attempt), "reason": reason, "detail": detail[:300],
                                                "text": generations[i].text[:300]})
                still.append(row)
                continue
            best = max(valid, key=lambda i: (scores[i], -i))
            hierarchy = verdicts[best]
            assert isinstance(hierarchy, PositiveHierarchy)
            stats[f"accepted_attempt_{attempt}"] += 1
            if hierarchy.levels[0] != clean_level(parse_answer(generations[best].text, self.template.answer_order)[0]):
                stats["repaired_level1"] += 1  # a hypernym-table category replaced the LLM's level 1 (repair or draw)
            accepted[row["id"]] = {
                **{key: row[key] for key in ("id", "source", "source_id", "image_id", "image_url", "caption")},
                "positive": list(hierarchy.levels), "positive_origin": "llm", "generator_model": self.model_id,
                "prompt_version": self.template.name, "prompt_hash": self.template.hash,
                "seed": requests[best].sampling.seed, "attempts": attempt,
            }
        return still

    def _scores(self, verdicts: list[PositiveHierarchy | HierarchyInvalid]) -> list[float | None]:
        """Ranking score per valid candidate (None: fails the embedding order check)."""
        scores: list[float | None] = [v.lexical_score() if isinstance(v, PositiveHierarchy) else None for v in verdicts]
        if self.settings.embedding_check:
            valid = [i for i, v in enumerate(verdicts) if isinstance(v, PositiveHierarchy)]
            taus = self.scorer.taus([verdicts[i].levels for i in valid])  # type: ignore[union-attr]
            for i, tau in zip(valid, taus, strict=True):
                scores[i] = (scores[i] or 0.0) + tau if shows_order(tau, self.settings.embedding_min_tau) else None
        return scores

    # -- accounting ------------------------------------------------------------------------------

    def summarize(self, rows: list[dict[str, Any]], stats: dict[str, float]) -> dict[str, Any]:
        seconds = stats.get("seconds", 0.0)
        generate_seconds = stats.get("generate_seconds", 0.0)
        summary: dict[str, Any] = {
            "generator_model": self.model_id,
            "prompt_version": self.template.name,
            "prompt_hash": self.template.hash,
            "backend": self.settings.llm.backend,
            "hierarchies_per_s": len(rows) / seconds if seconds else None,
            "tokens_per_s": stats.get("generated_tokens", 0.0) / seconds if seconds else None,
            "backend_tokens_per_s": stats.get("generated_tokens", 0.0) / generate_seconds if generate_seconds else None,
            "mean_words_per_level": [
                round(sum(len(words(r["positive"][k])) for r in rows) / len(rows), 3) if rows else None
                for k in range(LEVELS)
            ],
        }
        summary["load_seconds"] = self.load_seconds
        summary["wall_seconds"] = time.perf_counter() - self._started  # since the stage was set up
        return summary


def _run_in_child(config_json: str, run_dir: str) -> None:
    AbstractStage(RunConfig.model_validate_json(config_json), Path(run_dir)).run()


def run_abstract(config: RunConfig, run_dir: Path, isolate: bool | None = None) -> dict[str, Any]:
    """Run the stage; with vLLM (or `isolate=True`) in a child process, whose exit returns all GPU memory."""
    if isolate is None:
        isolate = config.abstract.llm.backend == "vllm"
    if not isolate:
        return AbstractStage(config, run_dir).run()
    process = multiprocessing.get_context("spawn").Process(target=_run_in_child, args=(config.model_dump_json(), str(run_dir)))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise StageError(f"abstract stage failed in its child process (exit code {process.exitcode})")
    return load_manifest(Path(run_dir), "abstract")
