"""The report's numbers: the datasets it reads, the encoder profile, samples and worst rows.

Shape statistics come from `release.stats` (the dataset card uses the same functions); root
distances and τ from `geometry`. Nothing here draws or writes HTML.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from hiercaps_gen.geometry import kendall_tau, root_distances
from hiercaps_gen.hierarchy import is_hierarchy, split_levels
from hiercaps_gen.release.manifest import ReleaseManifest
from hiercaps_gen.release.read import load_release
from hiercaps_gen.release.stats import chains

RELEASE_COLUMNS = ["id", "source", "positive", "negative", "generator_model", "filter_score", "split"]


@dataclass(frozen=True)
class Dataset:
    """One side of the report: the release, or the reference file it is compared with."""

    label: str
    table: pa.Table  # at least `positive` and `negative` (list<string>, LEVELS each)
    skipped: int = 0  # input rows without LEVELS non-empty levels on both sides



def read_reference(path: Path) -> Dataset:
    """A HierarCaps-layout CSV (`positive`, `negative`, `image_url`; levels joined by " => "),
    plain or gzip. Rows without 4 non-empty levels on both sides are counted and left out."""
    path = Path(path)
    text = {name: pa.string() for name in ("positive", "negative", "image_url")}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=text))  # .gz is inferred
    missing = {"positive", "negative"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not in the HierarCaps CSV layout (missing columns {sorted(missing)})")
    positive, negative = [], []
    for p, n in zip(table["positive"].to_pylist(), table["negative"].to_pylist()):
        pos, neg = split_levels(p), split_levels(n)
        if is_hierarchy(pos) and is_hierarchy(neg):
            positive.append(pos)
            negative.append(neg)
    levels = pa.list_(pa.string())
    kept = pa.table({"positive": pa.array(positive, levels), "negative": pa.array(negative, levels)})
    return Dataset(f"reference ({path.name})", kept, table.num_rows - kept.num_rows)


def read_release_table(release_dir: Path) -> tuple[ReleaseManifest, pa.Table]:
    """The release manifest and its rows (all splits), every file's checksum verified first."""
    return load_release(release_dir, columns=RELEASE_COLUMNS)


def sample_indices(rows: int, k: int, seed: int) -> list[int]:
    """A seeded sample of row indices, in row order."""
    return sorted(random.Random(seed).sample(range(rows), min(k, rows)))


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def encoder_profile(embedder: Any, dataset: Dataset, max_rows: int | None, seed: int) -> dict[str, Any]:
    """Root distance per level (positives, negatives) and d_corr over a seeded sample of rows."""
    n = dataset.table.num_rows
    indices = sample_indices(n, max_rows, seed) if max_rows is not None and n > max_rows else list(range(n))
    if not indices:
        return {"rows": 0, "indices": [], "tau": [], "d_corr": None, "d_corr_std": None,
                "fraction_perfect_order": None, "positive_root_distance": None, "negative_root_distance": None}
    part = dataset.table.take(pa.array(indices, pa.int64()))
    pos = root_distances(embedder, chains(part, "positive"))
    neg = root_distances(embedder, chains(part, "negative"))
    taus = kendall_tau(pos)
    ordered = taus[~np.isnan(taus)]  # NaN: all four levels equally far from the root
    return {
        "rows": len(indices),
        "indices": indices,
        "tau": [_nan_to_none(t) for t in taus],
        "d_corr": float(ordered.mean()) if ordered.size else None,
        "d_corr_std": float(ordered.std()) if ordered.size else None,
        "fraction_perfect_order": float(np.mean(taus == 1.0)),
        "positive_root_distance": {"mean": pos.mean(0).tolist(), "std": pos.std(0).tolist()},
        "negative_root_distance": {"mean": neg.mean(0).tolist(), "std": neg.std(0).tolist()},
    }


# --- figures -------------------------------------------------------------------------------------


def worst_indices(table: pa.Table, tau: dict[int, float | None], k: int) -> tuple[list[int], list[int]]:
    """Lowest filter scores (when the release has them), and lowest τ under the encoder (ties,
    where the encoder cannot order the levels at all, first); both stable in row order."""
    scores = table["filter_score"].to_pylist()
    scored = [i for i, s in enumerate(scores) if s is not None]
    by_filter = sorted(scored, key=lambda i: scores[i])[:k]
    by_tau = sorted(tau, key=lambda i: -2.0 if tau[i] is None else tau[i])[:k]
    return by_filter, by_tau
