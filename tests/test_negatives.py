"""negatives: siblings sampled from the trained ordering model, checked, seeded, all rows counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hiercaps_gen.encoders import get_embedder
from hiercaps_gen.stages.negatives import NegativesStage
from hiercaps_gen.ordering.model import torch_threads
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.hierarchy import dedup_key

from .test_ordering_data import hierarchy_rows, tiny_config, trained_run, write_abstract

POSITIVE = ["animal", "dog", "a dog on a couch", "A small white dog asleep on a grey couch."]


def _copy(tmp_path: Path, name: str = "run", rows: int | None = None) -> Path:
    """A copy of the trained run; with `rows`, its abstract stage cut to that many hierarchies
    (the model stays the one trained on all of them: the negatives stage only samples from it)."""
    run_dir = tmp_path / name
    shutil.copytree(trained_run(), run_dir)
    if rows is not None:
        shutil.rmtree(run_dir / "abstract")
        write_abstract(run_dir, hierarchy_rows(rows))
    return run_dir


def _rejects(run_dir: Path) -> list[dict]:
    files = sorted((run_dir / "negatives" / "rejects").glob("*.parquet"))
    return [r for p in files for r in pq.read_table(p).to_pylist()]


def _sims(texts: list[str]) -> np.ndarray:
    embedder = get_embedder("embedded:minilm", "cpu")
    with torch_threads(1):
        return embedder.encode(texts) @ embedder.encode(POSITIVE).T


@pytest.mark.parametrize(
    ("text", "level", "problem"),
    [
        ("a dog on a couch", 2, "same_as_positive"),
        ("A dog on a couch.", 2, "same_as_positive"),
        ("dogs", 1, "paraphrase"),
        ("animal", 1, "ancestor"),
        ("anything", 0, "ancestor"),
        ("a dog on a couch", 1, "descendant"),
        ("", 3, "malformed"),
        ("cat => kitten", 1, "malformed"),
        ("cat = > kitten", 1, "malformed"),
        ("a sleeping cat", 3, "not_a_sentence"),
        ("cat", 1, None),
        ("vehicle", 0, None),
        ("a big brown dog with a red collar", 1, "too_long"),
        ("a cat on a couch. A cat on a couch. A cat on a couch. A cat on a couch. A cat on a couch.", 3, "too_long"),
        ("a striped cat sleeping on a wooden bench", 3, None),
    ],
)
def test_candidate_checks(tmp_path: Path, text: str, level: int, problem: str | None) -> None:
    stage = NegativesStage(tiny_config(**{"negatives.paraphrase_threshold": 0.8}), tmp_path)
    assert stage.candidate_problem(text, level, _sims([text])[0], POSITIVE) == problem


def test_negatives_are_siblings_not_positives_and_every_row_counted(tmp_path: Path) -> None:
    run_dir = _copy(tmp_path)
    manifest = NegativesStage(tiny_config(), run_dir).run()
    totals = manifest["totals"]
    assert totals["in"] == 60 == totals["accepted"] + totals["rejected"]
    assert totals["accepted"] > 0
    assert set(totals["reasons"]) <= {"no_valid_negative"}
    ordering_hash = json.loads((run_dir / "train-ordering" / "manifest.json").read_text())["model_hash"]
    for row in read_stage_rows(run_dir, "negatives"):
        assert len(row["negative"]) == 4 and all(n.strip() for n in row["negative"])
        positives = {dedup_key(p) for p in row["positive"]}
        assert not positives & {dedup_key(n) for n in row["negative"]}
        assert len(row["negative"][3].split()) >= 5
        assert row["ordering_model_hash"] == ordering_hash
    stats = manifest["stats"]
    assert len(stats["negative"]["words_mean"]) == 4 and len(stats["positive"]["containment"]) == 3
    assert stats["candidates_examined"] >= 4 * totals["accepted"]
    for reject in _rejects(run_dir):
        assert reject["reason"] == "no_valid_negative" and "level" in reject["detail"]


def test_same_seed_same_negatives_other_seed_other_negatives(tmp_path: Path) -> None:
    outputs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = _copy(tmp_path, name, rows=12)
        config = tiny_config()
        config = config.with_overrides({"seed": seed}) if seed else config
        stage = NegativesStage(config, run_dir)
        # train-ordering's fingerprint includes the seed, but the model on disk is the same one:
        # only the sampling seed differs between "a"/"b" and "c".
        stage.run()
        outputs[name] = {r["id"]: r["negative"] for r in read_stage_rows(run_dir, "negatives")}
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_a_retrained_model_redoes_the_shards(tmp_path: Path) -> None:
    run_dir = _copy(tmp_path)
    stage = NegativesStage(tiny_config(), run_dir)
    before = stage.fingerprint()
    manifest_path = run_dir / "train-ordering" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "model_hash": "0" * 16}))
    assert NegativesStage(tiny_config(), run_dir).fingerprint() != before
