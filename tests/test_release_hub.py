"""Releases as Hub dataset repos: the card's metadata, load_dataset, golden bytes, push and pull.

Push and pull run the real CLI against `tests.hub_server`, a Hub API on loopback reached through
`HF_ENDPOINT`: `huggingface_hub`'s own request code runs unchanged, nothing contacts huggingface.co.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiercaps_gen.cli import main
from hiercaps_gen.config import RunConfig
from hiercaps_gen.release import read_release, verify_release, write_release
from hiercaps_gen.hierarchy import FILTERED

from .conftest import REPO, synthetic_rows
from .hub_server import HubState, serve

NAME = "hierarcaps-gen-sample"
CREATED = "2026-01-01T00:00:00+00:00"


def release(root: Path, version: str, n: int = 60, seed: int = 0, rows_per_shard: int = 20) -> Path:
    config = RunConfig().with_overrides({"seed": seed, "release.rows_per_shard": rows_per_shard})
    table = pa.Table.from_pylist(synthetic_rows(n, seed=seed), schema=FILTERED)
    return write_release(table, config, version, root, created_at=CREATED)


def test_card_metadata_matches_the_parquet_files(tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    path = release(tmp_path, "1.0.0")
    card = DatasetCard.load(path / "README.md")
    meta = card.data.to_dict()
    shards = sorted((path / "data").glob("*.parquet"))
    schema = pq.read_schema(shards[0])
    assert meta["dataset_info"]["features"] == datasets.Features.from_arrow_schema(schema)._to_yaml_list()
    counts = {split: sum(pq.ParquetFile(s).metadata.num_rows for s in shards if s.name.startswith(split))
              for split in ("train", "test")}
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == counts
    assert meta["dataset_info"]["download_size"] == sum(s.stat().st_size for s in shards)
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]
    # synthetic rows carry no Hub-listed licence: `other` needs a license_name on the Hub
    assert meta["license"] == "other" and meta["license_name"]
    assert meta["language"] == ["en"] and meta["size_categories"] == ["n<1K"] and meta["pretty_name"] == NAME
    assert "text-retrieval" in meta["task_categories"]
    assert "computed on all 60 rows" in card.text


def test_large_release_states_its_statistics_sample(tmp_path, monkeypatch):
    from hiercaps_gen.release import card

    monkeypatch.setattr(card, "STATS_SAMPLE_ROWS", 25)
    text = (release(tmp_path, "1.0.0", n=60) / "README.md").read_text()
    assert "computed on a seeded sample of 25 of the 60 rows (seed 0)" in text


def test_load_dataset_reads_exactly_train_and_test_and_versions_never_merge(tmp_path):
    import datasets

    first = release(tmp_path, "1.0.0", n=60, seed=0)
    second = release(tmp_path, "1.1.0", n=45, seed=2, rows_per_shard=7)  # side by side, other shard names
    for path in (first, second):
        loaded = datasets.load_dataset(str(path), cache_dir=str(tmp_path / "cache"))
        manifest = verify_release(path)
        assert set(loaded) == {"train", "test"}
        for split in ("train", "test"):
            assert loaded[split].num_rows == manifest.splits[split]
            assert loaded[split]["id"] == read_release(path, split)["id"].to_pylist()


def test_an_empty_split_is_left_out_of_files_and_configs(tmp_path):
    import datasets

    config = RunConfig().with_overrides({"release.test_fraction": 0.0})
    path = write_release(pa.Table.from_pylist(synthetic_rows(12), schema=FILTERED), config, "1.0.0", tmp_path)
    manifest = verify_release(path)
    assert manifest.splits == {"train": 12, "test": 0} and not manifest.data_files("test")
    assert set(datasets.load_dataset(str(path), cache_dir=str(tmp_path / "cache"))) == {"train"}


def test_golden_release_bytes(tmp_path):
    """Fixed rows, config and created_at give these bytes. When a change is meant to alter the
    release (or pyarrow's Parquet writer changes), update the pins and say why in the commit."""
    path = release(tmp_path, "1.0.0", n=40, seed=7)
    manifest = json.loads((path / "manifest.json").read_text())
    shards = {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].endswith(".parquet")}
    assert shards == GOLDEN_SHARDS
    # config, code version and the card (which quotes both) move with every config default or
    # release; they are pinned by the fingerprint, not by bytes
    stable = {k: v for k, v in manifest.items() if k not in ("config", "config_fingerprint", "code_version")}
    stable["files"] = [f for f in manifest["files"] if f["path"] != "README.md"]
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    assert digest == GOLDEN_MANIFEST
    again = release(tmp_path / "again", "1.0.0", n=40, seed=7)
    assert (again / "README.md").read_bytes() == (path / "README.md").read_bytes()
    assert (again / "manifest.json").read_bytes() == (path / "manifest.json").read_bytes()


GOLDEN_SHARDS = {  # pyarrow 26.0.1, zstd; dictionary pages and statistics as in release.write
    "data/train-00000-of-00002.parquet": "56fff8285dbec3792861f3ab59618bd214da28c5ed26b02db44fab8dcd1a7ded",
    "data/train-00001-of-00002.parquet": "fce74d907598e55cf456b62275b5c6ade84a3934dd226b78145a57766a02ff50",
    "data/test-00000-of-00001.parquet": "1ed260cfab55f2bb60e6950e39d47917219ad586aaa4beff27a78846346219eb",
}
GOLDEN_MANIFEST = "3f74edea0bdc9d4a4547703b3b44bd9afea85a67efecb082def57535de76b7cc"


def test_shards_get_dictionaries_and_statistics_only_where_they_pay(tmp_path):
    """pyarrow ignores unknown column names in these options: check what the files hold."""
    from hiercaps_gen.release.write import DICTIONARY_COLUMNS, STATISTICS_COLUMNS

    path = release(tmp_path, "1.0.0")
    for shard in sorted((path / "data").glob("*.parquet")):
        group = pq.ParquetFile(shard).metadata.row_group(0)
        columns = {group.column(i).path_in_schema.split(".")[0]: group.column(i) for i in range(group.num_columns)}
        assert {n for n, c in columns.items() if "RLE_DICTIONARY" in c.encodings} == set(DICTIONARY_COLUMNS)
        assert {n for n, c in columns.items() if c.is_stats_set} == set(STATISTICS_COLUMNS)
        assert columns["id"].statistics.min <= columns["id"].statistics.max


def test_push_dry_run_lists_exactly_the_files_and_the_tag(tmp_path, capsys):
    path = release(tmp_path, "1.0.0")
    assert main(["push", str(path), "--repo", "org/hierarcaps", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("as one commit, tagged 1.0.0:") and "org/hierarcaps" in out[0]
    listed = [line.strip() for line in out[1:]]
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert listed == on_disk and "manifest.json" in listed and "README.md" in listed


@pytest.fixture
def hub():
    state = HubState()
    server = serve(state)
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hub_cli(endpoint: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "hiercaps_gen.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_push_and_pull_through_a_hub_api_on_loopback(tmp_path, hub):
    state, endpoint = hub
    first = release(tmp_path / "releases", "1.0.0", n=60, seed=0)
    second = release(tmp_path / "releases", "1.1.0", n=45, seed=2, rows_per_shard=7)

    done = hub_cli(endpoint, tmp_path / "home", "push", str(first), "--repo", "org/hierarcaps", "--private")
    assert done.returncode == 0, done.stderr
    assert 'load_dataset("org/hierarcaps", revision="1.0.0")' in done.stdout
    repo = state.repos["org/hierarcaps"]
    assert repo.private and set(repo.tags) == {"1.0.0"}
    on_disk = {p.relative_to(first).as_posix(): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert repo.commits[repo.tags["1.0.0"]] == {**on_disk, ".gitattributes": repo.commits[repo.tags["1.0.0"]][".gitattributes"]}
    commits = [r for r in state.log if r.method == "POST" and "/commit/" in r.path]
    assert len(commits) == 1 and commits[0].authorization == "Bearer hf_test_token"  # one commit, token from env

    assert hub_cli(endpoint, tmp_path / "home", "push", str(second), "--repo", "org/hierarcaps").returncode == 0
    main_files = set(repo.commits[repo.branches["main"]])
    assert main_files == {p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file()} | {".gitattributes"}
    assert repo.tags["1.0.0"] != repo.tags["1.1.0"]  # 1.0.0 still names the old commit; main holds 1.1.0 only

    refused = hub_cli(endpoint, tmp_path / "home", "push", str(first), "--repo", "org/hierarcaps")
    assert refused.returncode == 2 and "already has tag 1.0.0" in refused.stderr
    assert len([r for r in state.log if r.method == "POST" and "/commit/" in r.path]) == 2

    for version, original in (("1.0.0", first), ("1.1.0", second)):
        got = hub_cli(endpoint, tmp_path / "home", "pull", "hf://org/hierarcaps", "--version", version,
                      "--dest", str(tmp_path / "pulled"), "--quiet")
        assert got.returncode == 0, got.stderr
        pulled = Path(got.stdout.strip())
        assert pulled == (tmp_path / "pulled" / NAME / version).resolve()
        assert read_release(pulled).equals(read_release(original))
    assert not (tmp_path / "pulled" / ".partial").exists()


def test_pull_from_the_hub_refuses_a_tampered_file(tmp_path, hub):
    state, endpoint = hub
    path = release(tmp_path / "releases", "1.0.0")
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    shard = next(name for name in sorted(files) if name.startswith("data/train-"))
    files[shard] = files[shard][:-1] + bytes([files[shard][-1] ^ 1])
    repo = state.create("org/tampered", files=files)
    repo.tags["1.0.0"] = repo.branches["main"]
    got = hub_cli(endpoint, tmp_path / "home", "pull", "hf://org/tampered", "--version", "1.0.0",
                  "--dest", str(tmp_path / "pulled"), "--quiet")
    assert got.returncode == 2 and "checksum mismatch" in got.stderr
    assert not (tmp_path / "pulled" / NAME).exists()


def test_older_folder_per_version_repos_still_pull(tmp_path, hub):
    state, endpoint = hub
    path = release(tmp_path / "releases", "1.0.0")
    state.create("org/legacy", files={f"releases/1.0.0/{p.relative_to(path).as_posix()}": p.read_bytes()
                                      for p in path.rglob("*") if p.is_file()})
    got = hub_cli(endpoint, tmp_path / "home", "pull", "hf://datasets/org/legacy/releases", "--version", "1.0.0",
                  "--dest", str(tmp_path / "pulled"), "--quiet")
    assert got.returncode == 0, got.stderr
    assert read_release(Path(got.stdout.strip())).equals(read_release(path))
    missing = hub_cli(endpoint, tmp_path / "home", "pull", "hf://org/legacy", "--version", "2.0.0",
                      "--dest", str(tmp_path / "pulled"), "--quiet")
    assert missing.returncode == 2 and "no tag 2.0.0" in missing.stderr and "push it again" in missing.stderr


def test_releases_from_before_the_data_folder_still_read_and_pull(tmp_path):
    """Shards at the version root (the layout before `data/`): the manifest says where files are."""
    path = release(tmp_path / "old", "0.9.0")
    manifest = json.loads((path / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"].startswith("data/"):
            (path / entry["path"]).rename(path / entry["path"].removeprefix("data/"))
            entry["path"] = entry["path"].removeprefix("data/")
    (path / "data").rmdir()
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    expected = read_release(path)
    from hiercaps_gen.release.pull import pull

    pulled = pull(str(path.parent), "0.9.0", tmp_path / "pulled", progress=False)
    assert sorted(p.name for p in pulled.glob("train-*.parquet")) and read_release(pulled).equals(expected)
