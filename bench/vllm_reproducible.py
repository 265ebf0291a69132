"""vLLM across runs: do two fresh engines give the same answers to the same requests, and at what cost?

    python bench/vllm_reproducible.py [--captions 96] [--attempt 1]

Each engine mode runs twice, each run in its own process (a fresh engine, one `generate` call of the
abstract stage's requests for `--captions` sample captions: attempt 1 is greedy, attempt ≥ 2 samples
at the cpu profile's retry temperature with per-request seeds; structured outputs on). Modes:
  child         the engine core in a child process (vLLM's default; `llm.reproducible: false`)
  inproc-async  the engine core in-process, grammars still compiled in vLLM's background pool
  reproducible  in-process and grammars compiled when a request is added (`llm.reproducible: true`)
Prints, per mode, how many answers differ between its two runs, engine start and `generate` seconds,
and the ratio of `generate` time reproducible / child (docs/vllm.md, "Determinism").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, timed  # noqa: E402  (first: puts this checkout on sys.path)

MODES = ("child", "inproc-async", "reproducible")


def one_run(mode: str, captions: int, attempt: int, out: Path) -> None:
    """In this process: build the engine for `mode`, answer the requests once, write texts and times."""
    from abstract_throughput import sample_rows

    from hiercaps_gen.config import RunConfig
    from hiercaps_gen.llm import vllm_backend
    from hiercaps_gen.stages.abstract import AbstractStage

    if mode == "inproc-async":
        vllm_backend.compile_grammars_in_line = lambda engine: None  # measurement only: keep vLLM's pool
    config = RunConfig().with_overrides({
        "abstract.llm.backend": "vllm", "abstract.llm.device": "cpu", "abstract.llm.batch_size": 128,
        "abstract.llm.structured_output": True, "abstract.retry_temperature": 1.0,
        "abstract.llm.reproducible": mode != "child",
    })
    generator, load = timed(lambda: vllm_backend.VLLMGenerator(config.abstract.llm))
    with tempfile.TemporaryDirectory() as tmp:
        stage = AbstractStage(config, Path(tmp), generator=generator)
        requests = [stage.request(row, attempt, 0) for row in sample_rows(captions)]
        generations, seconds = timed(lambda: generator.generate(requests))
    generator.close()
    out.write_text(json.dumps({"texts": [g.text for g in generations], "load_s": load, "generate_s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=96)
    parser.add_argument("--attempt", type=int, default=1, help="1: greedy first attempt; 2+: seeded samples")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.one[0], args.captions, args.attempt, Path(args.one[1]))
        return
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(2):
            for mode in MODES:  # interleaved: a machine whose load drifts hits every mode alike
                out = Path(tmp) / f"{mode}-{run}.json"
                subprocess.run([sys.executable, __file__, "--captions", str(args.captions), "--attempt",
                                str(args.attempt), "--one", mode, str(out)], cwd=REPO, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results.setdefault(mode, []).append(json.loads(out.read_text()))
    print(f"{args.captions} captions, attempt {args.attempt} ({'greedy' if args.attempt == 1 else 'seeded samples'})")
    print(f"{'mode':14} {'differ':>8} {'start s':>14} {'generate s':>14}")
    for mode, (a, b) in results.items():
        differ = sum(x != y for x, y in zip(a["texts"], b["texts"]))
        print(f"{mode:14} {differ:>4}/{len(a['texts']):<3} {a['load_s']:6.1f} {b['load_s']:6.1f}  "
              f"{a['generate_s']:6.1f} {b['generate_s']:6.1f}")
    mean = {m: sum(r["generate_s"] for r in rs) / len(rs) for m, rs in results.items()}
    print(f"generate time reproducible / child: {mean['reproducible'] / mean['child']:.2f}")


if __name__ == "__main__":
    main()
