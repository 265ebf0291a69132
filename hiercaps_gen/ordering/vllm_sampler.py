"""The run's causal ordering model sampled through vLLM: the abstract stage's engine, on other weights.

transformers' `generate` pads every batch to its longest sample and decodes step by step in Python;
the negatives stage asks for thousands of short sampled continuations (4 levels × candidates per
row), which is what vLLM's continuous batching is for. Same prompts as training and as the
transformers path (`ordering.model.prompt_ids`), same cleaning of outputs, same score: the mean
log-probability of the sampled tokens (vLLM's raw log-probs, before temperature and top-p).
Only decoder-only ordering models (the SmolLM2 default) are served this way; encoder-decoder ones
(FLAN-T5 on a GPU node) sample through transformers (`negatives.engine: transformers`).
The engine is held per worker process (`llm/pool.py`) and closed when the stage ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm import pool
from hiercaps_gen.ordering.model import prompt_ids


class OrderingEngine:
    """A `vllm.LLM` over a trained ordering model directory (`llm.model`) and its tokenizer."""

    def __init__(self, llm: LLMConfig) -> None:
        from hiercaps_gen.llm.vllm_backend import build_llm

        self.llm = build_llm(llm, llm.model)
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        from hiercaps_gen.llm.vllm_backend import shutdown_llm

        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown_llm(llm)


def engine_config(model_dir: Path, max_source_len: int, max_target_len: int, *, device: str = "auto",
                  max_seqs: int = 256, kv_cache_gib: int = 1, threads: int | None = None,
                  reproducible: bool = False) -> LLMConfig:
    """The vLLM settings of an ordering engine: a context just long enough for a prompt and its
    continuation (a smaller KV cache per sequence, so more sequences run at once)."""
    return LLMConfig(backend="vllm", model=str(model_dir), device=device, batch_size=min(max_seqs, 1024),
                     max_new_tokens=max_target_len, kv_cache_gib=kv_cache_gib, threads=threads,
                     max_model_len=max_source_len + max_target_len + 8, reproducible=reproducible)


@dataclass
class VLLMOrderingModel:
    """`OrderingModel`'s sampling interface (`scored`, `generate`) on a pooled vLLM engine."""

    llm_config: LLMConfig
    model_hash: str
    max_source_len: int
    max_target_len: int

    @classmethod
    def from_run(cls, run_dir: Path, *, device: str = "auto", max_seqs: int = 256, kv_cache_gib: int = 1,
                 threads: int | None = None, reproducible: bool = False) -> VLLMOrderingModel:
        """The run's trained ordering model (the engine starts on first use)."""
        from hiercaps_gen.ordering.generate import TRAIN_STAGE, model_dir
        from hiercaps_gen.stages.base import load_manifest

        manifest = load_manifest(run_dir, TRAIN_STAGE)
        directory = model_dir(run_dir)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if config.get("is_encoder_decoder"):
            raise ValueError(f"{manifest['base_model']} is an encoder-decoder model: vLLM samples decoder-only "
                             "ordering models only; set `negatives.engine: transformers`")
        source, target = manifest["config"]["max_source_len"], manifest["config"]["max_target_len"]
        llm = engine_config(directory, source, target, device=device, max_seqs=max_seqs,
                            kv_cache_gib=kv_cache_gib, threads=threads, reproducible=reproducible)
        return cls(llm, manifest["model_hash"], source, target)

    @property
    def engine(self) -> OrderingEngine:
        return pool.acquire(self.llm_config, OrderingEngine)

    def close(self) -> None:
        pool.close(self.llm_config, OrderingEngine)

    def generate(self, sources: list[str], n: int = 1, *, sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0) -> list[list[str]]:
        scored = self.scored(sources, n, sample=sample, temperature=temperature, top_p=top_p, seed=seed)
        return [[text for text, _ in outs] for outs in scored]

    def scored(self, sources: list[str], n: int = 1, *, sample: bool = False, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0) -> list[list[tuple[str, float]]]:
        """`n` outputs per source, each with its mean token log-probability."""
        from hiercaps_gen.ordering.generate import clean_output

        outputs = self.completions(sources, n, sample=sample, temperature=temperature, top_p=top_p, seed=seed)
        return [[(clean_output(c.text), (c.cumulative_logprob or 0.0) / max(len(c.token_ids), 1)) for c in outs]
                for outs in outputs]

    def completions(self, sources: list[str], n: int = 1, *, sample: bool = False, temperature: float = 1.0,
                    top_p: float = 1.0, seed: int = 0) -> list[list[Any]]:
        """vLLM's completions (text, token_ids, cumulative_logprob) per source. Source i samples under
        seed `seed + i`: a batch's outputs do not depend on how vLLM schedules it."""
        if not sources:
            return []
        import vllm
        from vllm.inputs import TokensPrompt

        engine = self.engine
        prompts = [TokensPrompt(prompt_token_ids=ids)
                   for ids in prompt_ids(engine.tokenizer, sources, self.max_source_len)]
        params = [vllm.SamplingParams(n=n, temperature=temperature if sample else 0.0, top_p=top_p if sample else 1.0,
                                      seed=seed + i, max_tokens=self.max_target_len, logprobs=0)
                  for i in range(len(sources))]
        return [list(out.outputs) for out in engine.llm.generate(prompts, params, use_tqdm=False)]
