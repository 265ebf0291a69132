"""evaluate: d_corr and retrieval on hand-computed cases, test-set formats, the before/after run."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import kendalltau

from hiercaps_gen.config import RunConfig
from hiercaps_gen.encoders import load_encoder
from hiercaps_gen.geometry import kendall_tau, root_distances, shows_order
from hiercaps_gen.stages.evaluate import d_corr, evaluate, load_test_rows, retrieve_hierarchy
from hiercaps_gen.stages.finetune import finetune
from tests.test_finetune import HIERARCHIES, release_rows, tiny_clip_encoder, tiny_sentence_encoder, write_release

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize(
    ("distances", "expected"),
    [
        ([1, 2, 3, 4], 1.0),
        ([4, 3, 2, 1], -1.0),
        ([1, 3, 2, 4], (5 - 1) / 6),  # one discordant pair of six
        ([1, 1, 2, 3], 5 / math.sqrt(6 * 5)),  # τ-b: one tied pair leaves 5 in the denominator
    ],
)
def test_kendall_tau_hand_cases(distances: list[float], expected: float) -> None:
    tau = kendall_tau(np.array([distances], dtype=float))[0]
    assert tau == pytest.approx(expected)
    assert tau == pytest.approx(kendalltau([1, 2, 3, 4], distances).statistic)


def test_kendall_tau_all_tied_is_nan_and_fails_every_order_check() -> None:
    assert math.isnan(kendall_tau(np.array([[2.0, 2.0, 2.0, 2.0]]))[0])
    tied = float(kendall_tau([2.0, 2.0, 2.0, 2.0]))
    assert not shows_order(tied, -1.0) and shows_order(float(kendall_tau([1, 3, 2, 4])), 0.6)


def test_kendall_tau_rows_equal_one_row_at_a_time() -> None:
    rows = np.random.default_rng(0).normal(size=(20, 4)).round(1)  # rounding makes some ties
    assert np.allclose(kendall_tau(rows), [float(kendall_tau(r)) for r in rows])


class AngleEncoder:
    """Texts placed on the unit circle at known angles from the root ("" at angle 0): the root
    distance of angle θ is the chord 2·sin(θ/2), so the expected numbers follow by hand."""

    def __init__(self, degrees: dict[str, float]) -> None:
        self.degrees = {"": 0.0, **degrees}

    def encode(self, texts: list[str]) -> np.ndarray:
        rad = np.radians([self.degrees[t] for t in texts])
        return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_root_distances_and_d_corr_hand_case() -> None:
    encoder = AngleEncoder({"a1": 10, "a2": 20, "a3": 30, "a4": 40, "b1": 10, "b2": 30, "b3": 20, "b4": 40})
    chains = [["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]]
    distances = root_distances(encoder, chains)
    assert distances[0] == pytest.approx([2 * math.sin(math.radians(d) / 2) for d in (10, 20, 30, 40)])
    assert d_corr(encoder, chains) == pytest.approx((1.0 + 4 / 6) / 2)


def test_retrieval_sweeps_thresholds_and_deduplicates() -> None:
    # candidates' root distances and their similarity to the image (first coordinate; image = e1)
    dist = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    sims = np.array([0.9, 0.2, 0.95, 0.5, 0.1])
    cand = np.stack([sims, np.sqrt(1 - sims**2)], axis=1)
    # thresholds 0.1..0.5 pick the best candidate within reach: 1, 3, 0, 0, 2 -> de-duplicated
    assert retrieve_hierarchy(np.array([1.0, 0.0]), cand, dist) == [1, 3, 0, 2]


def test_loads_release_dir_parquet_and_authors_csv(tmp_path: Path) -> None:
    rows = release_rows(6, "test")
    rows[2]["negative"] = rows[2]["negative"][:3]
    release = write_release(tmp_path / "release", release_rows(4, "train"), test=rows)
    loaded, skipped = load_test_rows(release)
    assert len(loaded) == 5 and skipped == 1
    assert loaded[0].positive == tuple(HIERARCHIES[0][0].split(" => "))
    assert load_test_rows(release / "data" / "test-00000-of-00001.parquet", limit=2)[0] == loaded[:2]

    csv_path = tmp_path / "ref.csv.gz"
    with gzip.open(csv_path, "wt", encoding="utf-8") as fh:
        fh.write("positive,negative,image_url\n")
        for positive, negative in HIERARCHIES[:3]:
            fh.write(f'"{positive}","{negative}",http://images.example/x.jpg\n')
        fh.write('"only => two",x => y,http://images.example/y.jpg\n')
    from_csv, skipped_csv = load_test_rows(csv_path)
    assert [r.positive for r in from_csv] == [tuple(p.split(" => ")) for p, _ in HIERARCHIES[:3]]
    assert skipped_csv == 1 and from_csv[0].image_url == "http://images.example/x.jpg"


def _images(directory: Path, count: int) -> Path:
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(directory / f"img{i}.jpg")
    return directory


def test_evaluate_clip_with_images_before_and_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = write_release(tmp_path / "release", release_rows(4, "train"))
    images = _images(tmp_path / "images", len(HIERARCHIES) - 1)  # the last row's image is missing
    metrics = evaluate(tiny_clip_encoder(seed=0), release, tmp_path / "eval", images_dir=images,
                       baseline=tiny_clip_encoder(seed=1))
    assert metrics == json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["rows"] == len(HIERARCHIES)
    for side in ("before", "after"):
        assert -1 <= metrics[side]["d_corr"] <= 1
        retrieval = metrics[side]["retrieval"]
        assert retrieval["rows"] == len(HIERARCHIES) - 1 and retrieval["missing_rows"] == 1
        assert 0 <= retrieval["precision"] <= 1 and 0 <= retrieval["recall"] <= 1
        assert len(metrics[side]["positive_root_distance"]["mean"]) == 4
    assert metrics["delta_d_corr"] == pytest.approx(metrics["after"]["d_corr"] - metrics["before"]["d_corr"])
    assert -1 <= metrics["retention"] < 0.999  # two different random encoders
    with Image.open(tmp_path / "eval" / "root_distance.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    printed = capsys.readouterr().out
    assert "d_corr" in printed and "before" in printed and "precision" in printed


def test_evaluate_compares_a_tuned_encoder_with_its_base(tmp_path: Path) -> None:
    """A finetune output directory names its base; evaluate loads it as the 'before' column."""
    base_dir = tmp_path / "base"
    encoder = tiny_sentence_encoder()
    encoder.base = str(base_dir)
    encoder.save(base_dir)
    release = write_release(tmp_path / "release", release_rows(16, "train"))
    config = RunConfig().with_overrides({"finetune.device": "cpu", "finetune.learning_rate": 3e-3,
                                         "finetune.batch_size": 4})
    tuned = finetune(config, release, tmp_path / "ft", encoder=str(base_dir), progress=False)["encoder_dir"]
    metrics = evaluate(tuned, release, tmp_path / "eval")
    assert metrics["baseline"] == str(base_dir) and metrics["encoder"] == tuned
    base_only = load_encoder(base_dir, device="cpu")
    assert not base_only.tuned
    assert metrics["before"]["d_corr"] == pytest.approx(d_corr(base_only, [h.split(" => ") for h, _ in HIERARCHIES]))
    assert 0.5 < metrics["retention"] < 1.0
    assert "retrieval" not in metrics["after"]  # no images, no image tower

    alone = evaluate(base_dir, release, tmp_path / "eval-base")
    assert alone["before"] is None and alone["retention"] is None


def test_evaluate_encodes_unit_vectors(tmp_path: Path) -> None:
    encoder = tiny_clip_encoder()
    vectors = encoder.encode(["", "a dog", "a dog playing in a park"])
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
