"""The RE proxy bench's pure parts: the no-LLM truncation baseline, the held-out and reference draws."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.re_proxy import (
    difference, held_out, image_key, reference_draw, shipped_images, summary, truncation_levels, truncation_rows,
)
from hiercaps_gen.hierarchy import is_hierarchy

SHIPPED = Path(__file__).resolve().parents[1] / "data/coco_val2014_sample/captions.json"


def shipped_captions(n: int) -> list[str]:
    return [a["caption"] for a in json.loads(SHIPPED.read_text(encoding="utf-8"))["annotations"][:n]]


def test_levels_are_last_word_two_words_six_words_caption():
    caption = "A black Honda motorcycle parked in front of a garage."
    assert truncation_levels(caption) == ["garage", "A black", "A black Honda motorcycle parked in", caption]
    assert truncation_levels("a man riding a horse .")[0] == "horse"  # a trailing " ." is not the last word


@given(st.text(min_size=1).filter(str.strip))
def test_levels_are_a_hierarchy_ordered_by_length(caption):
    levels = truncation_levels(caption)
    assert is_hierarchy(levels) and levels[-1] == caption
    assert [len(t.split()) for t in levels[1:]] == sorted(len(t.split()) for t in levels[1:])
    assert len(levels[0].split()) == 1 or levels[0] == caption


def test_rows_are_seeded_and_negatives_come_from_another_caption():
    captions = list(dict.fromkeys(shipped_captions(60)))
    rows = truncation_rows(captions, seed=3)
    assert rows == truncation_rows(captions, seed=3)
    assert rows != truncation_rows(captions, seed=4)
    for caption, row in zip(captions, rows):
        assert row["positive"] == truncation_levels(caption)
        assert row["negative"][-1] in captions and row["negative"][-1] != caption


def test_held_out_takes_whole_images_outside_the_excluded_ones():
    reference = [{"id": f"r{i}", "image": f"img{i % 7}.jpg", "positive": [], "negative": []} for i in range(70)]
    rows, images = held_out(reference, exclude={"img0.jpg", "img1.jpg"}, test_rows=25, seed=0)
    assert len(rows) == 25 and {r["image"] for r in rows} <= images
    assert not images & {"img0.jpg", "img1.jpg"}
    assert len(images) == 3  # 10 rows per image: the third image completes 25
    assert (rows, images) == held_out(reference, {"img0.jpg", "img1.jpg"}, 25, 0)


def test_held_out_set_moves_only_by_the_images_a_release_adds():
    reference = [{"id": f"r{i}", "image": f"img{i}.jpg", "positive": [], "negative": []} for i in range(400)]
    _, base = held_out(reference, exclude=set(), test_rows=100, seed=0)
    outside = sorted({r["image"] for r in reference} - base)
    _, other = held_out(reference, exclude=set(outside[:20]), test_rows=100, seed=0)
    assert other == base  # excluding images it never held leaves the held-out set as it was
    _, fewer = held_out(reference, exclude={sorted(base)[0]}, test_rows=100, seed=0)
    assert len(fewer & base) == len(base) - 1  # excluding one of its images swaps that one only


def test_reference_draw_moves_only_by_the_held_out_images():
    reference = [{"id": f"r{i}", "image": f"img{i // 4}.jpg", "positive": [], "negative": []} for i in range(400)]
    base = reference_draw(reference, exclude=set(), n=50, seed=0)
    assert len(base) == 50 and base == reference_draw(reference, set(), 50, 0)
    assert base != reference_draw(reference, set(), 50, 1)
    dropped = {base[0]["image"], base[1]["image"]}
    moved = reference_draw(reference, exclude=dropped, n=50, seed=0)
    assert not {r["image"] for r in moved} & dropped
    kept = [r for r in base if r["image"] not in dropped]
    assert moved[:len(kept)] == kept  # the rest of the draw keeps its rows and their order


def test_shipped_images_are_named_as_the_reference_names_them():
    """The held-out set leaves out the shipped sample by image file name, as URLs name them."""
    images = json.loads(SHIPPED.read_text(encoding="utf-8"))["images"]
    names = shipped_images(SHIPPED)
    assert len(names) == len({image["id"] for image in images}) > 0
    assert names == {image_key(image["coco_url"]) for image in images}


def test_summary_gives_the_standard_error_and_difference_its_interval():
    one = summary([0.95])
    assert one["se"] is None and difference(one, one) == (0.0, None)
    a, b = summary([0.95, 0.96, 0.97]), summary([0.94, 0.95])
    assert a["mean"] == 0.96 and a["half_range"] == 0.01 and a["se"] == round(0.01 / 3 ** 0.5, 4)
    diff, half = difference(a, b)
    assert round(diff, 4) == 0.015
    assert half == 1.96 * (a["se"] ** 2 + b["se"] ** 2) ** 0.5  # independent draws: variances add
