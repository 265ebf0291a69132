"""The HTML report on a small release: numbers against hand-made answers and the real offline
encoder, figures that are real labelled plots, and the page as headless Chromium renders it."""

import base64
import csv
import gzip
import itertools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from hiercaps_gen.cli import main as cli_main
from hiercaps_gen.config import RunConfig
from hiercaps_gen.encoders import get_embedder
from hiercaps_gen.release import read_release, write_release
from hiercaps_gen.report.report import build_report
from hiercaps_gen.report.statistics import Dataset, encoder_profile, sample_indices
from hiercaps_gen.hierarchy import FILTERED

from .conftest import synthetic_rows

FIGURES = ["funnel.png", "words_per_level.png", "containment.png", "root_distance.png", "tau.png"]
HIERARCHIES = [  # (positive, negative, filter score)
    (["animal", "dog", "a dog on the grass", "A brown dog lying on the green grass."],
     ["vehicle", "cat", "a dog in the water", "A dog swimming in the water."], 0.9),
    (["food", "pizza", "a pizza on a plate", "A large pizza with olives on a white plate."],
     ["furniture", "salad", "a pizza in a box", "A pizza in a cardboard box on a table."], 0.2),
    (["vehicle", "bus", "a red bus on a street", "A red double decker bus driving down a city street."],
     ["building", "train", "a bus in a garage", "A bus parked in a garage at night."], 0.5),
    (["sport", "tennis", "a man playing tennis", "A man swinging a tennis racket on a clay court."],
     ["sport", "golf", "a man watching tennis", "A man watching a tennis match from the stands."], 0.05),
    (["bird", "seagull", "a seagull on a pier", "A white seagull standing on a wooden pier."],
     ["bird", "pigeon", "a seagull in the sky", "A seagull flying over the sea."], 0.7),
]
LINEAGE = {
    "models": {"generator": "embedded:smollm2@0123abcd", "ordering": "embedded:t5-minilm-vocab@4567"},
    "stages": {
        "ingest": {"fingerprint": "aaa", "totals": {"in": 8, "accepted": 7, "rejected": 1, "reasons": {"duplicate": 1}},
                   "stats": {"shard_seconds": 0.5}},
        "abstract": {"fingerprint": "bbb", "totals": {"in": 7, "accepted": 6, "rejected": 1, "reasons": {"unparseable": 1}},
                     "stats": {"shard_seconds": 14.0, "prompt_tokens": 2000, "generator_model": "embedded:smollm2@0123abcd"}},
        "negatives": {"fingerprint": "ccc", "totals": {"in": 6, "accepted": 6, "rejected": 0, "reasons": {}},
                      "stats": {"shard_seconds": 3.0}},
        "filter": {"fingerprint": "ddd", "totals": {"in": 6, "accepted": 5, "rejected": 1, "reasons": {"low_entailment": 1}},
                   "stats": {"shard_seconds": 1.0}},
    },
}


def release_rows() -> list[dict]:
    rows = synthetic_rows(len(HIERARCHIES), seed=1, images=len(HIERARCHIES))
    for row, (positive, negative, score) in zip(rows, HIERARCHIES):
        row.update(positive=positive, negative=negative, caption=positive[-1], filter_score=score,
                   source="coco", generator_model=LINEAGE["models"]["generator"])
    return rows


def write_reference(path: Path) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["positive", "negative", "image_url"])
        for positive, negative, _ in HIERARCHIES[:3]:
            writer.writerow([" => ".join(positive), " => ".join(negative), "http://images.example/1.jpg"])
        writer.writerow(["only => three => levels", "a => b => c => d", "http://images.example/2.jpg"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    table = pa.Table.from_pylist(release_rows(), schema=FILTERED)
    release = write_release(table, RunConfig(), "0.1.0", root / "releases", LINEAGE)
    write_reference(root / "reference.csv.gz")
    page = build_report(release, root / "out", reference=root / "reference.csv.gz", seed=3)
    return {"root": root, "release": release, "page": page,
            "json": json.loads((root / "out" / "report.json").read_text())}


def brute_tau(distances: list[float]) -> float:
    """Kendall τ of 4 untied distances against levels 1..4, pair by pair."""
    pairs = list(itertools.combinations(range(4), 2))
    return sum(np.sign(distances[j] - distances[i]) for i, j in pairs) / len(pairs)


def test_statistics_have_the_known_answers(report):
    stats = report["json"]["stats"]["release"]
    assert stats["rows"] == 5
    assert stats["positive"]["words_mean"] == [1, 1, 5, 9]
    # 1→2 never contained, 2→3 always, 3→4 except "on" (bus) and "playing" (tennis) missing from the caption
    assert stats["positive"]["containment"] == [0, 1, pytest.approx(3 / 5)]
    assert stats["negative_equals_positive"] == [pytest.approx(2 / 5), 0, 0, 0]  # sport/sport, bird/bird
    reference = report["json"]["stats"][report["json"]["datasets"][1]]
    assert reference["rows"] == 3 and reference["skipped"] == 1
    assert reference["positive"]["words_mean"] == [1, 1, pytest.approx(16 / 3), 9]
    funnel = {s["stage"]: s for s in report["json"]["funnel"]}
    assert [s["stage"] for s in report["json"]["funnel"]] == ["ingest", "abstract", "negatives", "filter", "release"]
    assert funnel["abstract"]["rows_per_second"] == pytest.approx(0.5) and funnel["release"]["in"] == 5
    assert report["json"]["funnel_gaps"] == []
    lineage = report["page"].read_text().split('id="lineage"')[1]
    assert "<td>abstract</td><td><code>bbb</code></td><td>14.0</td><td>0.5</td>" in lineage
    assert "generator_model: <code>embedded:smollm2@0123abcd</code>" in lineage and "prompt_tokens=2000" in lineage
    assert "SmolLM2-135M-Instruct" in lineage and "COCO Consortium" in lineage


def test_root_distances_and_d_corr_match_the_encoder(report):
    texts = [t for positive, _, _ in HIERARCHIES for t in positive]
    embedded = get_embedder().encode(texts + [""])
    distance = dict(zip(texts, np.linalg.norm(embedded[:-1] - embedded[-1], axis=1).tolist()))
    taus, level_means = [], np.zeros(4)
    for positive, _, _ in HIERARCHIES:
        distances = [distance[t] for t in positive]
        taus.append(brute_tau(distances))
        level_means += np.array(distances) / len(HIERARCHIES)
    profile = report["json"]["encoder_profiles"]["release"]
    assert profile["rows"] == 5
    assert profile["positive_root_distance"]["mean"] == pytest.approx(level_means.tolist(), abs=1e-4)
    assert profile["d_corr"] == pytest.approx(np.mean(taus), abs=1e-6)
    assert profile["fraction_perfect_order"] == pytest.approx(np.mean(np.isclose(taus, 1.0)))
    assert report["json"]["headline"]["d_corr (zero-shot)"][0] == f"{np.mean(taus):.3f}"


def test_encoder_profile_samples_rows_under_the_seed():
    table = pa.Table.from_pylist(release_rows(), schema=FILTERED)
    profile = encoder_profile(get_embedder(), Dataset("release", table), max_rows=2, seed=7)
    assert profile["rows"] == 2 and profile["indices"] == sample_indices(5, 2, 7) and len(profile["tau"]) == 2


def test_figures_are_labelled_plots_embedded_in_the_page(report):
    out, page = report["root"] / "out", report["page"].read_text()
    assert report["json"]["figures"] == FIGURES
    for name in FIGURES:
        data = (out / name).read_bytes()
        with Image.open(out / name) as image:
            assert image.width > 300 and image.height > 200
            pixels = np.asarray(image.convert("L"), dtype=float)
            assert pixels.std() > 5, f"{name} is blank"
            axes = json.loads(image.info["Description"])
        assert axes and all(a["xlabel"] and a["ylabel"] for a in axes), name
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in page
    links = re.findall(r'(?:src|href)="([^"]+)"', page)  # self-contained: data: URIs and the PNGs beside it
    assert sorted(link for link in links if not link.startswith("data:image/png;base64,")) == sorted(FIGURES)


def test_samples_are_seeded_and_worst_first(report):
    ids = read_release(report["release"])["id"].to_pylist()
    samples = report["json"]["samples"]
    assert samples["random"] == [ids[i] for i in sample_indices(5, 8, 3)]
    scores = dict(zip(ids, read_release(report["release"])["filter_score"].to_pylist()))
    assert samples["lowest_filter_score"] == sorted(ids, key=scores.get)
    page = report["page"].read_text()
    assert "A man swinging a tennis racket on a clay court." in page and "A pizza in a cardboard box on a table." in page


def test_cli_report_is_deterministic(report):
    out = report["root"] / "again"
    argv = ["report", "--release", str(report["release"]), "--out", str(out),
            "--reference", str(report["root"] / "reference.csv.gz"), "--seed", "3"]
    assert cli_main(argv) == 0
    assert (out / "index.html").read_bytes() == report["page"].read_bytes()
    assert all((out / n).read_bytes() == (report["root"] / "out" / n).read_bytes() for n in FIGURES)


class PageShape(HTMLParser):
    """Body attributes, and the number of body rows of each table."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.tables: list[int] = []
        self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "table":
            self.tables.append(0)
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.tables[-1] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               report["page"].as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    shape = PageShape()
    shape.feed(dom)
    assert shape.body.get("data-images") == str(len(FIGURES))
    assert shape.body.get("data-images-loaded") == str(len(FIGURES)), "a figure did not load"
    assert len(shape.tables) >= 10 and all(rows > 0 for rows in shape.tables), shape.tables
    for section in ("funnel", "shape", "encoder", "comparison", "samples", "lineage"):
        assert f'id="{section}"' in dom


def test_report_of_an_empty_release(tmp_path):
    release = write_release(FILTERED.empty_table(), RunConfig(), "0.0.1", tmp_path / "releases")
    page = build_report(release, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["stats"]["release"]["rows"] == 0 and summary["encoder_profiles"]["release"]["d_corr"] is None
    assert "No stage lineage was recorded" in page.read_text()
    assert all((tmp_path / "out" / name).stat().st_size > 0 for name in FIGURES)


def test_release_text_is_escaped_by_the_template(tmp_path):
    rows = release_rows()[:2]
    hostile = "<script>alert('x')</script> & a dog"
    rows[0].update(id="<b>id</b>", positive=["animal", "dog", hostile, rows[0]["caption"]])
    lineage = {"models": {"<i>role</i>": "m&m"}, "stages": {}}
    release = write_release(pa.Table.from_pylist(rows, schema=FILTERED), RunConfig(), "0.1.0",
                            tmp_path / "releases", lineage)
    page = build_report(release, tmp_path / "out", sample_size=2, max_encoded_rows=2).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; a dog" in page
    assert "<b>id</b>" not in page and "&lt;b&gt;id&lt;/b&gt;" in page
    assert "<td>&lt;i&gt;role&lt;/i&gt;</td><td><code>m&amp;m</code></td>" in page
