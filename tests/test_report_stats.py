"""release.stats, the reference reader and the dataset card, on hierarchies with hand-counted answers."""

import csv
import gzip

import pyarrow as pa
import pytest

from hiercaps_gen.config import RunConfig
from hiercaps_gen.release.card import render_card
from hiercaps_gen.release.manifest import ReleaseManifest
from hiercaps_gen.release.stats import funnel, funnel_gaps, hierarchy_stats, word_counts
from hiercaps_gen.release.write import write_release
from hiercaps_gen.report.statistics import read_reference, sample_indices
from hiercaps_gen.hierarchy import FILTERED

from .conftest import synthetic_rows

LEVELS_T = pa.list_(pa.string())

# Two hierarchies whose statistics are counted by hand in the tests below.
POSITIVES = [
    ["animal", "dog", "a dog on grass", "A brown dog on green grass."],
    ["Food", "pizza", "pizza", "A pizza, on a plate"],
]
NEGATIVES = [
    ["vehicle", "cat", "a dog in water", "A dog in the water."],
    ["food", "salad", "a salad", "a salad on a plate"],
]


def known_table() -> pa.Table:
    return pa.table({"positive": pa.array(POSITIVES, LEVELS_T), "negative": pa.array(NEGATIVES, LEVELS_T)})


def test_hierarchy_stats_known_answers():
    stats = hierarchy_stats(known_table())
    pos, neg = stats["positive"], stats["negative"]
    assert stats["rows"] == 2
    assert pos["words_mean"] == [1, 1, 2.5, 5.5] and neg["words_mean"] == [1, 1, 3, 5]
    # animal⊄dog, dog⊂"a dog on grass", all 4 words in the caption; Food⊄pizza, pizza⊂pizza, pizza⊂caption
    assert pos["containment"] == [0, 1, 1] and pos["coverage"] == [0, 1, 1]
    # vehicle⊄cat, cat⊄"a dog in water" but salad⊂"a salad", both level 3s inside their level 4
    assert neg["containment"] == [0, 0.5, 1] and neg["coverage"] == [0, 0.5, 1]
    assert pos["repeated_adjacent"] == 0.5 and neg["repeated_adjacent"] == 0  # "pizza" => "pizza"
    assert stats["negative_equals_positive"] == [0.5, 0, 0, 0]  # "Food" == "food" ignoring case
    assert stats["negative_refines_positive"] == [0, 0.5, 0]  # only positive "dog" ⊂ negative "a dog in water"
    assert pos["distinct_level1"] == 2 and neg["distinct_level1"] == 2


def test_word_counts_and_partial_coverage():
    table = pa.table({
        "positive": pa.array([["thing", "red car", "a red car", "!!"]], LEVELS_T),
        "negative": pa.array([["thing", "blue car", "a blue boat", "a boat"]], LEVELS_T),
    })
    assert word_counts(table["positive"].to_pylist()) == [[1], [2], [3], [0]]  # "!!" holds no word
    stats = hierarchy_stats(table)
    # "a red car" -> "!!" keeps no word; a punctuation-only upper level would count as contained
    assert stats["positive"]["containment"] == [0, 1, 0] and stats["positive"]["coverage"] == [0, 1, 0]
    assert stats["negative"]["coverage"] == [0, 0.5, pytest.approx(2 / 3)]
    assert stats["negative_equals_positive"] == [1, 0, 0, 0]


def test_stats_refuse_short_hierarchies_and_accept_empty_tables():
    bad = pa.table({"positive": pa.array([["a", "b", "c"]], LEVELS_T), "negative": pa.array([["a", "b", "c", "d"]], LEVELS_T)})
    with pytest.raises(ValueError, match="4 levels"):
        hierarchy_stats(bad)
    empty = hierarchy_stats(known_table().slice(0, 0))
    assert empty["rows"] == 0 and empty["positive"]["words_mean"] == [None] * 4


def lineage_manifest(splits=(30, 5), filter_accepted=35) -> dict:
    # JSON manifests are written with sorted keys: the funnel must restore pipeline order itself.
    return {
        "splits": {"train": splits[0], "test": splits[1]},
        "stages": {
            "abstract": {"totals": {"in": 45, "accepted": 40, "rejected": 5, "reasons": {"unparseable": 4, "caption_copied": 1}},
                         "stats": {"shard_seconds": 20.0, "prompt_tokens": 900, "backend": "transformers"}},
            "filter": {"totals": {"in": 38, "accepted": filter_accepted, "rejected": 3, "reasons": {"low_entailment": 3}},
                       "stats": {"shard_seconds": 2.0}},
            "ingest": {"totals": {"in": 50, "accepted": 45, "rejected": 5, "reasons": {"duplicate": 5}},
                       "stats": {"shard_seconds": 0.5}},
            "negatives": {"totals": {"in": 40, "accepted": 38, "rejected": 2, "reasons": {"no_candidate": 1}},
                          "stats": {"shard_seconds": 4.0}},
            "train-ordering": {"totals": {"in": 40, "accepted": 39, "rejected": 1}, "stats": {"seconds": 8.0}},
        },
    }


def as_manifest(fields: dict) -> ReleaseManifest:
    """A typed manifest around `fields` (one placeholder file: a manifest always lists its files)."""
    return ReleaseManifest(name="n", version="1.0.0", files=[{"path": "README.md", "bytes": 0, "sha256": "0" * 64}],
                           **fields)


def test_funnel_order_throughput_and_accounting():
    steps = funnel(as_manifest(lineage_manifest()))
    assert [s.stage for s in steps] == ["ingest", "abstract", "train-ordering", "negatives", "filter", "release"]
    by = {s.stage: s for s in steps}
    assert by["abstract"].throughput == 45 / 20 and by["train-ordering"].throughput == 5.0
    assert by["abstract"].acceptance == 40 / 45 and by["abstract"].counters == {"prompt_tokens": 900.0}
    assert by["abstract"].details == {"backend": "transformers"}
    assert by["negatives"].unexplained_rejects == 1 and by["filter"].unexplained_rejects == 0
    assert by["train-ordering"].unexplained_rejects == 1 and not by["train-ordering"].on_row_path
    assert by["release"].rows_in == 35 and by["release"].seconds is None
    assert funnel_gaps(steps) == []
    assert funnel_gaps(funnel(as_manifest(lineage_manifest(filter_accepted=37)))) == [("filter", "release", -2)]


def test_funnel_without_lineage_is_the_release_alone():
    steps = funnel(as_manifest({"splits": {"train": 7, "test": 2}}))
    assert [(s.stage, s.rows_in) for s in steps] == [("release", 9)] and funnel_gaps(steps) == []


@pytest.mark.parametrize("gz", [False, True])
def test_read_reference_csv_layout(tmp_path, gz):
    rows = [
        [" => ".join(p), " => ".join(n), f"http://images.example/{i}.jpg"] for i, (p, n) in enumerate(zip(POSITIVES, NEGATIVES))
    ] + [["a => b => c", "d => e => f => g", "u"], ["a => b => c => d", "", "u"], ["a =>  => c => d", "e => f => g => h", "u"]]
    path = tmp_path / ("ref.csv.gz" if gz else "ref.csv")
    with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as fh:
        writer = csv.writer(fh)
        writer.writerow(["positive", "negative", "image_url"])
        writer.writerows(rows)
    reference = read_reference(path)
    assert reference.skipped == 3 and reference.table.num_rows == 2
    assert hierarchy_stats(reference.table) == hierarchy_stats(known_table())


def test_read_reference_rejects_other_layouts(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("caption,url\na dog,u\n")
    with pytest.raises(ValueError, match="HierarCaps CSV layout"):
        read_reference(path)


def test_sample_indices_are_seeded():
    assert sample_indices(100, 8, 3) == sample_indices(100, 8, 3)
    assert sample_indices(100, 8, 3) != sample_indices(100, 8, 4)
    assert sample_indices(5, 8, 0) == [0, 1, 2, 3, 4]


def test_dataset_card_uses_the_shared_statistics(tmp_path):
    rows = synthetic_rows(35, seed=2)
    for row in rows:
        row["source"], row["generator_model"] = "coco", "embedded:smollm2@0123abcd"
    rows[0]["positive"][1] = rows[0]["positive"][0]  # one repeated level: 1 of 35 rows
    table = pa.Table.from_pylist(rows, schema=FILTERED)
    stats = hierarchy_stats(table)
    manifest = lineage_manifest(filter_accepted=37)
    release = write_release(table, RunConfig(), "0.1.0", tmp_path, lineage={"stages": manifest["stages"]})
    card = (release / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "COCO Consortium" in card
    assert "SmolLM2-135M-Instruct" in card and "## Intended use" in card and "## Known limitations" in card
    words = " | ".join(f"{v:.2f}" for v in stats["positive"]["words_mean"])
    assert f"| positive | {words} |" in card
    contained = " | ".join(f"{100 * v:.1f}%" for v in stats["positive"]["containment"])
    assert f"| positive → positive | {contained} |" in card and "| positive → negative | 0.0% | 0.0% | 0.0% |" in card
    assert "In 2.9% of rows a positive level repeats the one above it" in card
    assert "| abstract | 45 | 40 | 5 | caption_copied: 1, unparseable: 4 | 2.25 |" in card
    assert "| negatives | 40 | 38 | 2 | no_candidate: 1, (no reason recorded): 1 | 10 |" in card
    assert "Lost between filter and release: 2 rows." in card
    assert card.index("| ingest |") < card.index("| abstract |") < card.index("| filter |") < card.index("| release |")


def test_dataset_card_of_an_unknown_source_says_so():
    table = pa.Table.from_pylist(synthetic_rows(4), schema=FILTERED).append_column("split", pa.array(["train"] * 4))
    card = render_card(as_manifest({"code_version": "0", "config_fingerprint": "f", "license": "L",
                                    "splits": {"train": 4}}), table)
    assert "license: other" in card and "synthetic: licence not recorded" in card
    assert "No notes for this generator" in card
