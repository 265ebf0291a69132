"""Quality panel of a run's released rows against the authors' reference (measurement only).

Prints, for the rows that passed the filter (= the release rows) of RUN and for a seeded sample of
the reference CSV (`../shared/data/hierarcaps_reference_sample.csv.gz`, never shipped or trained
on): fluency as mean per-token NLL under the shipped SmolLM2-135M per side and level, the
fluency ratio (negative ÷ positive, sums of levels 3+4; issue 11 target ≤ 1.10), mean words per
level with the deviation from the reference (target ±20 %), and the funnel: captions ingested →
rows released, with every reject reason. Usage:
    python bench/quality.py --run-dir runs/default [--reference PATH] [--rows 300] [--re-proxy]
`--re-proxy` then runs `bench/re_proxy.py --run-dir RUN` with its defaults (MiniLM RE-fine-tuned
on N of these rows vs N reference rows vs a no-LLM truncation baseline; minutes on a CPU).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from hiercaps_gen.fluency import FluencyScorer
from hiercaps_gen.hierarchy import words
from hiercaps_gen.stages.base import load_manifest, read_stage_rows

LEVELS = 4
STAGES = ("ingest", "abstract", "negatives", "filter")


def reference_rows(path: Path, n: int, seed: int) -> list[dict[str, list[str]]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [{"positive": r["positive"].split(" => "), "negative": r["negative"].split(" => ")}
                for r in csv.DictReader(fh)]
    rows = [r for r in rows if len(r["positive"]) == LEVELS == len(r["negative"])]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def panel(scorer: FluencyScorer, rows: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for side in ("positive", "negative"):
        nll = scorer.nll([r[side][k] for r in rows for k in range(LEVELS)]).reshape(len(rows), LEVELS)
        out[f"{side}_nll"] = nll.mean(0).round(3).tolist()
        out[f"{side}_words"] = [round(float(np.mean([len(words(r[side][k])) for r in rows])), 3) for k in range(LEVELS)]
    out["fluency_ratio_34"] = [round(sum(out["negative_nll"][2:]) / sum(out["positive_nll"][2:]), 3)]
    return out


def funnel(run_dir: Path) -> dict[str, object]:
    totals = {s: load_manifest(run_dir, s)["totals"] for s in STAGES}
    reasons: Counter[str] = Counter()
    for stage in STAGES:
        reasons.update({f"{stage}:{k}": v for k, v in (totals[stage].get("reasons") or {}).items()})
    captions, released = totals["ingest"]["accepted"], totals["filter"]["accepted"]
    return {"captions": captions, "released": released, "released_share": round(released / captions, 3),
            "reasons": dict(reasons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="a run with a filter stage")
    parser.add_argument("--reference", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/hierarcaps_reference_sample.csv.gz")
    parser.add_argument("--rows", type=int, default=300, help="rows per side scored for fluency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--re-proxy", action="store_true", help="also run bench/re_proxy.py on this run")
    args = parser.parse_args()
    if not (args.run_dir / "filter" / "manifest.json").is_file() or not args.reference.is_file():
        print(f"quality: skipped, needs a finished run ({args.run_dir}/filter, e.g. `make all`) and {args.reference}")
        return

    released = read_stage_rows(args.run_dir, "filter")
    sample = random.Random(args.seed).sample(released, min(args.rows, len(released)))
    scorer = FluencyScorer("embedded:smollm2", "cpu")
    ours, ref = panel(scorer, sample), panel(scorer, reference_rows(args.reference, args.rows, args.seed))
    print(json.dumps({"funnel": funnel(args.run_dir)}, indent=1))
    print(f"{'metric':18} {'this run':>34} {'reference':>34}")
    for key in ours:
        print(f"{key:18} {str(ours[key]):>34} {str(ref[key]):>34}")
    for side in ("positive", "negative"):
        dev = [round(100 * (a / b - 1), 1) for a, b in zip(ours[f"{side}_words"], ref[f"{side}_words"])]
        print(f"{side} words vs reference (%): {dev}  within ±20%: {all(abs(d) <= 20 for d in dev)}")
    examples = random.Random(args.seed + 1).sample(released, min(5, len(released)))
    for r in examples:
        print("P:", " => ".join(r["positive"]), "\nN:", " => ".join(r["negative"]))
    if args.re_proxy:
        from re_proxy import main as re_proxy  # bench/ is on sys.path when this runs as a script

        re_proxy(["--run-dir", str(args.run_dir), "--reference", str(args.reference), "--seed", str(args.seed)])


if __name__ == "__main__":
    main()
