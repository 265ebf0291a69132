"""export: write a release in the HierarCaps authors' CSV layout, for their own RE code."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from hiercaps_gen.release.read import read_release
from hiercaps_gen.files import atomic_write_bytes
from hiercaps_gen.hierarchy import join_levels

FORMATS = ("hierarcaps-csv",)


def export_hierarcaps_csv(release_dir: Path, out_file: Path, split: str | None = None) -> int:
    """Columns `positive`, `negative`, `image_url`; levels joined with ' => '. Returns rows written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["positive", "negative", "image_url"])
    rows = 0
    for row in read_release(release_dir, split, columns=["positive", "negative", "image_url"]).to_pylist():
        writer.writerow([join_levels(row["positive"]), join_levels(row["negative"]), row["image_url"]])
        rows += 1
    atomic_write_bytes(Path(out_file), buffer.getvalue().encode("utf-8"))
    return rows
