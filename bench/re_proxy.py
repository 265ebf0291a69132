"""RE proxy (measurement only): does RE fine-tuning on a run's rows teach hierarchy, compared with
the authors' rows and with no LLM at all?

Four arms, each MiniLM (`embedded:minilm`) RE-fine-tuned by the product's own finetune stage on N
rows (same N, seed, batch size and epochs), then scored by evaluate's `d_corr` on one held-out
set of reference positive chains whose images no training arm uses and no run of the shipped
sample can use (every image of `data/coco_val2014_sample` is left out, so releases of the sample
are all scored on the same chains):
  release     N rows of a release's train split (`--release DIR`) or a run's filter output (`--run-dir`)
  reference   N rows of the authors' reference CSV: the first of a seeded order over all its rows
              whose images are outside the held-out set
  truncation  no LLM: positive = last word / first two words / first six words / caption of the
              release arm's captions, negative = the same construction from another random
              caption of the arm (with `--reference-only`: the reference arm's captions)
  zero-shot   the untuned encoder
Each arm's rows go to a temporary Parquet file that `finetune` reads as a lone file; nothing of the
reference reaches the product. `--seeds K` repeats the draw of rows (and the training seed) K
times and prints per arm the mean, half-range and standard error, and release − reference with a
95 % interval: one draw moves an arm by ~±0.005, the size of the gap being decided, so deciding it
takes ~10 draws per arm. `--jobs J` trains J arms at once in their own processes (`--threads` torch
threads each). Usage (HF_HUB_OFFLINE=1; the encoder is the shipped MiniLM):
    python bench/re_proxy.py --release releases/hierarcaps-gen-sample/0.1.0 [--rows 540] [--seeds 12 --jobs 2]
    python bench/re_proxy.py --run-dir runs/default
    python bench/re_proxy.py --reference-only            # arms 2-4, no run needed
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import multiprocessing
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import torch

from hiercaps_gen.config import FinetuneConfig, RunConfig
from hiercaps_gen.encoders import load_encoder
from hiercaps_gen.files import write_parquet
from hiercaps_gen.hierarchy import is_hierarchy, split_levels, words
from hiercaps_gen.release.read import read_release
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.stages.evaluate import d_corr
from hiercaps_gen.stages.finetune import finetune

ENCODER = "embedded:minilm"
DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "shared/data/hierarcaps_reference_sample.csv.gz"
SHIPPED_CAPTIONS = Path(__file__).resolve().parents[1] / "data/coco_val2014_sample/captions.json"
Row = dict[str, object]
Job = tuple[list[Row], list[list[str]], int, int, int, Path, int]  # train_and_score's arguments + threads


def truncation_levels(caption: str) -> list[str]:
    """Last word / first two words / first six words / caption: a chain with no LLM in it.

    The last word is the last letter-or-digit run (lower-cased, as `hierarchy.words` counts),
    the prefixes are whitespace tokens; a caption without a word keeps itself at every level."""
    tokens, last = caption.split(), words(caption)[-1:] or [caption]
    return [last[0], " ".join(tokens[:2]), " ".join(tokens[:6]), caption]


def truncation_rows(captions: list[str], seed: int) -> list[Row]:
    """One truncation row per caption; its negative is the truncation of another caption, drawn
    with `random.Random(seed)` (never the caption itself)."""
    if len(captions) < 2:
        raise ValueError("the truncation baseline needs at least 2 captions")
    rng, rows = random.Random(seed), []
    for i, caption in enumerate(captions):
        j = rng.randrange(len(captions) - 1)
        rows.append({"id": f"truncation-{i}", "positive": truncation_levels(caption),
                     "negative": truncation_levels(captions[j + (j >= i)])})
    return rows


def image_key(url: str) -> str:
    """The image file name of a URL or path: how a run's rows and the reference name one image."""
    return Path(urlparse(url).path).name


def shipped_images(path: Path = SHIPPED_CAPTIONS) -> set[str]:
    """The images of the shipped caption sample (COCO format): never in the held-out set."""
    return {image_key(image["file_name"]) for image in json.loads(path.read_text(encoding="utf-8"))["images"]}


def reference_rows(path: Path) -> list[Row]:
    """Rows of the authors' CSV with four levels on both sides, in file order."""
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as fh:
        rows = [{"id": f"reference-{i}", "positive": split_levels(r["positive"]),
                 "negative": split_levels(r["negative"]), "image": image_key(r["image_url"])}
                for i, r in enumerate(csv.DictReader(fh))]
    return [r for r in rows if is_hierarchy(r["positive"]) and is_hierarchy(r["negative"])]


def run_rows(release: Path | None, run_dir: Path | None) -> list[Row]:
    """The release arm's candidate rows: a verified release's train split, or a run's filter output."""
    if release is not None:
        records = read_release(release, "train", ["id", "image_url", "positive", "negative"]).to_pylist()
    elif run_dir is not None:
        records = read_stage_rows(run_dir, "filter")
    else:
        return []
    return [{"id": r["id"], "positive": list(r["positive"]), "negative": list(r["negative"]),
             "image": image_key(r["image_url"] or "")} for r in records
            if is_hierarchy(r["positive"]) and is_hierarchy(r["negative"])]


def held_out(reference: list[Row], exclude: set[str], test_rows: int, seed: int) -> tuple[list[Row], set[str]]:
    """Up to `test_rows` reference rows of seeded whole images outside `exclude`, and those images.

    The seeded order is over all the reference's images, and `exclude` only skips some: two
    releases with different images are scored on nearly the same chains (shuffling what is left
    after excluding gave a new held-out set for every release, which moved the arms by ~0.01)."""
    images = sorted({r["image"] for r in reference})
    random.Random(f"held-out:{seed}").shuffle(images)
    images = [image for image in images if image not in exclude]
    by_image: dict[str, list[Row]] = {}
    for row in reference:
        by_image.setdefault(row["image"], []).append(row)
    chosen, rows = set(), []
    for image in images:
        if len(rows) >= test_rows:
            break
        chosen.add(image)
        rows += by_image[image]
    return rows[:test_rows], chosen


def reference_draw(reference: list[Row], exclude: set[str], n: int, seed: int) -> list[Row]:
    """`n` reference rows of images outside `exclude`, first in a seeded order over all the rows.

    Like `held_out`, the order does not depend on `exclude`: two releases whose held-out sets
    differ by a few images train the reference arm on nearly the same rows (sampling from what was
    left after the held-out set moved this arm by ~0.006 between releases of the same code)."""
    order = list(reference)
    random.Random(f"reference:{seed}").shuffle(order)
    rows = [r for r in order if r["image"] not in exclude][:n]
    if len(rows) < n:
        raise ValueError(f"the reference has {len(rows)} rows outside the held-out images, {n} asked")
    return rows


def train_and_score(rows: list[Row], chains: list[list[str]], seed: int, epochs: int, batch_size: int,
                    work: Path) -> dict[str, float]:
    """Fine-tune MiniLM on `rows` with the product's finetune stage; d_corr on `chains`."""
    work.mkdir(parents=True)
    table = pa.table({"id": [str(r["id"]) for r in rows], "positive": [r["positive"] for r in rows],
                      "negative": [r["negative"] for r in rows]})
    write_parquet(work / "rows.parquet", table)
    config = RunConfig(seed=seed, finetune=FinetuneConfig(encoder=ENCODER, epochs=epochs, batch_size=batch_size,
                                                          device="cpu"))
    started = time.perf_counter()
    result = finetune(config, work / "rows.parquet", work / "out", progress=False)
    score = d_corr(load_encoder(result["encoder_dir"], device="cpu"), chains)
    return {"d_corr": score, "steps": result["steps"], "train_seconds": result["train_seconds"],
            "seconds": time.perf_counter() - started}


def _train_job(job: Job) -> dict[str, float]:
    """One arm of one draw in a worker process, at `threads` torch threads."""
    *args, threads = job
    torch.set_num_threads(threads)
    return train_and_score(*args)


def run_jobs(jobs: list[Job], workers: int) -> list[dict[str, float]]:
    """`train_and_score` per job, results in the jobs' order; with workers > 1 on that many spawned
    processes (on the 2-core box: two, at one torch thread each)."""
    if workers <= 1:
        return [_train_job(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_train_job, jobs))


def summary(values: list[float]) -> dict[str, object]:
    """Mean, half-range and standard error of the mean (None for one draw) of an arm's draws."""
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"d_corr": [round(v, 4) for v in values], "mean": round(float(np.mean(values)), 4),
            "half_range": round((max(values) - min(values)) / 2, 4), "se": None if se is None else round(se, 4)}


def difference(a: dict[str, object], b: dict[str, object]) -> tuple[float, float | None]:
    """Mean of arm a − mean of arm b and the half-width of its normal 95 % interval (independent
    draws; None unless both arms have a standard error)."""
    diff = float(a["mean"]) - float(b["mean"])
    if a["se"] is None or b["se"] is None:
        return diff, None
    return diff, 1.96 * math.hypot(float(a["se"]), float(b["se"]))


def re_proxy(run: list[Row], reference: list[Row], n: int, seeds: int, seed: int, epochs: int,
             batch_size: int, test_rows: int, jobs: int = 1, threads: int = 1) -> dict[str, object]:
    """Every arm over `seeds` draws; the held-out set is fixed by `seed` and excludes the run's
    images and the shipped sample's."""
    n = min([n] + ([len(run)] if run else []))
    test, test_images = held_out(reference, {r["image"] for r in run} | shipped_images(), test_rows, seed)
    chains = [r["positive"] for r in test]
    zero_shot = d_corr(load_encoder(ENCODER, device="cpu"), chains)
    with tempfile.TemporaryDirectory(prefix="re-proxy-") as tmp:
        names, work = [], []
        for draw in range(seeds):
            s = seed + draw
            ref_sample = reference_draw(reference, test_images, n, s)
            draws = {"reference": ref_sample}
            if run:
                draws["release"] = random.Random(f"release:{s}").sample(run, n)
            source = draws.get("release", ref_sample)
            draws["truncation"] = truncation_rows([str(r["positive"][-1]) for r in source], s)
            for arm, rows in draws.items():
                names.append(arm)
                work.append((rows, chains, s, epochs, batch_size, Path(tmp) / f"{arm}-{s}", threads))
        arms: dict[str, list[dict[str, float]]] = {}
        for arm, result in zip(names, run_jobs(work, jobs), strict=True):
            arms.setdefault(arm, []).append(result)
    out = {"n": n, "seeds": seeds, "epochs": epochs, "batch_size": batch_size, "test_rows": len(test),
           "test_images": len(test_images), "truncation_from": "release" if run else "reference",
           "zero_shot": round(zero_shot, 4)}
    for arm, results in arms.items():
        out[arm] = {**summary([r["d_corr"] for r in results]), "steps": results[0]["steps"],
                    "train_seconds": [round(r["train_seconds"], 1) for r in results],
                    "arm_seconds": [round(r["seconds"], 1) for r in results]}
    return out


def print_table(result: dict[str, object]) -> None:
    print(f"RE proxy: MiniLM, N={result['n']} rows, {result['epochs']} epoch(s) of batch {result['batch_size']}, "
          f"{result['seeds']} draw(s); held-out {result['test_rows']} reference chains of "
          f"{result['test_images']} other images; truncation from the {result['truncation_from']} arm's captions")
    print(f"{'arm':12} {'d_corr per draw':>24} {'mean':>8} {'±':>7} {'se':>7} {'lift':>8} {'train s':>14}")
    zero = result["zero_shot"]
    print(f"{'zero-shot':12} {'':>24} {zero:>8.4f} {'':>7} {'':>7} {'':>8} {'':>14}")
    for arm in ("release", "reference", "truncation"):
        if arm in result:
            r = result[arm]
            se = "" if r["se"] is None else f"{r['se']:.4f}"
            print(f"{arm:12} {str(r['d_corr']):>24} {r['mean']:>8.4f} {r['half_range']:>7.4f} {se:>7} "
                  f"{r['mean'] - zero:>+8.4f} {str(r['train_seconds']):>14}")
    if "release" in result:  # issue 11: lift at least the reference's, clearly above truncation
        for other in ("reference", "truncation"):
            diff, half = difference(result["release"], result[other])
            print(f"release - {other}: {diff:+.4f}" + ("" if half is None else f" (95 % interval ±{half:.4f})"))
    print(json.dumps({"re_proxy": result}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--release", type=Path, help="a release directory: its train split is the release arm")
    source.add_argument("--run-dir", type=Path, help="a run with a filter stage (default runs/default)")
    source.add_argument("--reference-only", action="store_true", help="arms 2-4 only: no release arm")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--rows", type=int, default=540, help="N: training rows per arm")
    parser.add_argument("--seeds", type=int, default=1, help="draws of rows and training seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-rows", type=int, default=1000, help="held-out reference chains")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per arm (1: on a shared 2-core box, 2 threads ran 3x slower per step)")
    parser.add_argument("--jobs", type=int, default=1, help="arms trained at once, each in its own process")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or (None if args.release or args.reference_only else Path("runs/default"))
    has_run = args.release is not None or (run_dir is not None and (run_dir / "filter" / "manifest.json").is_file())
    if not args.reference.is_file() or not (has_run or args.reference_only):
        print(f"re_proxy: skipped, needs {args.reference} and a release, a finished run or --reference-only")
        return
    torch.set_num_threads(args.threads)
    run = run_rows(args.release, run_dir)
    if not (run or args.reference_only):
        raise SystemExit(f"re_proxy: no valid rows in {args.release or run_dir}")
    print_table(re_proxy(run, reference_rows(args.reference), args.rows, args.seeds, args.seed, args.epochs,
                         args.batch_size, args.test_rows, args.jobs, args.threads))


if __name__ == "__main__":
    main()
