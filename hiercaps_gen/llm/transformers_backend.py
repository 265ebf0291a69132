"""Local generation with transformers (CPU or GPU): the embedded default backend.

Speed on a small CPU comes from three things, in order: batching (prompts sorted by length, so
little padding), a shared-prefix KV cache (the few-shot part of every prompt is computed once and
reused by every batch; each caption's own tokens are left-padded after it), and greedy decoding.
Sampled requests use one seeded generator per row, so a row's text depends on its own seed, not
on which other rows share its batch.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from statistics import median

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, OnResult, Sampling, render_chat
from hiercaps_gen.llm.identity import model_identity
from hiercaps_gen.models import pick_device, resolve

MIN_PREFIX = 16  # shorter shared prefixes are not worth a cache copy per batch


class RowSampler(LogitsProcessor):
    """Per-row temperature / top-p sampling with per-row seeded generators; greedy rows untouched.

    It leaves exactly one finite score in a sampled row, so greedy decoding then picks the drawn
    token: greedy and sampled rows share one batch.
    """

    def __init__(self, samplings: Sequence[Sampling]) -> None:
        self.rows = [
            (row, s.temperature, s.top_p, torch.Generator().manual_seed(s.seed))
            for row, s in enumerate(samplings)
            if not s.greedy
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        scores = scores.clone()
        for row, temperature, top_p, generator in self.rows:
            probs = torch.softmax(scores[row].float().cpu() / temperature, dim=-1)
            ordered, order = torch.sort(probs, descending=True)
            keep = (ordered.cumsum(0) - ordered) < top_p  # the smallest head holding top_p, at least 1
            ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
            token = order[torch.multinomial(ordered / ordered.sum(), 1, generator=generator)]
            scores[row] = float("-inf")
            scores[row, token.to(scores.device)] = 0.0
        return scores


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all sequences share."""
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for index in range(length):
        token = first[index]
        if any(s[index] != token for s in sequences):
            return index
    return length


class TransformersGenerator(Generator):
    """A causal LM loaded from a directory, a hub id, or a GGUF file inside an installed package."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        prefix_cache: bool = True,
        threads: int | None = None,
    ) -> None:
        if threads is not None:  # process-wide: on a shared CPU, fewer threads avoid oversubscription
            torch.set_num_threads(threads)
        source = resolve(model)
        kwargs: dict = {}
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        if revision and not source.embedded:
            kwargs["revision"] = revision
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = _dtype(dtype, self.device)
        self.model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype, **kwargs)
        self.model.to(self.device).eval()
        self.model_id = model_identity(model, revision)
        self.batch_size = batch_size
        self.prefix_cache = prefix_cache
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(i for i in eos_ids if i is not None)
        self._prefix: tuple[tuple[int, ...], object] | None = None
        # transformers 5.2x calls the KV cache `cache`; earlier 5.x `past_key_values`
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def encode(self, request: GenerationRequest) -> list[int]:
        return self.tokenizer(render_chat(self.tokenizer, request), add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        encoded = [self.encode(r) for r in requests]
        runnable = []
        for index, (request, ids) in enumerate(zip(requests, encoded, strict=True)):
            needed = len(ids) + request.sampling.max_new_tokens
            if self.context is not None and needed > self.context:
                results[index] = Generation.failed(
                    f"prompt of {len(ids)} tokens + {request.sampling.max_new_tokens} new exceeds the context of {self.context}"
                )
                if on_result is not None:
                    on_result(index, results[index])
            else:
                runnable.append(index)
        if runnable:
            shared = common_prefix([encoded[i] for i in runnable]) if self.prefix_cache else 0
            shared = min(shared, min(len(encoded[i]) for i in runnable) - 1)
            shared = shared if shared >= MIN_PREFIX else 0
            for batch in self._batches(runnable, encoded, shared):
                outputs = self._generate_batch([requests[i] for i in batch], [encoded[i] for i in batch], shared)
                for index, generation in zip(batch, outputs, strict=True):
                    results[index] = generation
                    if on_result is not None:
                        on_result(index, generation)
        return [r for r in results if r is not None]

    def _batches(self, indices: list[int], encoded: list[list[int]], shared: int) -> list[list[int]]:
        """Longest first, so padding stays small; a very long prompt gets a smaller batch."""
        ordered = sorted(indices, key=lambda i: (-len(encoded[i]), i))
        budget = self.batch_size * 4 * max(8, int(median(len(encoded[i]) - shared for i in indices)))
        batches: list[list[int]] = []
        while ordered:
            longest = len(encoded[ordered[0]]) - shared
            size = max(1, min(self.batch_size, budget // max(1, longest)))
            batches.append(ordered[:size])
            ordered = ordered[size:]
        return batches

    def _prefix_cache(self, prefix: tuple[int, ...]):
        if self._prefix is None or self._prefix[0] != prefix:
            ids = torch.tensor([prefix], device=self.device)
            with torch.inference_mode():
                output = self.model(input_ids=ids, use_cache=True)
                self._prefix = (prefix, getattr(output, self._cache_arg))
        return self._prefix[1]

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest], encoded: list[list[int]], shared: int) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        prefix = encoded[0][:shared]
        tails = [ids[shared:] for ids in encoded]
        width = max(len(t) for t in tails)
        input_ids = torch.tensor([prefix + [pad] * (width - len(t)) + t for t in tails], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=self.device)
        kwargs: dict = {}
        if shared:
            cache = copy.deepcopy(self._prefix_cache(tuple(prefix)))
            cache.batch_repeat_interleave(len(tails))
            kwargs[self._cache_arg] = cache
        max_new = max(r.sampling.max_new_tokens for r in requests)
        out = self.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
            logits_processor=LogitsProcessorList([RowSampler([r.sampling for r in requests])]),
            eos_token_id=self.eos_ids, pad_token_id=pad, **kwargs,
        )
        results = []
        for row, request in enumerate(requests):
            new = out[row, input_ids.shape[1] :].tolist()[: request.sampling.max_new_tokens]
            stop = next((i for i, token in enumerate(new) if token in self.eos_ids), None)
            text_ids = new if stop is None else new[:stop]
            results.append(
                Generation(
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    prompt_tokens=len(encoded[row]),
                    completion_tokens=len(new) if stop is None else stop + 1,
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return results

    def close(self) -> None:
        self._prefix = None
        del self.model
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)
