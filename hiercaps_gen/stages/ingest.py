"""ingest: read caption sources, normalise, de-duplicate, sample and hash-shard into RUN/ingest/.

Readers turn one source format into `Caption` candidates or counted `Reject`s; everything after
that (normalisation, de-duplication, sampling, sharding) is shared. A file that cannot be read as
its format at all (bad JSON, wrong top-level shape, no caption column) is a clear `IngestError`;
a bad record inside a readable file is a reject with its reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hiercaps_gen.config import REPO_ROOT, RunConfig
from hiercaps_gen.hierarchy import CAPTION, dedup_key, normalise, word_count
from hiercaps_gen.files import sha256_file
from hiercaps_gen.stages.base import (
    Reject,
    ShardOutput,
    completed_record,
    load_manifest,
    shard_name,
    stage_dir,
    write_shard,
    write_stage_manifest,
)
from hiercaps_gen.stages.registry import SPECS

STAGE = "ingest"
Record = dict[str, Any]


class IngestError(ValueError):
    """The input cannot be read as the declared format."""


def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _caption(source: str, source_id: str, image_id: str, image_url: str, caption: str) -> Record:
    return {
        "id": f"{source}:{source_id}",
        "source": source,
        "source_id": source_id,
        "image_id": image_id,
        "image_url": image_url,
        "caption": caption,
    }


def read_coco(path: Path) -> Iterator[Record | Reject]:
    """COCO captions JSON: `images` (id, coco_url) and `annotations` (id, image_id, caption)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise IngestError(f"{path}: not a COCO captions file (needs a top-level 'annotations' list)")
    if not isinstance(data.get("images", []), list):
        raise IngestError(f"{path}: 'images' must be a list")
    urls = {}
    for image in data.get("images", []):
        if isinstance(image, dict) and "id" in image:
            urls[str(image["id"])] = str(image.get("coco_url") or image.get("flickr_url") or "")
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            yield Reject({"id": f"coco:#{index}", "raw": repr(ann)[:500]}, "malformed_record", "not an object")
            continue
        missing = [k for k in ("id", "image_id", "caption") if k not in ann]
        if missing:
            yield Reject({"id": f"coco:#{index}", **ann}, "missing_field", ",".join(missing))
            continue
        if not isinstance(ann["caption"], str):
            yield Reject({"id": f"coco:{ann['id']}", **ann}, "malformed_record", "caption is not a string")
            continue
        image_id = str(ann["image_id"])
        yield _caption("coco", str(ann["id"]), image_id, urls.get(image_id, ""), ann["caption"])


def read_cc(path: Path) -> Iterator[Record | Reject]:
    """Conceptual Captions TSV: `caption<TAB>url` per line; no header."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield Reject({"id": f"cc:line{lineno}", "raw": text[:2000]}, "invalid_utf8", f"byte {exc.start}")
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                yield Reject({"id": f"cc:line{lineno}", "raw": line[:2000]}, "malformed_record",
                             f"line {lineno}: expected 2 tab-separated fields, got {len(fields)}")
                continue
            caption, url = fields
            yield _caption("cc", _sha(f"{caption}\t{url}"), _sha(url), url.strip(), caption)


def read_parquet(path: Path) -> Iterator[Record | Reject]:
    """Local Parquet file/directory, or a `datasets` directory saved with `save_to_disk`.

    Needs a `caption` column; uses `id`, `image_id` and `image_url` (or `url`) when present.
    """
    if path.is_dir() and (path / "dataset_info.json").exists():
        import datasets

        table = datasets.load_from_disk(str(path)).data.table
    else:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise IngestError(f"{path}: not readable as Parquet: {exc}") from None
    if "caption" not in table.column_names:
        raise IngestError(f"{path}: no 'caption' column (columns: {', '.join(table.column_names)})")
    url_column = "image_url" if "image_url" in table.column_names else "url"
    for index, row in enumerate(table.to_pylist()):
        caption = row.get("caption")
        source_id = str(row["id"]) if row.get("id") is not None else str(index)
        if not isinstance(caption, str):
            yield Reject({"id": f"parquet:{source_id}", **row}, "malformed_record", "caption is not a string")
            continue
        url = str(row.get(url_column) or "")
        image_id = str(row["image_id"]) if row.get("image_id") is not None else (_sha(url) if url else source_id)
        yield _caption("parquet", source_id, image_id, url, caption)


READERS = {"coco": read_coco, "cc": read_cc, "parquet": read_parquet}


def clean(records: Iterator[Record | Reject], max_chars: int, min_words: int) -> Iterator[Record | Reject]:
    """Normalise captions; reject empty, too long/short, duplicate ids and duplicate captions."""
    seen_ids: set[str] = set()
    seen_text: dict[str, str] = {}
    for record in records:
        if isinstance(record, Reject):
            yield record
            continue
        record["caption"] = normalise(record["caption"])
        key = dedup_key(record["caption"])
        if record["id"] in seen_ids:
            yield Reject(record, "duplicate_id", record["id"])
        elif not record["caption"]:
            yield Reject(record, "empty_caption")
        elif len(record["caption"]) > max_chars:
            yield Reject(record, "too_long", f"{len(record['caption'])} > {max_chars} characters")
        elif word_count(record["caption"]) < min_words:
            yield Reject(record, "too_short", f"fewer than {min_words} words")
        elif key in seen_text:
            yield Reject(record, "duplicate_caption", f"same text as {seen_text[key]}")
        else:
            seen_text[key] = record["id"]
            yield record
        seen_ids.add(record["id"])


def shard_of(row_id: str, num_shards: int) -> int:
    """Stable shard index of a row id, independent of input order and process."""
    return int(hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) % num_shards


def sample(rows: list[Record], limit: int | None, seed: int) -> tuple[list[Record], list[Reject]]:
    """Keep `limit` rows chosen by a seeded hash of their ids (order-independent, stable)."""
    if limit is None or limit >= len(rows):
        return rows, []
    ranked = sorted(rows, key=lambda r: _sha(f"{seed}:{r['id']}", 32))
    keep = {r["id"] for r in ranked[:limit]}
    kept = [r for r in rows if r["id"] in keep]
    dropped = [Reject(r, "not_sampled", f"--limit {limit}") for r in rows if r["id"] not in keep]
    return kept, dropped


def fingerprint(config: RunConfig, run_dir: Path | None = None) -> str:
    """Ingest's config only: its input file is checked per shard by checksum."""
    return SPECS[STAGE].fingerprint(config)


def run_ingest(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Ingest `config.ingest.input` into RUN/ingest/; a rerun with the same input and config is a no-op."""
    cfg = config.ingest
    path = Path(cfg.input)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path  # shipped sample, when run from outside the checkout
    if not path.exists():
        raise IngestError(f"input {path} does not exist")
    directory = stage_dir(Path(run_dir), STAGE)
    fp = fingerprint(config)
    input_sha = sha256_file(path) if path.is_file() else _sha(str(sorted(p.name for p in path.iterdir())), 64)
    names = [shard_name(i) for i in range(cfg.num_shards)]
    if (directory / "manifest.json").exists():
        manifest = load_manifest(Path(run_dir), STAGE)
        if manifest["fingerprint"] == fp and all(
            completed_record(directory, n, fp, input_sha) for n in names
        ):
            return manifest

    start = time.perf_counter()
    accepted: list[Record] = []
    rejects: list[Reject] = []
    for item in clean(READERS[cfg.source](path), cfg.max_chars, cfg.min_words):
        (rejects if isinstance(item, Reject) else accepted).append(item)
    accepted, not_sampled = sample(accepted, cfg.limit, config.seed)
    rejects.extend(not_sampled)

    outputs = [ShardOutput(rows=[], rejects=[]) for _ in names]
    for row in accepted:
        outputs[shard_of(row["id"], cfg.num_shards)].rows.append(row)
    for reject in rejects:
        outputs[shard_of(str(reject.row.get("id", "")), cfg.num_shards)].rejects.append(reject)
    seconds = (time.perf_counter() - start) / len(names)
    records = [
        write_shard(directory, STAGE, name, CAPTION, out, in_rows=len(out.rows) + len(out.rejects),
                    fingerprint=fp, input_sha256=input_sha, seconds=seconds)
        for name, out in zip(names, outputs)
    ]
    for stale in (directory / "_done").glob("*.json"):
        if stale.stem not in names:
            stale.unlink()
    summary = {"input": str(path), "input_sha256": input_sha, "source": cfg.source}
    return write_stage_manifest(directory, STAGE, fp, cfg.model_dump(mode="json"), records, summary)
