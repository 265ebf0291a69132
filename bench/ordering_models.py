"""Which offline ordering model learns best in a few CPU minutes? (docs/ordering.md)

Each variant (recipe and size) gets the same CPU budget on one thread (process CPU time, so other load on a shared
box does not skew the comparison): a few calibration steps give its seconds per step, then
`train_ordering` runs that many steps on the hand-written hierarchies in tests/data. Printed:
held-out loss per target *word* (tokenizers differ, so per-token losses do not compare), CPU
seconds, and a few greedy generations. Usage:
    python bench/ordering_models.py [--cpu-seconds 150] [--variants recipe:d_model:layers:lr ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from hiercaps_gen.config import RunConfig
from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.stages.train_ordering import train_ordering
from hiercaps_gen.ordering.model import build, load
from hiercaps_gen.ordering.tasks import down_source, examples, heldout_ids, parse_up
from hiercaps_gen.ordering.generate import model_dir
from hiercaps_gen.stages.train_ordering import _encode
from hiercaps_gen.hierarchy import dedup_key
from tests.test_ordering_data import hierarchy_rows, write_abstract


def seconds_per_step(config: RunConfig, rows: list[dict]) -> float:
    s2s = build(config.ordering, config.seed, [t for r in rows for t in r["positive"]])
    optimizer = torch.optim.AdamW(s2s.model.parameters(), lr=config.ordering.learning_rate)
    batch = _encode(s2s, [e for r in rows[:10] for e in examples(r["id"], r["positive"])][: config.ordering.batch_size],
                    config.ordering.max_source_len, config.ordering.max_target_len)
    start = time.process_time()
    for _ in range(3):
        s2s.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.process_time() - start) / 3


@torch.inference_mode()
def nll_per_word(run_dir: Path, rows: list[dict], seed: int, fraction: float) -> float:
    s2s = load(str(model_dir(run_dir)))
    s2s.model.eval()
    held = heldout_ids([r["id"] for r in rows], fraction, seed)
    test = [e for r in rows if r["id"] in held for e in examples(r["id"], r["positive"])]
    total = 0.0
    for e in test:
        batch = _encode(s2s, [e], 64, 32)
        total += float(s2s.model(**batch).loss) * int((batch["labels"] != -100).sum())
    return total / sum(len(e.target.split()) + 1 for e in test)  # +1: the end of sequence


def upward_accuracy(model: OrderingModel, rows: list[dict], seed: int, fraction: float) -> tuple[float, float]:
    """Greedy specific→generic on held-out captions: share whose level 1 / level 2 match the
    hand-written ones exactly (a tokenizer-independent check that the model generalises)."""
    held = [r for r in rows if r["id"] in heldout_ids([r["id"] for r in rows], fraction, seed)]
    outs = [parse_up(text) for text in model.ancestors([r["caption"] for r in held])]
    hits = [[o is not None and dedup_key(o[k]) == dedup_key(r["positive"][k]) for o, r in zip(outs, held)] for k in (0, 1)]
    return sum(hits[0]) / len(held), sum(hits[1]) / len(held)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-seconds", type=float, default=150.0, help="training budget per recipe")
    parser.add_argument("--variants", nargs="+", default=[
        "embedded:t5-minilm-corpus-vocab:128:2:2e-3", "embedded:t5-minilm-corpus-vocab:256:3:1e-3",
        "embedded:t5-smollm2-vocab:256:3:1e-3", "embedded:minilm-bert2bert:384:6:1e-4",
    ], help="recipe:d_model:layers:learning_rate (size is ignored by bert2bert)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = hierarchy_rows()
    probe = [r["positive"] for r in rows[:3]]
    results = []
    for variant in args.variants:
        recipe, d_model, layers, lr = variant.rsplit(":", 3)
        config = RunConfig().with_overrides({
            "ordering.model": recipe, "ordering.d_model": int(d_model), "ordering.d_ff": 4 * int(d_model),
            "ordering.layers": int(layers), "ordering.learning_rate": float(lr), "ordering.threads": 1,
            "ordering.device": "cpu",
        })
        per_step = seconds_per_step(config, rows)
        config = config.with_overrides({"ordering.max_steps": max(10, int(args.cpu_seconds / per_step))})
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp)
            write_abstract(run_dir, rows)
            start = time.process_time()
            manifest = train_ordering(config, run_dir)
            cpu = time.process_time() - start
            per_word = nll_per_word(run_dir, rows, config.seed, config.ordering.heldout_fraction)
            model = OrderingModel.from_run(run_dir, "cpu")
            level1, level2 = upward_accuracy(model, rows, config.seed, config.ordering.heldout_fraction)
            samples = [outs[0] for outs in model.generate([down_source(p[:k]) for p in probe for k in (1, 3)])]
            samples += model.ancestors([p[-1] for p in probe])
        s = manifest["stats"]
        results.append((variant, cpu, per_word, level1, level2))
        print(f"{variant}: {s['steps']} steps, {cpu:.0f} CPU-s ({per_step:.2f}/step), {s['parameters'] / 1e6:.1f}M params, "
              f"held-out loss/token {s['heldout_loss_start']:.2f} -> {s['heldout_loss_best']:.2f}, NLL/word {per_word:.2f}, "
              f"held-out upward level-1 match {level1:.2f}, level-2 match {level2:.2f}",
              flush=True)
        for text in samples:
            print(f"    {text}", flush=True)
    best = min(results, key=lambda r: r[2])
    for variant, cpu, per_word, level1, level2 in results:
        print(f"{variant}: NLL/word x{per_word / best[2]:.2f} of {best[0]}'s, CPU time x{cpu / best[1]:.2f}, "
              f"level-1/2 match {level1:.2f}/{level2:.2f}")


if __name__ == "__main__":
    main()
