import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiercaps_gen.config import RunConfig
from hiercaps_gen.stages.ingest import IngestError, run_ingest
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.hierarchy import normalise

from .conftest import REPO


def config_for(path: Path, source: str, **ingest) -> RunConfig:
    return RunConfig().with_overrides({"ingest.input": str(path), "ingest.source": source,
                                       **{f"ingest.{k}": v for k, v in ingest.items()}})


def rejects(run_dir: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((run_dir / "ingest/rejects").glob("*.parquet"))]).to_pylist()


def coco(tmp_path: Path, annotations: list, images=None) -> Path:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images or [{"id": 1, "coco_url": "http://x/1.jpg"}], "annotations": annotations}))
    return path


def test_shipped_sample_ingests_every_caption(tmp_path):
    manifest = run_ingest(config_for(REPO / "data/coco_val2014_sample/captions.json", "coco"), tmp_path)
    rows = read_stage_rows(tmp_path, "ingest")
    assert manifest["totals"]["in"] == 759 == len(rows) + manifest["totals"]["rejected"]
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["image_url"].startswith("http://images.cocodataset.org/") for r in rows)


def test_coco_malformed_records_are_counted_rejects(tmp_path):
    long = "word " * 2000  # 10,000 characters
    path = coco(tmp_path, [
        {"id": 1, "image_id": 1, "caption": "A dog  runs\u00a0on\tthe beach.\x07"},
        {"id": 2, "image_id": 1, "caption": "   "},
        {"id": 3, "image_id": 1, "caption": long},
        {"id": 1, "image_id": 1, "caption": "another caption with a reused id"},
        {"id": 4, "image_id": 1},
        {"id": 5, "image_id": 1, "caption": "a DOG runs on the beach"},
        {"id": 6, "image_id": 1, "caption": 42},
        "not an object",
    ])
    manifest = run_ingest(config_for(path, "coco"), tmp_path / "run")
    rows = read_stage_rows(tmp_path / "run", "ingest")
    assert [r["caption"] for r in rows] == ["A dog runs on the beach."]
    assert manifest["totals"]["reasons"] == {
        "duplicate_caption": 1, "duplicate_id": 1, "empty_caption": 1, "malformed_record": 2,
        "missing_field": 1, "too_long": 1,
    }
    assert manifest["totals"]["in"] == 8
    ledger = rejects(tmp_path / "run")
    assert len(ledger) == 7 and all(r["reason"] and r["row"] for r in ledger)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "invalid JSON"),
    (b'{"images": []}', "annotations"),
    (b'{"annotations": [{"id": 1, "image_id": 1, "caption": "caf\xe9"}]}', "not UTF-8"),
])
def test_unreadable_coco_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(IngestError, match=message):
        run_ingest(config_for(path, "coco"), tmp_path / "run")
    assert not (tmp_path / "run/ingest/manifest.json").exists()


def test_conceptual_captions_tsv(tmp_path):
    path = tmp_path / "cc.tsv"
    path.write_bytes(
        b"a cat sleeping on a sofa\thttp://img/1.jpg\n"
        b"no tab here\n"
        b"caf\xe9 bad bytes\thttp://img/2.jpg\n"
        b"\n"
        b"a cat sleeping on a sofa.\thttp://img/3.jpg\n"
        b"two dogs play in snow\thttp://img/4.jpg\r\n"
    )
    manifest = run_ingest(config_for(path, "cc"), tmp_path / "run")
    rows = read_stage_rows(tmp_path / "run", "ingest")
    assert sorted(r["caption"] for r in rows) == ["a cat sleeping on a sofa", "two dogs play in snow"]
    assert manifest["totals"]["reasons"] == {"duplicate_caption": 1, "invalid_utf8": 1, "malformed_record": 1}
    assert {r["image_url"] for r in rows} == {"http://img/1.jpg", "http://img/4.jpg"}


def test_parquet_and_datasets_inputs(tmp_path):
    import datasets

    table = pa.table({"caption": ["a red bus on a road", "a man with a kite", None], "url": ["u1", "u2", "u3"]})
    pq.write_table(table, tmp_path / "in.parquet")
    run_ingest(config_for(tmp_path / "in.parquet", "parquet"), tmp_path / "run1")
    assert len(read_stage_rows(tmp_path / "run1", "ingest")) == 2

    datasets.Dataset.from_dict({"caption": ["a red bus on a road"], "id": [7]}).save_to_disk(str(tmp_path / "ds"))
    run_ingest(config_for(tmp_path / "ds", "parquet"), tmp_path / "run2")
    assert [r["id"] for r in read_stage_rows(tmp_path / "run2", "ingest")] == ["parquet:7"]

    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "nocap.parquet")
    with pytest.raises(IngestError, match="no 'caption' column"):
        run_ingest(config_for(tmp_path / "nocap.parquet", "parquet"), tmp_path / "run3")


def test_limit_sampling_and_sharding_are_deterministic(tmp_path):
    sample = REPO / "data/coco_val2014_sample/captions.json"
    a = run_ingest(config_for(sample, "coco", limit=50, num_shards=3), tmp_path / "a")
    b = run_ingest(config_for(sample, "coco", limit=50, num_shards=3), tmp_path / "b")
    assert [s["output"]["sha256"] for s in a["shards"]] == [s["output"]["sha256"] for s in b["shards"]]
    assert a["totals"]["accepted"] == 50 and a["totals"]["reasons"] == {"not_sampled": 759 - 50}
    run_ingest(config_for(sample, "coco", limit=50, num_shards=3).with_overrides({"seed": 1}), tmp_path / "c")
    ids = lambda d: {r["id"] for r in read_stage_rows(tmp_path / d, "ingest")}  # noqa: E731
    assert ids("a") != ids("c")


def test_rerun_is_a_noop_and_changed_config_rewrites(tmp_path):
    sample = REPO / "data/coco_val2014_sample/captions.json"
    run_ingest(config_for(sample, "coco", limit=20), tmp_path)
    stamp = (tmp_path / "ingest/manifest.json").stat().st_mtime_ns
    run_ingest(config_for(sample, "coco", limit=20), tmp_path)
    assert (tmp_path / "ingest/manifest.json").stat().st_mtime_ns == stamp
    changed = run_ingest(config_for(sample, "coco", limit=30), tmp_path)
    assert changed["totals"]["accepted"] == 30


def test_normalise():
    assert normalise("  Cafe\u0301\u200b  au\nlait\x00 ") == "Café au lait"
