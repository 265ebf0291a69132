"""Finetune throughput: the stage against a minimal hand-written RE training loop on one model.

    python bench/finetune_throughput.py [--encoder embedded:minilm] [--steps 40] [--batch-size 8]
                                        [--repeats 2] [--release DIR]

Both sides start from the same weights and train the same number of steps of `batch_size`
hierarchies. The hand loop tokenises one fixed batch once and then only runs forward (trained +
frozen), the RE loss, backward and fused AdamW. The stage (`finetune.finetune`, default config
apart from the step count) streams the release from Parquet, shuffles, tokenises every batch, logs
and checkpoints. The default release repeats that same fixed batch and is read unshuffled, so
every step of both sides trains on the same texts.
Prints hierarchies/s of each (best of `--repeats`, alternating) and the ratio stage / hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hiercaps_gen.config import RunConfig  # noqa: E402
from hiercaps_gen.encoders import load_encoder  # noqa: E402
from hiercaps_gen.stages.finetune import (  # noqa: E402
    batch_loss,
    batch_texts,
    epoch_batches,
    finetune,
    make_optimizer,
    save_checkpoint,
)
from hiercaps_gen.re_loss import re_loss  # noqa: E402
from hiercaps_gen.release.read import split_files  # noqa: E402

from tests.test_finetune import HIERARCHIES as BATCH  # noqa: E402  (the tests' hand-written batch)
from tests.test_finetune import write_release  # noqa: E402  (shards + manifest, as a release has)


def write_bench_release(directory: Path, rows: int) -> Path:
    records = []
    for i in range(rows):
        positive, negative = (s.split(" => ") for s in BATCH[i % len(BATCH)])
        records.append({"id": f"bench:{i}", "source": "bench", "source_id": str(i), "image_id": str(i),
                        "image_url": "", "caption": positive[-1], "positive": positive, "positive_origin": "llm",
                        "generator_model": "hand", "prompt_version": "v0", "prompt_hash": "0", "seed": 0,
                        "attempts": 1, "negative": negative, "ordering_model_hash": "0", "filter_score": 1.0,
                        "split": "train"})
    return write_release(directory, records, test=[])


def hand_loop(encoder_id: str, device: str, batch: list, steps: int, lr: float) -> float:
    """Seconds for `steps` steps of the bare RE loop on one pre-tokenised batch."""
    encoder = load_encoder(encoder_id, device=device).eval()
    frozen = encoder.frozen_copy()
    texts = batch_texts(batch)
    tokens = encoder.tokenize(texts)
    ref_tokens = {k: v[:-1] for k, v in tokens.items()}
    b, n_pos = len(batch), 4 * len(batch)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=lr, fused=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        emb = F.normalize(encoder.embed(**tokens), dim=-1)
        with torch.no_grad():
            ref = F.normalize(frozen.embed(**ref_tokens), dim=-1)
        loss = re_loss(emb[:n_pos].view(b, 4, -1), emb[n_pos:-1].view(b, 3, -1), emb[-1],
                       ref[:n_pos].view(b, 4, -1), ref[n_pos:].view(b, 3, -1))
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
    sync()
    return time.perf_counter() - start


def checkpoint_seconds(encoder_id: str, device: str, batch: list, lr: float) -> float:
    """Seconds to write one checkpoint (weights + AdamW state + RNG) after a training step."""
    encoder = load_encoder(encoder_id, device=device).eval()
    optimizer = make_optimizer(encoder, lr)
    weights = {"lambda_pull": 10.0, "lambda_entail": 1.0, "lambda_margin": 1.0}
    batch_loss(encoder, encoder.frozen_copy(), batch, weights).total.backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        save_checkpoint(Path(out), encoder, optimizer, {"step": 1})
        return time.perf_counter() - start


def stage_run(config: RunConfig, encoder_id: str, device: str, release: Path) -> tuple[float, float, int]:
    """(training-loop seconds, whole-call seconds, hierarchies) of one `finetune` call."""
    encoder = load_encoder(encoder_id, device=device)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = finetune(config, release, Path(out), encoder=encoder, progress=False)
        wall = time.perf_counter() - start
    return result["train_seconds"], wall, result["hierarchies"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="embedded:minilm")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--release", type=Path, help="a release directory (default: the fixed batch repeated)")
    args = parser.parse_args()

    overrides = {"finetune.encoder": args.encoder, "finetune.device": args.device,
                 "finetune.batch_size": args.batch_size, "finetune.max_steps": args.steps}
    if args.release is None:  # the release is the fixed batch repeated: unshuffled, every batch is that batch
        overrides["finetune.shuffle_buffer"] = 1
    config = RunConfig().with_overrides(overrides)
    lr = config.finetune.learning_rate or load_encoder(args.encoder, device="cpu").default_learning_rate
    with tempfile.TemporaryDirectory() as tmp:
        release = args.release or write_bench_release(Path(tmp), args.steps * args.batch_size)
        batch = next(epoch_batches(split_files(release, "train"), args.batch_size, 10_000, 0, 0))
        hand_loop(args.encoder, args.device, batch, 2, lr)  # warm-up: allocator, kernels, file cache
        hand, stage, wall = [], [], []
        for _ in range(args.repeats):
            hand.append(hand_loop(args.encoder, args.device, batch, args.steps, lr))
            loop_s, wall_s, rows = stage_run(config, args.encoder, args.device, release)
            stage.append(loop_s)
            wall.append(wall_s)
        ckpt = checkpoint_seconds(args.encoder, args.device, batch, lr)
    n = args.steps * args.batch_size
    hand_hps, stage_hps, wall_hps = n / min(hand), rows / min(stage), rows / min(wall)
    print(f"encoder {args.encoder} on {args.device}, {args.steps} steps x {args.batch_size} hierarchies, "
          f"{args.repeats} repeats (best), torch threads {torch.get_num_threads()}")
    print(f"hand-written loop : {hand_hps:8.2f} hierarchies/s  (runs: {', '.join(f'{h:.1f}s' for h in hand)})")
    runs = ", ".join(f"{s:.1f}s" for s in stage)
    print(f"finetune stage    : {stage_hps:8.2f} hierarchies/s  (training loop; runs: {runs})")
    print(f"finetune call     : {wall_hps:8.2f} hierarchies/s  (whole call: + frozen copy, fingerprint, final save)")
    print(f"overhead ratio stage/hand = {stage_hps / hand_hps:.3f} (training loop), "
          f"{wall_hps / hand_hps:.3f} (whole call); "
          f"median-run ratio {statistics.median(hand) / statistics.median(stage):.3f}")
    every = config.finetune.checkpoint_every
    step_s = args.batch_size / hand_hps
    print(f"one checkpoint    : {ckpt:.2f}s; amortised over checkpoint_every={every} steps "
          f"({every * step_s:.0f}s of training here) it costs {100 * ckpt / (every * step_s + ckpt):.1f}% "
          f"(not in the runs above unless --steps > {every})")


if __name__ == "__main__":
    main()
