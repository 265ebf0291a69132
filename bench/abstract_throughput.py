"""Abstract-stage throughput: the stage end to end vs the raw backend call vs a naive loop.

    python bench/abstract_throughput.py [--captions 64] [--naive 16] [--model embedded:smollm2] [--threads N]

One model load, the same first-attempt prompts everywhere (sample captions, the shipped
template). Prints captions/s and new tokens/s of
  stage   AbstractStage.process on one shard (one attempt, cache off): render, generate, parse, check
  raw     TransformersGenerator.generate alone on the same requests (batched, shared-prefix cache)
  flat    the same batches without the shared-prefix cache (what the prefix cache buys)
  naive   one caption at a time, no prefix cache (model.generate per prompt), on the first --naive
and the ratios stage/raw (overhead; aim >= 0.9) and raw/naive (aim >= 5), all from this one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import REPO, timed  # noqa: E402  (first: puts this checkout on sys.path)

from hiercaps_gen.stages.abstract import AbstractStage  # noqa: E402
from hiercaps_gen.config import RunConfig  # noqa: E402
from hiercaps_gen.llm.base import Generation  # noqa: E402
from hiercaps_gen.llm.transformers_backend import TransformersGenerator  # noqa: E402


def sample_rows(n: int) -> list[dict]:
    data = json.loads((REPO / "data/coco_val2014_sample/captions.json").read_text(encoding="utf-8"))
    anns = data["annotations"][:n]
    return [{"id": f"coco:{a['id']}", "source": "coco", "source_id": str(a["id"]), "image_id": str(a["image_id"]),
             "image_url": "", "caption": " ".join(a["caption"].split())} for a in anns]


def report(name: str, captions: int, tokens: float, seconds: float) -> dict:
    row = {"name": name, "captions": captions, "seconds": round(seconds, 2),
           "captions_per_s": captions / seconds, "tokens_per_s": tokens / seconds}
    print(f"{name:6s} {captions:4d} captions {seconds:8.2f} s  {row['captions_per_s']:7.3f} captions/s  "
          f"{row['tokens_per_s']:8.2f} new tokens/s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--naive", type=int, default=16, help="captions for the one-at-a-time loop")
    parser.add_argument("--model", default="embedded:smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    config = RunConfig().with_overrides({
        "abstract.llm.model": args.model, "abstract.llm.device": args.device, "abstract.llm.batch_size": args.batch_size,
        "abstract.max_attempts": 1, "abstract.cache": False,
    })
    (backend, load_s) = timed(lambda: TransformersGenerator(args.model, device=args.device, batch_size=args.batch_size,
                                                            threads=args.threads))
    print(f"model {backend.model_id} loaded in {load_s:.1f} s on {backend.device}; batch {args.batch_size}")
    rows = sample_rows(args.captions)
    with tempfile.TemporaryDirectory() as tmp:
        stage = AbstractStage(config, Path(tmp), generator=backend)
        requests = [stage.request(row, 1, 0) for row in rows]
        backend.generate(requests)  # untimed warm-up pass over every batch shape: threads, allocator, kernels

        def tokens(gens: list[Generation]) -> int:
            return sum(g.completion_tokens for g in gens)

        results = []
        out, seconds = timed(lambda: stage.process(rows, "part-00000"))
        results.append(report("stage", len(rows), out.stats["generated_tokens"], seconds))
        accepted = len(out.rows)

        raw, seconds = timed(lambda: backend.generate(requests))
        results.append(report("raw", len(rows), tokens(raw), seconds))

        backend.prefix_cache = False
        flat, seconds = timed(lambda: backend.generate(requests))
        results.append(report("flat", len(rows), tokens(flat), seconds))

        backend.batch_size = 1
        naive, seconds = timed(lambda: [backend.generate([r])[0] for r in requests[: args.naive]])
        results.append(report("naive", len(naive), tokens(naive), seconds))
        same = sum(a.text == b.text for a, b in zip(raw, flat, strict=True))

    by = {r["name"]: r for r in results}
    print(f"accepted by the stage: {accepted}/{len(rows)} = {accepted / len(rows):.3f}")
    print(f"raw and flat texts identical: {same}/{len(rows)}")
    print(f"overhead ratio stage/raw (captions/s): {by['stage']['captions_per_s'] / by['raw']['captions_per_s']:.3f}  (aim >= 0.9)")
    print(f"speed-up raw/naive (captions/s):      {by['raw']['captions_per_s'] / by['naive']['captions_per_s']:.2f}x  (aim >= 5)")
    print(f"speed-up raw/flat (prefix cache):     {by['raw']['captions_per_s'] / by['flat']['captions_per_s']:.2f}x")
    print(f"speed-up flat/naive (batching alone): {by['flat']['captions_per_s'] / by['naive']['captions_per_s']:.2f}x")


if __name__ == "__main__":
    main()
