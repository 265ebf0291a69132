import csv
import json
import multiprocessing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiercaps_gen.config import RunConfig
from hiercaps_gen.release.export import export_hierarcaps_csv
from hiercaps_gen.release import ReleaseError, read_release, verify_release, write_release
from hiercaps_gen.hierarchy import FILTERED, RELEASE
from hiercaps_gen.files import sha256_file

from .conftest import synthetic_rows


def table(n=60, seed=0, **kw) -> pa.Table:
    return pa.Table.from_pylist(synthetic_rows(n, seed, **kw), schema=FILTERED)


def test_release_layout_manifest_and_card(tmp_path):
    config = RunConfig().with_overrides({"release.rows_per_shard": 16})
    path = write_release(table(60), config, "1.0.0", tmp_path)
    assert path == tmp_path / "hierarcaps-gen-sample/1.0.0"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["splits"]["train"] + manifest["splits"]["test"] == 60
    assert manifest["config_fingerprint"] == config.fingerprint()
    assert [f["name"] for f in manifest["schema"]] == RELEASE.names
    parquet = [f for f in manifest["files"] if f["path"].endswith(".parquet")]
    assert len(parquet) > 2 and all(f["rows"] <= 16 for f in parquet)
    for entry in manifest["files"]:
        assert sha256_file(path / entry["path"]) == entry["sha256"]
        assert (path / entry["path"]).stat().st_size == entry["bytes"]
    card = (path / "README.md").read_text()
    assert "CC BY 4.0" in card and "| positive |" in card
    assert not list(tmp_path.rglob(".*tmp-*"))


def test_splits_share_no_image(tmp_path):
    release = write_release(table(300, images=40), RunConfig(), "0.1.0", tmp_path)
    train = set(read_release(release, "train")["image_id"].to_pylist())
    test = set(read_release(release, "test")["image_id"].to_pylist())
    assert train and test and not train & test


def test_release_is_immutable(tmp_path):
    config = RunConfig()
    first = write_release(table(30), config, "0.1.0", tmp_path)
    before = {p: sha256_file(p) for p in first.rglob("*") if p.is_file()}
    assert write_release(table(30), config, "0.1.0", tmp_path) == first  # same config: a no-op
    with pytest.raises(ReleaseError, match="immutable"):
        write_release(table(31), config.with_overrides({"seed": 3}), "0.1.0", tmp_path)
    assert {p: sha256_file(p) for p in first.rglob("*") if p.is_file()} == before
    with pytest.raises(ReleaseError, match="semantic"):
        write_release(table(3), config, "1.0", tmp_path)


def test_release_refuses_broken_rows(tmp_path):
    rows = synthetic_rows(5)
    rows[2]["positive"] = rows[2]["positive"][:3]
    with pytest.raises(ReleaseError, match="4 'positive' levels"):
        write_release(pa.Table.from_pylist(rows, schema=FILTERED), RunConfig(), "0.1.0", tmp_path)
    rows = synthetic_rows(5)
    rows[1]["positive"][3] = "not the caption"
    with pytest.raises(ReleaseError, match="caption"):
        write_release(pa.Table.from_pylist(rows, schema=FILTERED), RunConfig(), "0.1.0", tmp_path)
    rows = synthetic_rows(5)
    rows[4] = {**rows[4], "id": rows[0]["id"]}  # twins far apart in the input: found in id order
    with pytest.raises(ReleaseError, match="duplicate row ids"):
        write_release(pa.Table.from_pylist(rows, schema=FILTERED), RunConfig(), "0.1.0", tmp_path)
    assert not (tmp_path / "hierarcaps-gen-sample/0.1.0").exists()


def test_round_trip_through_datasets_and_pyarrow(tmp_path):
    import datasets

    src = table(80)
    release = write_release(src, RunConfig(), "0.2.0", tmp_path)
    loaded = datasets.load_dataset(str(release), cache_dir=str(tmp_path / "cache"))  # the card's configs
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].num_rows + loaded["test"].num_rows == 80
    by_id = {r["id"]: r for r in src.to_pylist()}
    for split in ("train", "test"):
        for row in loaded[split]:
            original = by_id[row["id"]]
            assert row["positive"] == original["positive"] and row["negative"] == original["negative"]
            assert row["split"] == split
    assert pq.read_table(release / "data/train-00000-of-00001.parquet").schema.names == RELEASE.names


def test_tampered_release_fails_verification(tmp_path):
    release = write_release(table(20), RunConfig(), "0.1.0", tmp_path)
    shard = release / "data/train-00000-of-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="sha256"):
        verify_release(release)


def test_export_hierarcaps_csv(tmp_path):
    release = write_release(table(25), RunConfig(), "0.1.0", tmp_path)
    rows = export_hierarcaps_csv(release, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert rows == len(exported) == 25
    assert set(exported[0]) == {"positive", "negative", "image_url"}
    originals = {" => ".join(r["positive"]) for r in synthetic_rows(25)}
    assert {r["positive"] for r in exported} == originals
    assert all(len(r["negative"].split(" => ")) == 4 for r in exported)


def _write(args):
    root, seed = args
    try:
        write_release(table(200, seed=seed), RunConfig().with_overrides({"seed": seed}), "9.9.9", Path(root))
        return "ok"
    except ReleaseError as exc:
        return str(exc)


def test_two_writers_of_one_version_one_wins(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_write, [(str(tmp_path), 1), (str(tmp_path), 2)])
    assert results.count("ok") == 1, results
    loser = next(r for r in results if r != "ok")
    assert "already exists" in loser or "concurrently" in loser
    verify_release(tmp_path / "hierarcaps-gen-sample/9.9.9")


def test_lineage_names_every_model_a_run_used(tmp_path):
    from hiercaps_gen.release.write import run_lineage
    from hiercaps_gen.stages.base import StageManifest

    def manifest(stage: str, fingerprint: str, **fields) -> None:
        fields = {"config": {}, "stats": {}, **fields}
        StageManifest(stage=stage, fingerprint=fingerprint, code_version="0", created_at="2026-01-01T00:00:00+00:00",
                      totals={"in": 1, "accepted": 1, "rejected": 0}, **fields).write(tmp_path / stage)

    manifest("abstract", "a", stats={"generator_model": "embedded:smollm2@abc", "prompts": 3})
    manifest("train-ordering", "b", base_model="google/flan-t5-base", model_hash="123")
    manifest("filter", "c", config={"encoder": "embedded:minilm"})
    assert run_lineage(tmp_path)["models"] == {
        "abstract.generator_model": "embedded:smollm2@abc",
        "train-ordering.model": "google/flan-t5-base@123",
        "filter.encoder": "embedded:minilm",
    }
