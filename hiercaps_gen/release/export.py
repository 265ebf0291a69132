"""export: write a release in the HierarCaps authors' CSV layout, for their own RE code."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow.parquet as pq

from hiercaps_gen.release import release_files
from hiercaps_gen.shards import atomic_write_bytes

LEVEL_SEPARATOR = " => "
FORMATS = ("hierarcaps-csv",)


def export_hierarcaps_csv(release_dir: Path, out_file: Path, split: str | None = None) -> int:
    """Columns `positive`, `negative`, `image_url`; levels joined with ' => '. Returns rows written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["positive", "negative", "image_url"])
    rows = 0
    for path in release_files(release_dir, split):  # checksums verified first
        for row in pq.read_table(path, columns=["positive", "negative", "image_url"]).to_pylist():
            writer.writerow([LEVEL_SEPARATOR.join(row["positive"]), LEVEL_SEPARATOR.join(row["negative"]), row["image_url"]])
            rows += 1
    atomic_write_bytes(Path(out_file), buffer.getvalue().encode("utf-8"))
    return rows
