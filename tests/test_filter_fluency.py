"""The filter's fluency check on shipped data: word salad goes, real caption-like siblings stay.

Planted set: captions of the shipped COCO sample. A fluent sibling is a caption of ANOTHER image
placed as the level-4 negative (and its first words as level 3); a garbled one mixes and shuffles
the words of two captions and breaks one word the way a small sampler does ("ofyy", "bedsc [").
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hiercaps_gen import hierarchy
from hiercaps_gen.config import FilterConfig, REPO_ROOT
from hiercaps_gen.fluency import get_fluency_scorer
from hiercaps_gen.stages.filter import FilterStage, fluency_problems

from .test_filter import NEGATIVE, POSITIVE, negative_row
from .test_ordering_data import tiny_config, write_stage

SAMPLE = REPO_ROOT / "data" / "coco_val2014_sample" / "captions.json"
N = 200  # planted rows per set: at 60, one row was 1.7 % of the rate


def _captions() -> dict[int, list[str]]:
    by_image: dict[int, list[str]] = {}
    for a in json.loads(SAMPLE.read_text(encoding="utf-8"))["annotations"]:
        by_image.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))
    return by_image


def _garble(text: str, other: str, rng: random.Random) -> str:
    words = text.split()[: max(3, len(text.split()) // 2)] + other.split()[: len(other.split()) // 2]
    rng.shuffle(words)
    i = rng.randrange(len(words))
    words[i] = words[i][: max(1, len(words[i]) - 2)] + rng.choice(["yy", "sc [", '"', ")", "##s"])
    return " ".join(words)


def _planted() -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Positives (a caption, its first words) with a fluent sibling and a garbled one each."""
    rng = random.Random(0)
    by_image = _captions()
    images = sorted(by_image)
    positives, fluent, garbled = [], [], []
    for image in rng.sample(images, N):
        caption = by_image[image][0]
        other = by_image[rng.choice([i for i in images if i != image])][0]
        third = by_image[rng.choice(images)][-1]
        positives.append(["thing", "object", " ".join(caption.split()[:4]), caption])
        fluent.append(["place", "animal", " ".join(other.split()[:4]), other])
        garbled.append(["place", "animal", " ".join(_garble(other, third, rng).split()[:4]), _garble(other, third, rng)])
    return positives, fluent, garbled


@pytest.fixture(scope="module")
def nll():
    return get_fluency_scorer("embedded:smollm2", "cpu").nll


def test_fluency_rejects_salad_and_keeps_real_siblings(nll) -> None:
    cfg = FilterConfig()
    positives, fluent, garbled = _planted()
    kept_rejected = sum(p is not None for p in fluency_problems(cfg, positives, fluent, nll))
    salad_rejected = sum(p is not None for p in fluency_problems(cfg, positives, garbled, nll))
    assert salad_rejected >= 0.95 * N, (salad_rejected, N)
    assert kept_rejected <= 0.05 * N, (kept_rejected, N)


def test_nll_orders_text_by_fluency(nll) -> None:
    scores = nll(["A dog sleeping on a couch.", "couch a on sleeping dog A.", "dgo a shcoulp sl [ ,"])
    assert scores.shape == (3,) and np.all(np.diff(scores) > 0), scores


def test_not_fluent_is_a_counted_reason_in_the_ledger(tmp_path: Path, nll) -> None:
    salad = ["vehicle", "cat", 'a distance of bowl ofyy pizza', 'a man" vegetable 1 blankets in a ) bedsc [ s.']
    rows = [negative_row(0, POSITIVE, NEGATIVE), negative_row(1, POSITIVE, salad)]
    write_stage(tmp_path, "negatives", hierarchy.NEGATIVE, rows)
    manifest = FilterStage(tiny_config(**{"filter.fluency_model": "embedded:smollm2"}), tmp_path).run()
    assert manifest["totals"]["accepted"] == 1 and manifest["totals"]["reasons"] == {"not_fluent": 1}
    rejects = [r for p in (tmp_path / "filter" / "rejects").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert rejects[0]["id"] == "test-00001" and "NLL/token negative" in rejects[0]["detail"]
