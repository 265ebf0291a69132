"""The ordering path on a CUDA device: train-ordering, seeded sampling, distill, the NLI scorer.

A device check (docs/ordering.md), not a test: CI has no GPU. It needs only the MiniLM
*tokenizer* (the default recipe builds its model from a config), so it runs where the embedded
weights are not installed. Prints wall times; the "flan-t5-base size" line is a T5 with
flan-t5-base's shape (d_model 768, 12+12 layers) built from a config, for GPU throughput.
`--causal DIR` adds the `cpu` profile's causal recipe on a decoder-only model directory (the SmolLM2
export, or one of its shape built from a config where the GGUF cannot travel): its training
settings, all steps timed (no early stop), then seeded sampling from it.
Usage: python -m bench.ordering_gpu [--device cpu --max-steps 20 --small-only] [--causal DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from hiercaps_gen import hierarchy
from hiercaps_gen.config import FilterConfig, RunConfig, load_config
from hiercaps_gen.stages.distill import DistillStage
from hiercaps_gen.stages.filter import NLIScorer
from hiercaps_gen.models import resolve
from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.stages.train_ordering import train_ordering
from hiercaps_gen.ordering.tasks import down_source
from hiercaps_gen.stages.base import Reject, ShardOutput, shard_name, stage_dir, write_shard, write_stage_manifest
from tests.test_ordering_data import hierarchy_rows, write_abstract

SIZES = {
    "default recipe": {},
    "flan-t5-base size": {"ordering.d_model": 768, "ordering.layers": 12, "ordering.heads": 12, "ordering.d_ff": 2048,
                          "ordering.batch_size": 64, "ordering.max_steps": 100, "ordering.learning_rate": 3e-4},
}


def train(label: str, overrides: dict, run_dir: Path, device: str, base: RunConfig | None = None) -> RunConfig:
    config = (base or RunConfig()).with_overrides({"ordering.device": device, **overrides})
    start = time.perf_counter()
    manifest = train_ordering(config, run_dir)
    seconds = time.perf_counter() - start
    s = manifest["stats"]
    print(f"{label}: {s['parameters'] / 1e6:.1f}M params, {s['steps']} steps in {s['seconds']:.1f}s "
          f"({s['steps'] / s['seconds']:.1f} steps/s, {seconds:.1f}s with build and save) on {s['device']}, "
          f"held-out loss {s['heldout_loss_start']:.2f} -> {s['heldout_loss_best']:.2f}", flush=True)
    return config


def distill_check(config: RunConfig, run_dir: Path) -> None:
    """Rewrite the abstract stage with over-budget captions and distil them on the GPU."""
    rows = hierarchy_rows()
    directory = stage_dir(run_dir, "abstract")
    kept, over = rows[:100], [{k: r[k] for k in hierarchy.CAPTION.names} for r in rows[100:]]
    records = []
    for i in range(2):
        part, rest = kept[i::2], over[i::2]
        output = ShardOutput(part, [Reject(r, "beyond_llm_budget", "llm_budget=100") for r in rest])
        records.append(write_shard(directory, "abstract", shard_name(i), hierarchy.POSITIVE, output,
                                   len(part) + len(rest), "gpu-check", None, 0.0))
    write_stage_manifest(directory, "abstract", "gpu-check", {}, records)
    start = time.perf_counter()
    manifest = DistillStage(config.with_overrides({"ordering.distill": True}), run_dir).run()
    t = manifest["totals"]
    assert t["in"] == len(over) == t["accepted"] + t["rejected"], t
    print(f"distill on {config.ordering.device}: {t['in']} captions, {t['accepted']} accepted, reasons {t['reasons']}, "
          f"{time.perf_counter() - start:.1f}s", flush=True)


def nli_check(tmp: Path, device: str) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:minilm").path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=3, id2label={0: "contradiction", 1: "entailment", 2: "neutral"})
    BertForSequenceClassification(config).save_pretrained(tmp / "nli")
    tokenizer.save_pretrained(tmp / "nli")
    scorer = NLIScorer(FilterConfig(nli_model=str(tmp / "nli")), device)
    positives = [r["positive"] for r in hierarchy_rows()]
    verdicts = scorer.judge(positives, [list(reversed(p)) for p in positives])
    assert len(verdicts) == len(positives) and next(scorer.model.parameters()).device.type == device
    print(f"nli scorer on {device}: {len(verdicts)} rows judged", flush=True)


def causal_check(model_dir: str, rows: list[dict], run_dir: Path, device: str, max_steps: int | None) -> None:
    """The cpu profile's ordering recipe (bf16, top layers trained) on `model_dir`, then sampling."""
    write_abstract(run_dir, rows)
    overrides = {"ordering.model": model_dir, "ordering.patience": None}
    train("causal (cpu profile recipe)", {**overrides, **({"ordering.max_steps": max_steps} if max_steps else {})},
          run_dir, device, load_config("cpu"))
    model = OrderingModel.from_run(run_dir, device)
    _, first, seconds = seeded_samples(model, rows, 4)
    print(f"causal sampling on {device}: {len(first) * 4} candidates in {seconds:.2f}s, same seed same output",
          flush=True)


def seeded_samples(model: OrderingModel, rows: list[dict], n: int) -> tuple[list[str], list[list[str]], float]:
    """The prefixes of 32 rows, `n` samples of each (seed 3, checked to repeat under the same seed), seconds."""
    sources = [down_source(r["positive"][:k]) for r in rows[:32] for k in range(4)]
    start = time.perf_counter()
    first = model.generate(sources, n, sample=True, temperature=1.0, top_p=0.95, seed=3)
    seconds = time.perf_counter() - start
    assert first == model.generate(sources, n, sample=True, temperature=1.0, top_p=0.95, seed=3)
    return sources, first, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every training run (dry runs)")
    parser.add_argument("--small-only", action="store_true", help="skip the flan-t5-base-size run")
    parser.add_argument("--causal", help="a decoder-only model directory to train with the cpu profile's recipe")
    args = parser.parse_args()
    device = args.device
    if device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    rows = hierarchy_rows()
    sizes = {k: v for k, v in SIZES.items() if not (args.small_only and v)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        configs = {}
        for label, overrides in sizes.items():
            run_dir = tmp / label.replace(" ", "-")
            write_abstract(run_dir, rows)
            cap = {"ordering.max_steps": args.max_steps} if args.max_steps else {}
            configs[label] = (train(label, {**overrides, **cap}, run_dir, device), run_dir)
        config, run_dir = configs["default recipe"]
        model = OrderingModel.from_run(run_dir, device)
        sources, first, seconds = seeded_samples(model, rows, 6)
        other = model.generate(sources, 6, sample=True, temperature=1.0, top_p=0.95, seed=4)
        print(f"sampling on {device}: {len(first) * 6} candidates in {seconds:.2f}s, same seed same output, "
              f"other seed differs: {first != other}; e.g. {first[5][:3]} | {first[7][:2]}", flush=True)
        print("upward:", model.ancestors([r["caption"] for r in rows[-4:]]), flush=True)
        distill_check(config, run_dir)
        nli_check(tmp, device)
        if args.causal:
            causal_check(args.causal, rows, tmp / "causal", device, args.max_steps)
    print(f"{device} check ok", flush=True)


if __name__ == "__main__":
    main()
