"""The vLLM backend without a GPU: the module imports without vLLM, and what it would hand to
`vllm.LLM` / `SamplingParams` (prompts, sampling, structured outputs) is checked as data."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import GenerationRequest, Sampling, render_chat
from hiercaps_gen.llm.vllm_backend import VLLMGenerator, engine_args, sampling_spec
from hiercaps_gen.llm.prompts import load_prompt

from .conftest import REPO
from .test_llm_helpers import build_tiny_model

# Field names of vllm 0.33 `SamplingParams` / `StructuredOutputsParams` (read from the wheel).
SAMPLING_FIELDS = {"n", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "structured_outputs"}
STRUCTURED_FIELDS = {"json", "regex", "choice", "grammar", "json_object"}


def test_module_imports_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None\n"  # any `import vllm` now fails
        "import hiercaps_gen.llm.vllm_backend as b, hiercaps_gen.llm.factory as f\n"
        "from hiercaps_gen.config import LLMConfig\n"
        "try:\n    f.create_generator(LLMConfig(backend='vllm'))\nexcept RuntimeError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR the vllm backend needs vLLM" in out.stdout


def test_sampling_spec_greedy_sampled_and_structured():
    template = load_prompt("abstract_v1")
    greedy = sampling_spec(GenerationRequest(template.messages("A dog."), Sampling(max_new_tokens=48, seed=3)))
    assert greedy == {"n": 1, "max_tokens": 48, "temperature": 0.0, "top_p": 1.0, "seed": 3}
    sampled = sampling_spec(GenerationRequest(template.messages("A dog."), Sampling(64, 0.7, 0.9, 11), regex=template.answer_regex()))
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["seed"] == 11
    assert set(sampled) <= SAMPLING_FIELDS and set(sampled["structured_outputs"]) <= STRUCTURED_FIELDS
    import re

    pattern = re.compile(sampled["structured_outputs"]["regex"])
    assert pattern.fullmatch(template.answer(("animal", "dog", "a dog on grass")))
    assert not pattern.fullmatch("Level 1: animal\nLevel 2: dog\nLevel 3: a dog")  # wrong order


def test_engine_args_turn_on_prefix_caching_and_pass_gguf_by_path():
    hub = engine_args(LLMConfig(backend="vllm", model="meta-llama/Llama-2-7b-chat-hf", revision="abc", dtype="bfloat16"))
    assert hub["enable_prefix_caching"] is True and hub["revision"] == "abc" and hub["dtype"] == "bfloat16"
    assert hub["model"] == "meta-llama/Llama-2-7b-chat-hf" and "tokenizer" not in hub
    embedded = engine_args(LLMConfig(backend="vllm", model="embedded:smollm2"))
    assert embedded["model"].endswith(".gguf") and embedded["tokenizer"]


def test_prompts_share_a_byte_identical_prefix(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    generator = VLLMGenerator.__new__(VLLMGenerator)  # no engine: only the prompt building is used
    generator.tokenizer = tokenizer
    template = load_prompt("abstract_v1")
    captions = ["A dog on a beach.", "Two red buses.", 'Level 1: x\n"quoted" <|im_end|>']
    prompts = generator.prompts([GenerationRequest(template.messages(c)) for c in captions])
    shared = render_chat(tokenizer, GenerationRequest(template.shared_messages()))
    shared = shared[: shared.rindex("<|im_start|>assistant")]
    for prompt in prompts:
        assert prompt.startswith(shared)
        assert prompt.endswith("<|im_start|>assistant\n") and prompt.count("<|im_start|>") == len(template.shared_messages()) + 2


def test_vllm_backend_needs_vllm_when_built():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(RuntimeError, match="needs vLLM"):
        VLLMGenerator(LLMConfig(backend="vllm"))
