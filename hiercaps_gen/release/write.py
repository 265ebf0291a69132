"""release: assemble accepted rows into an immutable, versioned, checksummed Parquet release.

    RELEASES/<name>/<version>/              a Hugging Face dataset repo as it stands
        README.md                           dataset card: Hub metadata (configs, dataset_info) + text
        manifest.json                       files with sizes and sha256, splits, lineage, schema
        data/train-00000-of-00001.parquet   split shards (train / test share no image)
        data/test-00000-of-00001.parquet

`load_dataset(<version dir>)` reads exactly train and test from the card's `configs`; `push`
uploads the directory as one commit tagged with the version. The whole version directory is
built under a temporary name and renamed into place in one step: a version either exists
complete or not at all, and two writers of the same version cannot both win (the second rename
fails on the non-empty directory).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hiercaps_gen import __version__
from hiercaps_gen.config import RunConfig
from hiercaps_gen.release.card import DATA_DIR, card_statistics, render_card
from hiercaps_gen.release.manifest import SEMVER, SPLITS, ColumnType, ReleaseFile, ReleaseManifest, StageLineage
from hiercaps_gen.release.read import ReleaseError, verify_release
from hiercaps_gen.hierarchy import FILTERED, LEVELS, RELEASE
from hiercaps_gen.files import FileEntry, atomic_write_bytes, write_parquet
from hiercaps_gen.stages.base import MANIFEST, load_manifest, read_stage_rows, stage_dir
from hiercaps_gen.stages.registry import NAMES

LINEAGE_STAGES = NAMES  # the stage registry, in pipeline order (distill included)
# Parquet of the shards: dictionary pages only for columns that repeat a few values (for ids,
# captions and hierarchies a dictionary costs encode time, overflows and falls back, and the
# files come out larger); min/max statistics only for `id`, the column shards are sorted by
# (statistics of captions or lists prune nothing). 28-50 % less encode time than the defaults,
# 7-12 % smaller files (HierarCaps reference texts, bench data).
DICTIONARY_COLUMNS = ["source", "positive_origin", "generator_model", "prompt_version", "prompt_hash",
                      "ordering_model_hash", "seed", "attempts", "split"]
STATISTICS_COLUMNS = ["id"]


def check_version(version: str) -> str:
    if not SEMVER.match(version):
        raise ReleaseError(f"version {version!r} is not semantic (X.Y.Z)")
    return version


def assign_split(image_ids: list[str], test_fraction: float, seed: int) -> list[str]:
    """Split by a seeded hash of the image id, so no image is in both train and test."""
    threshold = int(test_fraction * 2**64)
    # the first 8 digest bytes as a big-endian int (= int(hexdigest[:16], 16), without the hex round trip)
    return [
        "test" if int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") < threshold else "train"
        for i in image_ids
    ]


def split_column(image_ids: pa.ChunkedArray, test_fraction: float, seed: int) -> pa.ChunkedArray:
    """`assign_split` of every row, hashing each distinct image id once (images repeat per caption)."""
    distinct = pc.unique(image_ids)
    splits = pa.array(assign_split(distinct.to_pylist(), test_fraction, seed), pa.string())
    return pc.take(splits, pc.index_in(image_ids, value_set=distinct))


def check_rows(table: pa.Table, sorted_ids: pa.ChunkedArray | pa.Array) -> None:
    """The row contract: 4 positive and 4 negative levels, positive level 4 is the caption, unique
    ids. `sorted_ids` are the table's ids in sorted order, where a duplicate sits next to its twin."""
    if table.num_rows == 0:
        return
    for column in ("positive", "negative"):
        extremes = pc.min_max(pc.list_value_length(table[column]))
        if extremes["min"].as_py() != LEVELS or extremes["max"].as_py() != LEVELS:
            raise ReleaseError(f"every row needs {LEVELS} '{column}' levels")
    last = pc.list_element(table["positive"], LEVELS - 1)
    if not pc.all(pc.equal(last, table["caption"])).as_py():
        raise ReleaseError("positive level 4 must equal the caption in every row")
    n = len(sorted_ids)
    if n > 1 and pc.any(pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, n - 1))).as_py():
        raise ReleaseError("duplicate row ids")


def id_order(table: pa.Table) -> pa.Array:
    """The row indices that sort `table` by id, after checking the row contract. The rows are
    never sorted as a whole: each shard gathers its own rows in this order, in parallel, so the
    input order never shows in the bytes and no full sorted copy is made."""
    order = pc.sort_indices(table, [("id", "ascending")])
    check_rows(table, pc.take(table["id"], order))
    return order


def _shards(split: str, rows: pa.Array, rows_per_shard: int) -> list[tuple[str, pa.Array]]:
    """`data/<split>-NNNNN-of-MMMMM.parquet` with the row indices each holds; none for an empty
    split (`datasets` cannot read an empty Parquet file, and the card lists only splits with rows)."""
    count = -(-len(rows) // rows_per_shard)
    return [
        (f"{DATA_DIR}/{split}-{i:05d}-of-{count:05d}.parquet", rows.slice(i * rows_per_shard, rows_per_shard))
        for i in range(count)
    ]


def _write_shard(table: pa.Table, rows: pa.Array, path: Path, root: Path) -> tuple[FileEntry, int]:
    """Gather one shard's rows and write them; (its file entry, its in-memory Arrow bytes)."""
    shard = table.take(rows)
    entry = write_parquet(path, shard, root, use_dictionary=DICTIONARY_COLUMNS, write_statistics=STATISTICS_COLUMNS)
    return entry, shard.nbytes


def schema_description(schema: pa.Schema) -> list[ColumnType]:
    return [ColumnType(name=f.name, type=str(f.type)) for f in schema]


def write_release(
    table: pa.Table,
    config: RunConfig,
    version: str,
    out_root: Path,
    lineage: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> Path:
    """Write `table` (schema.FILTERED rows) as release `<out_root>/<name>/<version>/`.

    `created_at` (default: now, UTC) is the one volatile field: fix it and the same rows and
    config give the same bytes.
    """
    check_version(version)
    name = config.release.name
    final = Path(out_root) / name / version
    if final.exists():
        existing = verify_release(final)
        if existing.config_fingerprint == config.fingerprint():
            return final  # the same config was already released: nothing to do
        raise ReleaseError(
            f"release {name} {version} already exists at {final} with another config; "
            "releases are immutable — bump the version"
        )
    table = table.select(FILTERED.names).cast(FILTERED)
    order = id_order(table)
    split = split_column(table["image_id"], config.release.test_fraction, config.seed)
    table = table.append_column("split", split).cast(RELEASE)
    split_in_order = pc.take(split, order)

    staging = final.parent / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        jobs, splits = [], {}
        for split_name in SPLITS:
            rows = pc.filter(order, pc.equal(split_in_order, split_name))  # keeps the id order
            splits[split_name] = len(rows)
            jobs += [(split_name, file_name, shard)
                     for file_name, shard in _shards(split_name, rows, config.release.rows_per_shard)]
        # gathering and Parquet encoding free the GIL: shards use every core while this thread
        # computes the card's (pure Python) statistics
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            futures = [pool.submit(_write_shard, table, rows, staging / file_name, staging)
                       for _, file_name, rows in jobs]
            statistics = card_statistics(table, config.seed, order)
            written = [future.result() for future in futures]
        files = [ReleaseFile(**entry.to_dict(), split=job[0]) for job, (entry, _) in zip(jobs, written)]
        split_bytes = {name: sum(size for job, (_, size) in zip(jobs, written) if job[0] == name) for name in SPLITS}
        lineage = lineage or {}
        manifest = ReleaseManifest(
            name=name,
            version=version,
            created_at=created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            config_fingerprint=config.fingerprint(),
            config=config.model_dump(mode="json"),
            code_version=__version__,
            models=lineage.get("models", {}),
            prompt_hashes=sorted(pc.unique(table["prompt_hash"]).to_pylist()),
            stages=lineage.get("stages", {}),
            splits=splits,
            license=config.release.license,
            files=files,
            schema=schema_description(RELEASE),
        )
        card = render_card(manifest, table, statistics, split_bytes=split_bytes, order=order).encode("utf-8")
        card_sha = atomic_write_bytes(staging / "README.md", card)
        manifest.files.append(ReleaseFile(path="README.md", bytes=len(card), sha256=card_sha))
        atomic_write_bytes(staging / "manifest.json", manifest.to_json_bytes())
        try:
            os.rename(staging, final)
        except OSError as exc:
            raise ReleaseError(f"release {name} {version} was written concurrently by another run: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def run_lineage(run_dir: Path) -> dict[str, Any]:
    """Per-stage fingerprints, totals and model ids from a run's stage manifests."""
    stages: dict[str, StageLineage] = {}
    models: dict[str, str] = {}
    for stage in LINEAGE_STAGES:
        if not (stage_dir(run_dir, stage) / MANIFEST).exists():
            continue  # a stage this run did not use (distill off); a malformed manifest is an error
        manifest = load_manifest(run_dir, stage)
        stages[stage] = StageLineage(
            fingerprint=manifest["fingerprint"], totals=manifest.get("totals", {}), stats=manifest.get("stats", {})
        )
        models.update(manifest.get("models", {}))
        if "model_hash" in manifest:  # a stage that trained a model (train-ordering)
            models[f"{stage}.model"] = f"{manifest.get('base_model', '')}@{manifest['model_hash']}"
        if isinstance(manifest.get("config", {}).get("encoder"), str):  # scorers (negatives, filter)
            models[f"{stage}.encoder"] = manifest["config"]["encoder"]
        for key, value in manifest.get("stats", {}).items():  # e.g. abstract's generator_model
            if key.endswith("_model") and isinstance(value, str):
                models[f"{stage}.{key}"] = value
    return {"stages": stages, "models": models}


def build_release(config: RunConfig, run_dir: Path, version: str, out_root: Path, from_stage: str = "filter") -> Path:
    """Release the accepted rows of `from_stage` in a run directory."""
    check_version(version)
    rows = read_stage_rows(Path(run_dir), from_stage)
    for row in rows:
        row.setdefault("filter_score", None)
    table = pa.Table.from_pylist(rows, schema=FILTERED)
    return write_release(table, config, version, out_root, run_lineage(Path(run_dir)))
