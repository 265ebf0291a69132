"""Shard-parallel stages: what a stage declares, and the runner that makes it resumable.

Layout of one stage under a run directory (the run-directory contract, docs/architecture.md):

    RUN/<stage>/part-00000.parquet          accepted rows
    RUN/<stage>/rejects/part-00000.parquet  rejected rows, each with its reason
    RUN/<stage>/_done/part-00000.json       completion record: checksums, counts, fingerprints
    RUN/<stage>/manifest.json               totals over all shards

A shard counts as done only when its completion record matches the stage fingerprint, the input
shard's checksum and the checksums of both files it names; anything else is recomputed. So a
killed run resumes where it stopped, and a changed config or upstream shard is redone.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hiercaps_gen import __version__
from hiercaps_gen.config import RunConfig
from hiercaps_gen.hierarchy import REJECT
from hiercaps_gen.files import FileEntry, atomic_write_json, read_json, verify, write_parquet
from hiercaps_gen.stages.registry import SPECS, StageSpec

MANIFEST = "manifest.json"


class StageError(RuntimeError):
    """A stage cannot run: missing upstream output, inconsistent counts."""


class FileRecord(BaseModel):
    """A file a stage wrote (`files.FileEntry` as JSON)."""

    path: str
    rows: int
    bytes: int
    sha256: str


class ShardRecord(BaseModel):
    """The completion record of one shard (`_done/<shard>.json`), also listed in the manifest."""

    name: str
    fingerprint: str
    input_sha256: str | None
    in_rows: int
    output: FileRecord
    rejects: FileRecord
    reasons: dict[str, int]
    stats: dict[str, Any]
    seconds: float


class Totals(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    in_: int = Field(alias="in")
    accepted: int
    rejected: int
    reasons: dict[str, int] = Field(default_factory=dict)


class StageManifest(BaseModel):
    """`RUN/<stage>/manifest.json`, written last: it proves the stage complete. Shard-parallel
    stages list their shards; a stage that trains a model (train-ordering) names its files."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    fingerprint: str
    code_version: str
    created_at: str
    config: dict[str, Any]
    totals: Totals
    stats: dict[str, Any]
    shards: list[ShardRecord] = Field(default_factory=list)
    acceptance: float | None = None
    base_model: str | None = None
    model_dir: str | None = None
    model_hash: str | None = None
    files: dict[str, str] | None = None

    def write(self, directory: Path) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        atomic_write_json(directory / MANIFEST, data)
        return data


@dataclass(frozen=True)
class Resources:
    """What one shard task needs; schedulers (Prefect/Dask) read this."""

    gpus: int = 0
    cpus: int = 1
    memory_gb: float = 1.0

    def on(self, device: str) -> Resources:
        """These resources plus one GPU when the stage's model is configured for `cuda`."""
        return replace(self, gpus=1 if device == "cuda" else 0)


@dataclass(frozen=True)
class Reject:
    row: dict[str, Any]
    reason: str
    detail: str = ""


@dataclass
class ShardOutput:
    """A stage's answer for one shard: every input row is in `rows` or `rejects`."""

    rows: list[dict[str, Any]]
    rejects: list[Reject]
    stats: dict[str, float] = field(default_factory=dict)  # additive counters (tokens, prompts)


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def reject_table(stage: str, rejects: Iterable[Reject]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "id": str(r.row.get("id", "")),
                "stage": stage,
                "reason": r.reason,
                "detail": r.detail[:2000],
                "row": json.dumps(r.row, ensure_ascii=False, default=str),
            }
            for r in rejects
        ],
        schema=REJECT,
    )


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def load_manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    """A completed stage's manifest, checked against `StageManifest` (returned as JSON data)."""
    path = stage_dir(run_dir, stage) / MANIFEST
    if not path.exists():
        raise StageError(f"stage '{stage}' has not completed in {run_dir} (no {path.name}); run it first")
    data = read_json(path)
    try:
        StageManifest.model_validate(data)
    except ValidationError as exc:
        raise StageError(f"{path} is not a stage manifest ({exc.error_count()} problems: "
                         f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}); rerun '{stage}'") from None
    return data


def read_stage_rows(run_dir: Path, stage: str, shard: str | None = None) -> list[dict[str, Any]]:
    """Rows of a completed stage (one shard, or all in shard order), checksums verified."""
    manifest = load_manifest(run_dir, stage)
    rows: list[dict[str, Any]] = []
    for entry in manifest["shards"]:
        if shard is not None and entry["name"] != shard:
            continue
        path = stage_dir(run_dir, stage) / entry["output"]["path"]
        if not verify(path, entry["output"]["sha256"]):
            raise StageError(f"{path} does not match the checksum in {stage}/{MANIFEST}; rerun '{stage}'")
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def write_shard(
    directory: Path,
    stage: str,
    name: str,
    schema: pa.Schema,
    output: ShardOutput,
    in_rows: int,
    fingerprint: str,
    input_sha256: str | None,
    seconds: float,
) -> dict[str, Any]:
    """Write a shard's rows and rejects, then its completion record (last, so it proves both)."""
    if in_rows != len(output.rows) + len(output.rejects):
        raise StageError(
            f"{stage}/{name}: {in_rows} rows in but {len(output.rows)} accepted + "
            f"{len(output.rejects)} rejected; a stage must account for every row"
        )
    out = write_parquet(directory / f"{name}.parquet", pa.Table.from_pylist(output.rows, schema=schema), directory)
    rej = write_parquet(directory / "rejects" / f"{name}.parquet", reject_table(stage, output.rejects), directory)
    record = {
        "name": name,
        "fingerprint": fingerprint,
        "input_sha256": input_sha256,
        "in_rows": in_rows,
        "output": out.to_dict(),
        "rejects": rej.to_dict(),
        "reasons": dict(Counter(r.reason for r in output.rejects)),
        "stats": output.stats,
        "seconds": seconds,
    }
    atomic_write_json(directory / "_done" / f"{name}.json", record)
    return record


def completed_record(directory: Path, name: str, fingerprint: str, input_sha256: str | None) -> dict | None:
    """The shard's completion record if it is valid for this fingerprint and input, else None."""
    path = directory / "_done" / f"{name}.json"
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if record.get("fingerprint") != fingerprint or record.get("input_sha256") != input_sha256:
        return None
    for key in ("output", "rejects"):
        entry = FileEntry(**record[key])
        if not verify(directory / entry.path, entry.sha256):
            return None
    return record


def write_stage_manifest(
    directory: Path,
    stage: str,
    fingerprint: str,
    config_section: dict[str, Any],
    records: list[dict[str, Any]],
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Total the shard records into `manifest.json`; refuses if any row is unaccounted for."""
    reasons: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    for record in records:
        reasons.update(record["reasons"])
        stats.update(record["stats"])
    totals = {
        "in": sum(r["in_rows"] for r in records),
        "accepted": sum(r["output"]["rows"] for r in records),
        "rejected": sum(r["rejects"]["rows"] for r in records),
        "reasons": dict(sorted(reasons.items())),
    }
    if totals["in"] != totals["accepted"] + totals["rejected"]:
        raise StageError(f"{stage}: in={totals['in']} != accepted+rejected; refusing to write manifest")
    seconds = sum(r["seconds"] for r in records)
    return StageManifest(
        stage=stage,
        fingerprint=fingerprint,
        code_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=config_section,
        shards=sorted(records, key=lambda r: r["name"]),
        totals=totals,
        acceptance=totals["accepted"] / totals["in"] if totals["in"] else None,
        stats={**dict(stats), "shard_seconds": seconds, **(summary or {})},
    ).write(directory)


class ShardStage(ABC):
    """A stage that maps upstream shards one to one. Subclasses hold no Prefect code."""

    name: ClassVar[str]
    input_stage: ClassVar[str]
    config_section: ClassVar[str]
    output_schema: ClassVar[pa.Schema]
    resources: ClassVar[Resources] = Resources()

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)

    @property
    def directory(self) -> Path:
        return stage_dir(self.run_dir, self.name)

    @property
    def spec(self) -> StageSpec:
        return SPECS[self.name]

    def fingerprint(self) -> str:
        """The registry's recipe over this stage's config and `fingerprint_inputs`."""
        return self.spec.fingerprint(self.config, **self.fingerprint_inputs())

    def fingerprint_inputs(self) -> dict[str, Any]:
        """Inputs other than config and the per-shard upstream checksum (model hashes, prompts)."""
        return {}

    @abstractmethod
    def process(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        """Turn one shard of input rows into accepted rows and rejects."""

    def summarize(self, rows: list[dict[str, Any]], stats: dict[str, float]) -> dict[str, Any]:
        """Stage-level statistics for the manifest, computed once over all accepted rows."""
        return {}

    def shards(self) -> list[dict[str, Any]]:
        """Upstream shard entries, in order (an entry's "stage" key, if any, names another input)."""
        return load_manifest(self.run_dir, self.input_stage)["shards"]

    def run_shard(self, upstream: dict[str, Any]) -> dict[str, Any]:
        """Process one upstream shard unless a valid completion record already exists."""
        name, input_sha = upstream["name"], upstream["output"]["sha256"]
        done = completed_record(self.directory, name, self.fingerprint(), input_sha)
        if done is not None:
            return done
        rows = read_stage_rows(self.run_dir, upstream.get("stage", self.input_stage), shard=name)
        start = time.perf_counter()
        output = self.process(rows, name)
        seconds = time.perf_counter() - start
        return write_shard(
            self.directory, self.name, name, self.output_schema, output,
            in_rows=len(rows), fingerprint=self.fingerprint(), input_sha256=input_sha, seconds=seconds,
        )

    def close(self) -> None:
        """Free what the stage holds in this process (a model, an engine's GPU memory); `run` and
        `finalize` call it when they end. Stages that hold nothing need not override it."""

    def finalize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Write the stage manifest from the shard records (flows call it without `run`), then close."""
        try:
            directory = self.directory
            for stale in (directory / "_done").glob("*.json"):  # shards no longer upstream
                if stale.stem not in {r["name"] for r in records}:
                    stale.unlink()
            rows = [row for r in records for row in pq.read_table(directory / r["output"]["path"]).to_pylist()]
            stats: Counter[str] = Counter()
            for r in records:
                stats.update(r["stats"])
            stats["seconds"] = sum(r["seconds"] for r in records)
            summary = self.summarize(rows, dict(stats))
            section = getattr(self.config, self.config_section).model_dump(mode="json")
            return write_stage_manifest(directory, self.name, self.fingerprint(), section, records, summary)
        finally:
            self.close()

    def run(self, map_fn: Callable[..., Iterable[dict[str, Any]]] = map) -> dict[str, Any]:
        """Run every shard (serially by default; pass a parallel map to scale out), then close."""
        try:
            return self.finalize(list(map_fn(self.run_shard, self.shards())))
        finally:
            self.close()
