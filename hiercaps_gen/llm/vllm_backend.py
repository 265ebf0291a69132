"""In-process vLLM: a whole shard per `LLM.generate` call (continuous batching), prefix caching on.

vLLM is a GPU-only extra, imported only when this backend is built, so the module imports
cleanly without it. Request building is plain data (`sampling_spec`), unit-tested without a GPU;
`close()` tears the engine down, and `abstract.run_abstract` runs the stage in a child process
by default with this backend so that all GPU memory is back when the stage ends.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from typing import Any

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, OnResult, render_chat
from hiercaps_gen.llm.identity import model_identity
from hiercaps_gen.models import resolve


def sampling_spec(request: GenerationRequest) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request (structured outputs as a dict)."""
    s = request.sampling
    spec: dict[str, Any] = {
        "n": 1, "max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
    }
    if request.regex is not None:
        spec["structured_outputs"] = {"regex": request.regex}
    return spec


def engine_args(llm: LLMConfig) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for a config: prefix caching on, GGUF files by path."""
    source = resolve(llm.model)
    args: dict[str, Any] = {
        "model": os.path.join(source.path, source.gguf_file) if source.gguf_file else source.path,
        "dtype": llm.dtype,
        "gpu_memory_utilization": llm.gpu_memory_utilization,
        "enable_prefix_caching": True,
        "max_num_seqs": min(llm.batch_size, 1024),
    }
    if source.gguf_file:
        args["tokenizer"] = source.path
    if llm.revision and not source.embedded:
        args["revision"] = llm.revision
    return args


class VLLMGenerator(Generator):
    """`vllm.LLM` loaded once per stage; `generate` hands vLLM every request at once."""

    def __init__(self, llm_config: LLMConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError("the vllm backend needs vLLM on a GPU node: pip install -e '.[gpu]'") from exc
        self._vllm = vllm
        self.llm = vllm.LLM(**engine_args(llm_config))
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = model_identity(llm_config.model, llm_config.revision)

    @classmethod
    def from_config(cls, llm: LLMConfig) -> VLLMGenerator:
        return cls(llm)

    def prompts(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Chat-templated prompt texts: the shared few-shot prefix is byte-identical, so its KV blocks are reused."""
        return [render_chat(self.tokenizer, r) for r in requests]

    def sampling_params(self, request: GenerationRequest) -> Any:
        spec = sampling_spec(request)
        structured = spec.pop("structured_outputs", None)
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            spec["structured_outputs"] = StructuredOutputsParams(**structured)
        return self._vllm.SamplingParams(**spec)

    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        if not requests:
            return []
        outputs = self.llm.generate(self.prompts(requests), [self.sampling_params(r) for r in requests], use_tqdm=True)
        results = []
        for index, output in enumerate(outputs):
            completion = output.outputs[0]
            generation = Generation(
                text=completion.text, prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=len(completion.token_ids), finish_reason=completion.finish_reason or "stop",
            )
            results.append(generation)
            if on_result is not None:
                on_result(index, generation)
        return results

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        gc.collect()
        cleanup_dist_env_and_memory()
