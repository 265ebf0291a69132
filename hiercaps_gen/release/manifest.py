"""The release manifest (`manifest.json`): one typed model shared by the writer, the reader and pull.

Pull validates it before downloading a byte, so every path is checked here: plain relative names
that cannot leave the release directory (no `..`, absolute paths, backslashes or hidden parts).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
SPLITS = ("train", "test")
MAX_MANIFEST_BYTES = 16 << 20
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """A manifest is not valid JSON, misses a field, or names an unsafe path."""


def safe_relative_path(path: str) -> str:
    """Return `path` if it is a plain relative path that stays inside its directory."""
    parts = path.split("/")
    if not path or "\\" in path or "\x00" in path or any(not _SAFE_PART.match(p) for p in parts):
        raise ManifestError(f"unsafe path in manifest: {path!r}")
    return path


class ReleaseFile(BaseModel):
    """One file of a release: where it is, how big, its sha256, and (for data) its split and rows."""

    model_config = ConfigDict(extra="forbid")
    path: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(default=0, ge=0)
    split: str = ""

    @field_validator("path")
    @classmethod
    def _safe(cls, v: str) -> str:
        return safe_relative_path(v)

    @property
    def is_data(self) -> bool:
        return self.path.endswith(".parquet")


class StageLineage(BaseModel):
    """What a run's stage manifest contributed to the release: fingerprint, row totals, stats."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str = ""
    totals: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)


class ColumnType(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: str


class ReleaseManifest(BaseModel):
    """Everything a release is: identity, lineage, splits and every file with its checksum."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
    version: str = Field(pattern=SEMVER.pattern)
    created_at: str = ""
    config_fingerprint: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: str = ""
    models: dict[str, str] = Field(default_factory=dict)
    prompt_hashes: list[str] = Field(default_factory=list)
    stages: dict[str, StageLineage] = Field(default_factory=dict)
    splits: dict[str, int] = Field(default_factory=dict)
    license: str = ""
    files: list[ReleaseFile]  # README.md at least; no Parquet file when the release has no rows
    schema_: list[ColumnType] = Field(default_factory=list, alias="schema")

    @field_validator("files")
    @classmethod
    def _unique(cls, v: list[ReleaseFile]) -> list[ReleaseFile]:
        paths = [f.path for f in v]
        if len(set(paths)) != len(paths) or "manifest.json" in paths:
            raise ValueError("file paths must be unique and must not include manifest.json")
        return v

    def data_files(self, split: str | None = None) -> list[ReleaseFile]:
        """Parquet shards, in manifest order, of one split or all."""
        return [f for f in self.files if f.is_data and (split is None or f.split == split)]

    def to_json_bytes(self) -> bytes:
        """Canonical bytes (sorted keys, 2-space indent): the same manifest always hashes the same."""
        data = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def parse_manifest(data: bytes) -> ReleaseManifest:
    """Validate manifest bytes; raise ManifestError with the first problem."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest is larger than 16 MiB")
    try:
        return ReleaseManifest.model_validate(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(f"invalid manifest: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
