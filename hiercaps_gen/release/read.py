"""The one release reader: every file is checked against the manifest before a row is returned.

finetune, evaluate, report and export read releases through here, so none of them can train on or
report a shard that was truncated, edited or swapped after the release was written.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hiercaps_gen.release.manifest import ManifestError, ReleaseManifest, parse_manifest
from hiercaps_gen.hierarchy import RELEASE
from hiercaps_gen.files import sha256_file


class ReleaseError(RuntimeError):
    """A release cannot be written or read: bad version, existing version, failed checksum."""


def load_manifest(release_dir: Path) -> ReleaseManifest:
    """The typed manifest of a release directory, without checking its files."""
    path = Path(release_dir) / "manifest.json"
    if not path.is_file():
        raise ReleaseError(f"{release_dir} is not a release (no manifest.json)")
    try:
        return parse_manifest(path.read_bytes())
    except ManifestError as exc:
        raise ReleaseError(f"{path}: {exc}") from None


def verify_release(release_dir: Path) -> ReleaseManifest:
    """The manifest, after checking every file it lists against its size and sha256."""
    release_dir = Path(release_dir)
    manifest = load_manifest(release_dir)
    for entry in manifest.files:
        path = release_dir / entry.path
        if not path.is_file() or path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            raise ReleaseError(f"{path} is missing or fails its size/sha256 check")
    return manifest


def split_files(path: Path, split: str | None = None) -> list[Path]:
    """Verified Parquet shards of a release directory (one split or all), or a lone Parquet file.

    A lone file has no manifest to check it against: it is the caller's own data, read as given.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    manifest = verify_release(path)
    files = [path / f.path for f in manifest.data_files(split)]
    if not files:
        raise ReleaseError(f"release {path} has no {split or 'data'} shards")
    return files


def load_release(release_dir: Path, split: str | None = None,
                 columns: list[str] | None = None) -> tuple[ReleaseManifest, pa.Table]:
    """The verified manifest and the rows (one split or all) of a release, checked once."""
    manifest = verify_release(release_dir)
    tables = [pq.read_table(Path(release_dir) / f.path, columns=columns) for f in manifest.data_files(split)]
    if tables:
        return manifest, pa.concat_tables(tables)
    empty = RELEASE.empty_table()
    return manifest, empty.select(columns) if columns else empty


def read_release(release_dir: Path, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows of a verified release (one split or all) as one Arrow table."""
    return load_release(release_dir, split, columns)[1]
