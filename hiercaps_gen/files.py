"""Atomic file writes and checksums: the one way this project puts bytes on disk.

Every file is written to a hidden temporary name in the same directory, flushed to disk and then
renamed, so a crash leaves either the complete file or a `.tmp-*` leftover that no reader looks
at — never a half file under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """What a manifest says about one written file."""

    path: str
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> str:
    """Write `data` to `path` atomically; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(path: Path, obj: Any) -> str:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_parquet(path: Path, table: pa.Table, relative_to: Path | None = None, *,
                  use_dictionary: bool | list[str] = True, write_statistics: bool | list[str] = True) -> FileEntry:
    """Write a Parquet file atomically (zstd, deterministic bytes for the same table); the two
    options are pyarrow's (which columns get dictionary pages, which get min/max statistics).

    Encoded into an Arrow buffer, not a Python file object: the writer never needs the GIL, so
    shards encode in parallel threads while Python code runs in another."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=use_dictionary, write_statistics=write_statistics)
    data = memoryview(sink.getvalue())
    sha = atomic_write_bytes(path, data)
    name = str(path.relative_to(relative_to)) if relative_to else path.name
    return FileEntry(path=name, rows=table.num_rows, bytes=len(data), sha256=sha)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def verify(path: Path, sha256: str) -> bool:
    """True when `path` exists and its bytes hash to `sha256`."""
    return path.is_file() and sha256_file(path) == sha256
