"""Encoding by length: `encode` over a whole list (batches cut from the texts sorted by length)
against the same texts in 256-text chunks as they come (what `encode` did before stop 27: each
batch padded to its longest text, one-word level 1s to a caption's length).

    python bench/encode_order.py [--run-dir runs/default] [--repeats 2] [--threads 1]

Texts: every level of both sides of the run's filtered rows, twice over — in row order (how the
filter and the negatives stage hand them to the scorer) and as sorted distinct texts (how
`geometry.root_distances`, hence evaluate's d_corr, hands them over). Both encoders: the trainable
`TextEncoder` (evaluate, finetune) and the frozen `TextEmbedder` (filter, negatives), MiniLM.
Prints seconds (best of `--repeats`, alternating), the speed-up, and the largest difference of any
vector component between the two ways.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import timed

from hiercaps_gen.encoders import TextEmbedder, load_encoder
from hiercaps_gen.stages.base import read_stage_rows

CHUNK = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (args.run_dir / "filter" / "manifest.json").is_file():
        print(f"encode_order: skipped, no filtered run in {args.run_dir} (make all first)")
        return
    torch.set_num_threads(args.threads)
    rows = read_stage_rows(args.run_dir, "filter")
    row_order = [t for r in rows for t in [*r["positive"], *r["negative"]]]
    orders = {"row order": row_order, "sorted distinct": sorted(set(row_order))}
    embedder = TextEmbedder("embedded:minilm", device="cpu")
    encoders = {"TextEncoder": (load_encoder("embedded:minilm", device="cpu"), CHUNK),
                "TextEmbedder": (embedder, embedder.batch_size)}  # each with the batch size `encode` uses
    for enc_name, (encoder, batch) in encoders.items():
        for order_name, texts in orders.items():
            best = {"by length": float("inf"), "as they come": float("inf")}
            for _ in range(args.repeats):
                whole, seconds = timed(lambda: torch.as_tensor(encoder.encode(texts)))
                best["by length"] = min(best["by length"], seconds)
                chunks, seconds = timed(lambda: torch.cat([torch.as_tensor(encoder.encode(texts[i : i + batch]))
                                                           for i in range(0, len(texts), batch)]))
                best["as they come"] = min(best["as they come"], seconds)
            diff = float((whole - chunks).abs().max())
            print(f"{enc_name:12} {order_name:16} {len(texts):6} texts: as they come {best['as they come']:6.1f} s, "
                  f"by length {best['by length']:6.1f} s, speed-up {best['as they come'] / best['by length']:.2f}x, "
                  f"max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
