"""The vLLM backend as data: the module imports without vLLM, and what it hands to `vllm.LLM` /
`SamplingParams` (engine settings, prompts, sampling, structured outputs) is checked without an
engine. The real CPU engine is exercised in test_vllm_engine.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import GenerationRequest, Sampling, render_chat
from hiercaps_gen.llm.vllm_backend import VLLMGenerator, engine_settings, ipc_dir, remove_stale_ipc_dirs, sampling_spec
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


def test_engine_settings_size_the_cpu_engine_and_keep_gpu_settings():
    cpu = LLMConfig(backend="vllm", device="cpu", kv_cache_gib=2, threads=1)
    args, env = engine_settings(cpu, "/models/x")
    assert args["model"] == "/models/x" and args["enable_prefix_caching"] is True and args["enforce_eager"] is True
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["OMP_NUM_THREADS"] == "1" and "gpu_memory_utilization" not in args
    gpu = LLMConfig(backend="vllm", model="meta-llama/Llama-2-7b-chat-hf", revision="abc", dtype="bfloat16",
                    device="cuda", compile=True)
    args, env = engine_settings(gpu, gpu.model)
    assert args["revision"] == "abc" and args["dtype"] == "bfloat16" and args["gpu_memory_utilization"] == 0.85
    assert args["enforce_eager"] is False and env == {}


def test_answer_regex_takes_what_the_few_shot_teaches_and_nothing_parse_answer_splits():
    import re

    from hiercaps_gen.llm.prompts import parse_answer

    template = load_prompt("abstract_v1")
    pattern = re.compile(template.answer_regex())
    good = template.answer(("animal", "dog", "a dog on grass"))
    assert pattern.fullmatch(good) and pattern.fullmatch(" " + good)  # Llama-2 templates put a space first
    assert parse_answer(" " + good, template.answer_order) == ("animal", "dog", "a dog on grass")
    for bad in (
        good.replace("a dog on grass", "a dog\ron grass"),  # \r: splitlines would make it two lines
        good.replace("a dog on grass", "a dog\u2028on grass"),
        good.replace("dog\n", "   \n"),  # whitespace-only level
        good.replace("dog\n", "\n"),  # empty level
        "  " + good,
    ):
        assert not pattern.fullmatch(bad), repr(bad)


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


def test_a_killed_process_ipc_directory_goes_with_the_next_one_made(tmp_path):
    """A SIGKILLed process runs no exit hook, so its socket directory stays; the next process to
    make one removes it, and never one whose process is alive (this one's)."""
    kill = (f"import os, signal, tempfile; tempfile.tempdir = {str(tmp_path)!r}\n"
            "from hiercaps_gen.llm.vllm_backend import ipc_dir\n"
            "print(ipc_dir(), flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", kill], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL
    killed = tmp_path / os.path.basename(out.stdout.strip())
    assert killed.is_dir()
    alive = tmp_path / f"vllm-ipc-{os.getpid()}-x"
    alive.mkdir()
    assert remove_stale_ipc_dirs(str(tmp_path)) == [str(killed)]
    assert not killed.exists() and alive.is_dir()
    assert os.path.basename(ipc_dir()).startswith(f"vllm-ipc-{os.getpid()}-")
