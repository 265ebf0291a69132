"""Shared test data for the ordering, negatives and filter tests: an `abstract` stage on disk.

The hierarchies in tests/data/hierarchies.txt are hand-written for this project; writing them as a
real `abstract` stage (shards + manifest) lets the downstream stages run exactly as in a pipeline.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa

from hiercaps_gen import hierarchy
from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.train_ordering import train_ordering
from hiercaps_gen.stages.base import ShardOutput, shard_name, stage_dir, write_shard, write_stage_manifest

DATA = Path(__file__).parent / "data" / "hierarchies.txt"


def load_hierarchies(limit: int | None = None) -> list[list[str]]:
    lines = [ln for ln in DATA.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    return [[p.strip() for p in ln.split("=>")] for ln in lines[:limit]]


def positive_row(index: int, positive: list[str], origin: str = "llm") -> dict:
    return {
        "id": f"test-{index:05d}", "source": "test", "source_id": str(index), "image_id": str(index // 5),
        "image_url": f"http://example.invalid/{index // 5}.jpg", "caption": positive[-1], "positive": positive,
        "positive_origin": origin, "generator_model": "hand-written", "prompt_version": "none",
        "prompt_hash": "none", "seed": 0, "attempts": 1,
    }


def write_stage(run_dir: Path, stage: str, schema_: pa.Schema, rows: list[dict], shards: int = 2) -> dict:
    """Write `rows` as a completed stage `stage` with `shards` shards (no rejects)."""
    directory = stage_dir(run_dir, stage)
    records = []
    for i in range(shards):
        part = rows[i::shards]
        records.append(write_shard(directory, stage, shard_name(i), schema_, ShardOutput(part, []),
                                   len(part), "test", None, 0.0))
    return write_stage_manifest(directory, stage, "test", {}, records)


def write_abstract(run_dir: Path, rows: list[dict], shards: int = 2) -> dict:
    return write_stage(run_dir, "abstract", hierarchy.POSITIVE, rows, shards)


def hierarchy_rows(limit: int | None = None) -> list[dict]:
    return [positive_row(i, p) for i, p in enumerate(load_hierarchies(limit))]


TINY = {
    "ordering.d_model": 64, "ordering.layers": 2, "ordering.heads": 2, "ordering.d_ff": 256,
    "ordering.max_steps": 80, "ordering.batch_size": 16, "ordering.learning_rate": 3e-3,
    "ordering.eval_every": 40, "ordering.device": "cpu", "negatives.batch_size": 128,
    "filter.device": "cpu", "ordering.threads": 1, "filter.threads": 1,
    "filter.fluency_model": None,  # the fluency check has its own tests (test_filter_fluency.py)
}
_TRAINED: dict[int, Path] = {}


def tiny_config(**overrides: object) -> RunConfig:
    return RunConfig().with_overrides({**TINY, **overrides})


def trained_run(limit: int = 60) -> Path:
    """An abstract stage of `limit` hand-written hierarchies plus a tiny trained ordering model.

    Built once per test session (training is the slow part) and copied by each caller.
    """
    if limit not in _TRAINED:
        root = tempfile.mkdtemp(prefix="hiercaps-ordering-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        run_dir = Path(root) / "run"
        config = tiny_config()
        write_abstract(run_dir, hierarchy_rows(limit))
        train_ordering(config, run_dir)
        _TRAINED[limit] = run_dir
    return _TRAINED[limit]
