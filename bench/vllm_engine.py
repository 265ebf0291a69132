"""vLLM CPU engine: the abstract stage through vLLM vs raw `LLM.generate` vs the transformers backend.

    python bench/vllm_engine.py [--captions 96] [--threads N] [--compile]

One run, the same first-attempt prompts everywhere (sample captions, the shipped template,
structured outputs as in the `cpu` profile). Prints:
  cold    engine start with an empty model cache (GGUF → safetensors export + vllm.LLM)
  warm    a second engine start in the same process (export cached; vLLM's own caches warm)
  raw     `vllm.LLM.generate` alone on the token prompts (the engine's ceiling)
  stage   AbstractStage.process on one shard through VLLMGenerator (render, generate, parse, check)
  hf      the same stage through the transformers backend (batched, shared-prefix cache)
and the ratios stage/raw (aim >= 0.9) and stage vLLM / stage transformers (aim >= 4).
Each generate pass is preceded by an untimed warm-up pass over the same prompts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import timed  # noqa: E402  (first: puts this checkout on sys.path)


def line(name: str, captions: int, seconds: float) -> float:
    rate = captions / seconds
    print(f"{name:6s} {captions:4d} captions {seconds:8.2f} s  {rate:7.3f} captions/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile instead of eager mode")
    parser.add_argument("--skip-hf", action="store_true", help="skip the transformers backend")
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="hiercaps-bench-cache-"))
    os.environ["HIERCAPS_CACHE"] = str(cache)  # cold: the export is redone in this run

    from abstract_throughput import sample_rows

    from hiercaps_gen.stages.abstract import AbstractStage
    from hiercaps_gen.config import RunConfig
    from hiercaps_gen.llm.vllm_backend import VLLMGenerator

    config = RunConfig().with_overrides({
        "abstract.llm.backend": "vllm", "abstract.llm.device": "cpu", "abstract.llm.batch_size": 128,
        "abstract.llm.structured_output": True, "abstract.llm.threads": args.threads,
        "abstract.llm.compile": args.compile, "abstract.max_attempts": 1, "abstract.cache": False,
    })
    rows = sample_rows(args.captions)
    try:
        generator, cold = timed(lambda: VLLMGenerator(config.abstract.llm))
        print(f"cold   engine start {cold:7.1f} s (export + engine; compile={args.compile})", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            stage = AbstractStage(config, Path(tmp), generator=generator)
            requests = [stage.request(row, 1, 0) for row in rows]
            from vllm.inputs import TokensPrompt

            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in generator.prompt_ids(requests)]
            params = [generator.sampling_params(r) for r in requests]
            generator.llm.generate(prompts, params, use_tqdm=False)  # warm-up: grammar, kernels, prefix blocks
            _, seconds = timed(lambda: generator.llm.generate(prompts, params, use_tqdm=False))
            raw = line("raw", len(rows), seconds)
            out, seconds = timed(lambda: stage.process(rows, "part-00000"))
            vllm_stage = line("stage", len(rows), seconds)
            accepted = len(out.rows)
        generator.close()
        generator, warm = timed(lambda: VLLMGenerator(config.abstract.llm))
        print(f"warm   engine start {warm:7.1f} s", flush=True)
        generator.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"accepted by the vLLM stage: {accepted}/{len(rows)}")
    print(f"stage/raw through vLLM (captions/s): {vllm_stage / raw:.3f}  (aim >= 0.9)")
    if args.skip_hf:
        return
    from hiercaps_gen.llm.transformers_backend import TransformersGenerator

    hf_config = config.with_overrides({"abstract.llm.backend": "transformers", "abstract.llm.structured_output": False,
                                       "abstract.llm.batch_size": 32})
    backend = TransformersGenerator("embedded:smollm2", device="cpu", batch_size=32, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        stage = AbstractStage(hf_config, Path(tmp), generator=backend)
        backend.generate([stage.request(row, 1, 0) for row in rows[:32]])  # warm-up
        out, seconds = timed(lambda: stage.process(rows, "part-00000"))
        hf = line("hf", len(rows), seconds)
    print(f"accepted by the transformers stage: {len(out.rows)}/{len(rows)}")
    print(f"stage vLLM / stage transformers (captions/s): {vllm_stage / hf:.2f}x  (aim >= 4)")


if __name__ == "__main__":
    main()
