"""The evaluate stage: how hierarchical an encoder's embedding space is, before and after RE tuning.

- d_corr: for each positive chain, Kendall τ-b between levels 1..4 and the root distances
  ‖e − r‖ of its texts (r = embedding of ""); mean over chains. 1 = generality ordered perfectly.
- retention: mean cosine between the tuned and original embeddings of the held-out texts.
- hierarchical retrieval precision / recall (needs images and an encoder with an image tower):
  for each image, sweep the root-distance threshold over every candidate text (all distinct
  positive texts of the test set); under each threshold take the candidate most similar to the
  image; the de-duplicated picks are the retrieved hierarchy, compared with the row's chain.

Root distances and τ come from `geometry.py`, shared with the checks, the filter and the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hiercaps_gen.encoders import TextEncoder, load_encoder
from hiercaps_gen.files import atomic_write_bytes, atomic_write_json
from hiercaps_gen.geometry import Encodes, kendall_tau, root_distance, root_distances
from hiercaps_gen.hierarchy import LEVELS, is_hierarchy, split_levels
from hiercaps_gen.release.read import split_files

@dataclass(frozen=True)
class TestRow:
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    image_url: str


def load_test_rows(path: Path, limit: int | None = None) -> tuple[list[TestRow], int]:
    """Test hierarchies from a release directory (its test split), a Parquet file, or the authors'
    CSV layout (.csv/.csv.gz: `positive`, `negative`, `image_url`, levels joined by " => ").
    Returns the valid rows and the number of rows skipped for not having 4 non-empty levels."""
    path = Path(path)
    if path.suffix in (".csv", ".gz"):
        table = pacsv.read_csv(path)
        records = [
            {"positive": split_levels(p), "negative": split_levels(n) or None, "image_url": u}
            for p, n, u in zip(*(table.column(c).to_pylist() for c in ("positive", "negative", "image_url")))
        ]
    else:
        records = [r for f in split_files(path, "test") for r in
                   pq.read_table(f, columns=["positive", "negative", "image_url"]).to_pylist()]
    rows, skipped = [], 0
    for record in records[:limit] if limit else records:
        if not (is_hierarchy(record["positive"]) and is_hierarchy(record["negative"])):
            skipped += 1
            continue
        rows.append(TestRow(tuple(record["positive"]), tuple(record["negative"]), record["image_url"] or ""))
    return rows, skipped


def _unit_np(vectors: Any) -> np.ndarray:
    array = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
    return array.astype(np.float64)


def d_corr(encoder: Encodes, chains: list[list[str]] | list[tuple[str, ...]]) -> float:
    """Mean over chains of Kendall τ between level and root distance (the paper's d_corr)."""
    return float(np.nanmean(kendall_tau(root_distances(encoder, chains))))


def retention(encoder: Encodes, original: Encodes, texts: list[str]) -> float:
    """Mean cosine between the two encoders' embeddings of the same texts."""
    a, b = _unit_np(encoder.encode(texts)), _unit_np(original.encode(texts))
    return float((a * b).sum(axis=1).mean())


def image_file(images_dir: Path, image_url: str) -> Path:
    """Where an image lives locally: its URL's (or path's) file name inside `images_dir`."""
    return Path(images_dir) / Path(urlparse(image_url).path).name


def retrieve_hierarchy(image: np.ndarray, cand: np.ndarray, cand_dist: np.ndarray) -> list[int]:
    """Indices of the best-matching candidate under each root-distance threshold, de-duplicated,
    in threshold order (generic first). Every candidate's distance is a threshold."""
    order = np.argsort(cand_dist, kind="stable")
    sims = cand[order] @ image
    best = np.maximum.accumulate(sims)
    picks = order[np.flatnonzero(sims >= best)]  # the running argmax changes exactly here
    return list(dict.fromkeys(picks.tolist()))


def retrieval_metrics(encoder: TextEncoder | _Memo, rows: list[TestRow], images_dir: Path) -> dict[str, Any]:
    """Hierarchical retrieval precision and recall over rows whose image is found in `images_dir`."""
    from PIL import Image

    candidates = sorted({t for r in rows for t in r.positive})
    emb = _unit_np(encoder.encode(candidates + [""]))
    cand, cand_dist = emb[:-1], root_distance(emb[:-1], emb[-1])
    urls = sorted({r.image_url for r in rows if r.image_url and image_file(images_dir, r.image_url).is_file()})
    if not urls:
        return {"images": 0, "rows": 0, "missing_rows": len(rows), "precision": None, "recall": None}
    images = [Image.open(image_file(images_dir, u)).convert("RGB") for u in urls]
    image_emb = dict(zip(urls, _unit_np(encoder.encode_images(images))))
    retrieved = {u: {candidates[i] for i in retrieve_hierarchy(image_emb[u], cand, cand_dist)} for u in urls}
    precision, recall = [], []
    for row in (r for r in rows if r.image_url in retrieved):
        got, truth = retrieved[row.image_url], set(row.positive)
        precision.append(len(got & truth) / len(got))
        recall.append(len(got & truth) / len(truth))
    return {"images": len(urls), "rows": len(precision), "missing_rows": len(rows) - len(precision),
            "precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
            "mean_retrieved": float(np.mean([len(v) for v in retrieved.values()]))}


class _Memo:
    """Encodes each distinct text once per evaluation: d_corr, negatives, retention and retrieval
    all read the same vectors."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder, self.cache = encoder, {}
        self.source, self.has_images = encoder.source, encoder.has_images

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, _unit_np(self.encoder.encode(missing))))
        return np.stack([self.cache[t] for t in texts])

    def encode_images(self, images: list[Any]) -> Any:
        return self.encoder.encode_images(images)


def encoder_metrics(encoder: TextEncoder | _Memo, rows: list[TestRow], images_dir: Path | None) -> dict[str, Any]:
    """d_corr and the per-level root-distance profile (positives and negatives) of one encoder."""
    pos = root_distances(encoder, [r.positive for r in rows])
    neg = root_distances(encoder, [r.negative for r in rows])
    taus = kendall_tau(pos)
    metrics: dict[str, Any] = {
        "d_corr": float(np.nanmean(taus)),
        "d_corr_std": float(np.nanstd(taus)),
        "fraction_perfect_order": float(np.mean(taus == 1.0)),
        "positive_root_distance": {"mean": pos.mean(0).tolist(), "std": pos.std(0).tolist()},
        "negative_root_distance": {"mean": neg.mean(0).tolist(), "std": neg.std(0).tolist()},
    }
    if images_dir is not None and encoder.has_images:
        metrics["retrieval"] = retrieval_metrics(encoder, rows, images_dir)
    return metrics


def plot_root_distance(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Mean ± std root distance per level, positives solid and negatives dashed, per encoder."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.arange(1, LEVELS + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (label, metrics), color in zip(results.items(), ("tab:gray", "tab:blue")):
        for kind, style in (("positive", "-"), ("negative", "--")):
            prof = metrics[f"{kind}_root_distance"]
            ax.errorbar(levels + (0.04 if kind == "negative" else 0), prof["mean"], yerr=prof["std"], fmt="o" + style,
                        color=color, capsize=3, label=f"{label}: {kind}s (d_corr {metrics['d_corr']:.3f})"
                        if kind == "positive" else f"{label}: {kind}s")
    ax.set_xticks(levels, [f"{k}" for k in levels])
    ax.set_xlabel("hierarchy level (1 = most generic, 4 = caption)")
    ax.set_ylabel("root distance ‖e − r‖ (r = embedding of \"\")")
    ax.set_title("Root distance per level (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _metric(metrics: dict[str, Any] | None, key: str) -> float | None:
    if metrics is None:
        return None
    if key in ("precision", "recall"):
        return (metrics.get("retrieval") or {}).get(key)
    return metrics.get(key)


def format_table(before: dict[str, Any] | None, after: dict[str, Any], retention_value: float | None) -> str:
    """The table evaluate prints: before / after / delta with a baseline, one value column without."""
    keys = [k for k in ("d_corr", "fraction_perfect_order", "precision", "recall")
            if _metric(after, k) is not None or _metric(before, k) is not None]
    if before is None:
        return "\n".join([f"{'metric':<24}{'value':>10}"] + [f"{k:<24}{_fmt(_metric(after, k)):>10}" for k in keys])
    lines = [f"{'metric':<24}{'before':>10}{'after':>10}{'delta':>10}"]
    for key in keys:
        b, a = _metric(before, key), _metric(after, key)
        delta = a - b if a is not None and b is not None else None
        lines.append(f"{key:<24}{_fmt(b):>10}{_fmt(a):>10}{_fmt(delta, signed=True):>10}")
    if retention_value is not None:
        lines.append(f"{'retention (cos)':<24}{'-':>10}{_fmt(retention_value):>10}{'-':>10}")
    return "\n".join(lines)


def evaluate(encoder: TextEncoder | str | Path, test_path: Path, out_dir: Path, images_dir: Path | None = None,
             baseline: TextEncoder | str | Path | None = None, compare_to_base: bool = True,
             limit: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate `encoder` (and a baseline: by default the model it was tuned from) on test hierarchies.

    Writes OUT/metrics.json and OUT/root_distance.png, prints the before/after table, returns the
    metrics dict.
    """
    out_dir = Path(out_dir)
    if not isinstance(encoder, TextEncoder):
        encoder = load_encoder(encoder, device=device)
    if baseline is None and compare_to_base and encoder.tuned:
        baseline = encoder.base
    if isinstance(baseline, (str, Path)):
        baseline = load_encoder(baseline, device=device)
    rows, skipped = load_test_rows(Path(test_path), limit)
    if not rows:
        raise ValueError(f"no valid test hierarchies in {test_path} ({skipped} rows skipped)")
    texts = sorted({t for r in rows for t in r.positive + r.negative})
    tuned = _Memo(encoder)
    tuned.encode(texts + [""])  # every text once, in large batches
    after = encoder_metrics(tuned, rows, images_dir)
    kept, before = None, None
    if baseline is not None:
        original = _Memo(baseline)
        original.encode(texts + [""])
        before = encoder_metrics(original, rows, images_dir)
        kept = retention(tuned, original, texts)
    results = {"before": before, "after": after} if before else {"after": after}
    plot = out_dir / "root_distance.png"
    plot_root_distance(results, plot)
    metrics = {
        "test": str(test_path), "rows": len(rows), "skipped_rows": skipped,
        "encoder": encoder.source, "encoder_base": encoder.base,
        "baseline": baseline.source if baseline is not None else None,
        "before": before, "after": after,
        "delta_d_corr": after["d_corr"] - before["d_corr"] if before else None,
        "retention": kept, "retention_texts": len(texts) if kept is not None else 0,
        "plot": str(plot),
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    print(format_table(before, after, kept))
    return metrics
