"""Pipeline cost vs input size: ingest → abstract → negatives → filter at three caption counts.

    python bench/scaling.py [--sizes 64 128 256] [--shards 2] [--threads N]

The LLM, the ordering model and the scorer are loaded once and shared, so the numbers are the
per-caption work of each stage. The ordering model is trained once, on the largest size's
positives. Prints seconds per stage at each size and seconds per caption, so linear growth shows
as a flat per-caption column; all from this one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import timed  # noqa: E402  (first: puts this checkout on sys.path)

from hiercaps_gen.stages.abstract import AbstractStage  # noqa: E402
from hiercaps_gen.config import load_config  # noqa: E402
from hiercaps_gen.stages.filter import FilterStage  # noqa: E402
from hiercaps_gen.stages.ingest import run_ingest  # noqa: E402
from hiercaps_gen.llm.factory import create_generator  # noqa: E402
from hiercaps_gen.stages.negatives import NegativesStage  # noqa: E402
from hiercaps_gen.stages.train_ordering import train_ordering  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shards", type=int, default=2, help="hash shards (few shards keep LLM batches full)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    base = load_config("cpu").with_overrides({"abstract.llm.threads": args.threads, "abstract.max_attempts": 1,
                                          "ingest.num_shards": args.shards})
    generator, load_s = timed(lambda: create_generator(base.abstract.llm))
    print(f"LLM load: {load_s:.1f} s (once)")
    sizes = sorted(args.sizes)
    runs = {n: work / f"n{n}" for n in sizes}
    rows = {}
    for n in sizes:
        config = base.with_overrides({"ingest.limit": n})
        _, ingest_s = timed(lambda: run_ingest(config, runs[n]))
        manifest, abstract_s = timed(lambda: AbstractStage(config, runs[n], generator=generator).run())
        rows[n] = {"ingest": ingest_s, "abstract": abstract_s, "accepted": manifest["totals"]["accepted"]}
    largest = sizes[-1]
    config = base.with_overrides({"ingest.limit": largest})
    _, train_s = timed(lambda: train_ordering(config, runs[largest]))
    print(f"train-ordering on {rows[largest]['accepted']} hierarchies: {train_s:.1f} s (once)")
    for n in sizes:
        config = base.with_overrides({"ingest.limit": n})
        if n != largest:  # reuse the one trained model
            os.symlink(runs[largest] / "train-ordering", runs[n] / "train-ordering")
        _, rows[n]["negatives"] = timed(lambda: NegativesStage(config, runs[n]).run())
        _, rows[n]["filter"] = timed(lambda: FilterStage(config, runs[n]).run())
    stages = ["ingest", "abstract", "negatives", "filter"]
    print(f"{'captions':>8} " + " ".join(f"{s + ' s':>12}" for s in stages) + f" {'total s':>9} {'s/caption':>10}")
    for n in sizes:
        total = sum(rows[n][s] for s in stages)
        print(f"{n:>8} " + " ".join(f"{rows[n][s]:>12.1f}" for s in stages) + f" {total:>9.1f} {total / n:>10.3f}")
    generator.close()


if __name__ == "__main__":
    main()
