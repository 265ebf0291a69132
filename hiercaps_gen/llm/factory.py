"""Build the configured backend. Imports are lazy: vLLM and the HTTP client load only when used."""

from __future__ import annotations

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import Generator


def create_generator(llm: LLMConfig) -> Generator:
    """The backend named by `llm.backend`, loaded and ready."""
    if llm.backend == "transformers":
        from hiercaps_gen.llm.transformers_backend import TransformersGenerator

        return TransformersGenerator(
            llm.model, revision=llm.revision, device=llm.device, dtype=llm.dtype, batch_size=llm.batch_size,
            prefix_cache=llm.prefix_cache, threads=llm.threads,
        )
    if llm.backend == "openai":
        from hiercaps_gen.llm.openai_backend import OpenAIGenerator

        return OpenAIGenerator.from_config(llm)
    if llm.backend == "vllm":
        from hiercaps_gen.llm.vllm_backend import VLLMGenerator

        return VLLMGenerator.from_config(llm)
    raise ValueError(f"unknown LLM backend {llm.backend!r}")
