"""report: a self-contained HTML quality report of a release, with its figures as PNG files.

    OUT/index.html        one page, no external resources: figures are embedded as data: URIs
    OUT/*.png             the same figures as files (funnel, words per level, containment,
                          root distance, Kendall τ)
    OUT/report.json       every number on the page, for scripts and CI

Shape statistics come from `release.stats` (the dataset card uses the same functions). Root
distances and d_corr come from `evaluate.root_distances` / `kendall_tau_levels` under an offline
encoder, zero-shot, on at most `max_encoded_rows` rows per dataset (a seeded sample), so the
report stays minutes on a CPU for any release size. With `reference`, the same statistics are
computed for a file in the HierarCaps authors' CSV layout and shown side by side. The page is
deterministic: same release, reference, seed and encoder give the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from matplotlib.figure import Figure

from hiercaps_gen.files import atomic_write_bytes, atomic_write_json
from hiercaps_gen.hierarchy import LEVELS
from hiercaps_gen.release.card import generator_notes, source_licences
from hiercaps_gen.release.export import LEVEL_SEPARATOR
from hiercaps_gen.release.manifest import ReleaseManifest
from hiercaps_gen.release.read import load_release
from hiercaps_gen.release.stats import FunnelStep, chains, funnel, funnel_gaps, hierarchy_stats, word_counts

RELEASE_COLUMNS = ["id", "source", "positive", "negative", "generator_model", "filter_score", "split"]
MAX_WORDS_BIN = 30  # word-count histograms put everything longer in the last bin
COLORS = {"positive": "tab:blue", "negative": "tab:orange"}
UNEXPLAINED = "(no reason recorded)"
REJECT_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


@dataclass(frozen=True)
class Dataset:
    """One side of the report: the release, or the reference file it is compared with."""

    label: str
    table: pa.Table  # at least `positive` and `negative` (list<string>, LEVELS each)
    skipped: int = 0  # input rows without LEVELS non-empty levels on both sides


@dataclass(frozen=True)
class SavedFigure:
    """A written figure: its file name and PNG bytes (embedded in the page as well)."""

    name: str
    title: str
    png: bytes


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
        pos, neg = (p or "").split(LEVEL_SEPARATOR), (n or "").split(LEVEL_SEPARATOR)
        if len(pos) == LEVELS == len(neg) and all(t.strip() for t in pos + neg):
            positive.append([t.strip() for t in pos])
            negative.append([t.strip() for t in neg])
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
    from hiercaps_gen.stages.evaluate import kendall_tau_levels, root_distances

    n = dataset.table.num_rows
    indices = sample_indices(n, max_rows, seed) if max_rows is not None and n > max_rows else list(range(n))
    if not indices:
        return {"rows": 0, "indices": [], "tau": [], "d_corr": None, "d_corr_std": None,
                "fraction_perfect_order": None, "positive_root_distance": None, "negative_root_distance": None}
    part = dataset.table.take(pa.array(indices, pa.int64()))
    pos = root_distances(embedder, chains(part, "positive"))
    neg = root_distances(embedder, chains(part, "negative"))
    taus = kendall_tau_levels(pos)
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

def save_figure(fig: Figure, out_dir: Path, name: str, title: str) -> SavedFigure:
    """Write a figure as PNG; refuses axes without labels and records the labels in the PNG text."""
    labels = [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel()} for ax in fig.axes]
    unlabelled = [i for i, ax in enumerate(labels) if not (ax["xlabel"] and ax["ylabel"])]
    if unlabelled:
        raise ValueError(f"figure {name}: axes {unlabelled} lack an x or y label")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Title": title, "Description": json.dumps(labels)})
    atomic_write_bytes(out_dir / name, buffer.getvalue())
    return SavedFigure(name, title, buffer.getvalue())


def _legend_below(fig: Figure, ax: Any, columns: int = 2) -> None:
    """A figure legend under the plot, out of the data's way (none when nothing was drawn)."""
    handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, fontsize=7, loc="outside lower center", ncol=columns)


def funnel_figure(steps: list[FunnelStep]) -> Figure:
    """Horizontal bars per stage: accepted rows, then rejected rows stacked by reason."""
    fig = Figure(figsize=(8, 1.2 + 0.55 * len(steps)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    reasons = sorted({r for s in steps for r in s.reasons} | ({UNEXPLAINED} if any(
        s.unexplained_rejects for s in steps) else set()))
    palette = {r: REJECT_COLORS[i % len(REJECT_COLORS)] for i, r in enumerate(reasons)}
    palette[UNEXPLAINED] = "black"
    y = np.arange(len(steps))[::-1]
    ax.barh(y, [s.accepted for s in steps], color="tab:green", label="accepted")
    left = np.array([s.accepted for s in steps], dtype=float)
    for reason in reasons:
        counts = np.array([s.unexplained_rejects if reason == UNEXPLAINED else s.reasons.get(reason, 0)
                           for s in steps], dtype=float)
        ax.barh(y, counts, left=left, color=palette[reason], label=f"rejected: {reason}")
        left += counts
    ax.set_yticks(y, [s.stage for s in steps])
    ax.set_xlabel("rows")
    ax.set_ylabel("stage")
    ax.set_title("Acceptance funnel")
    fig.legend(fontsize=7, loc="outside right upper")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _word_shares(hierarchies: list[list[str]]) -> np.ndarray:
    """(levels, MAX_WORDS_BIN + 1): share of hierarchies with 0..MAX_WORDS_BIN(+) words per level."""
    out = np.zeros((LEVELS, MAX_WORDS_BIN + 1))
    for level, counts in enumerate(word_counts(hierarchies)):
        if counts:
            out[level] = np.bincount(np.minimum(counts, MAX_WORDS_BIN), minlength=MAX_WORDS_BIN + 1) / len(counts)
    return out


def words_figure(datasets: list[Dataset]) -> Figure:
    """Words-per-level distributions, one panel per level; the release solid, the reference dashed."""
    fig = Figure(figsize=(13, 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, LEVELS, sharey=False)
    x = np.arange(MAX_WORDS_BIN + 1)
    for dataset, style in zip(datasets, ("-", "--")):
        for column in ("positive", "negative"):
            shares = _word_shares(chains(dataset.table, column))
            for level, ax in enumerate(axes):
                ax.plot(x, shares[level], style, drawstyle="steps-mid", color=COLORS[column],
                        label=f"{dataset.label}: {column}s")
    for level, ax in enumerate(axes):
        ax.set_title(f"level {level + 1}" + (" (caption)" if level == LEVELS - 1 else ""))
        ax.set_xlabel(f"words ({MAX_WORDS_BIN} = {MAX_WORDS_BIN} or more)")
        ax.set_ylabel("share of hierarchies")
        ax.set_xlim(0, MAX_WORDS_BIN if level >= 2 else 8)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0], columns=4)
    return fig


def containment_figure(stats: list[tuple[str, dict[str, Any]]]) -> Figure:
    """Grouped bars per level pair: positive k ⊂ positive k+1, and positive k ⊂ negative k+1 (a
    negative is written as a child of the positive one level up), for each dataset."""
    fig = Figure(figsize=(7, 4.4), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    series = [item for label, s in stats for item in (
        (f"{label}: positive k → positive k+1", "positive", s["positive"]["containment"]),
        (f"{label}: positive k → negative k+1", "negative", s["negative_refines_positive"]))]
    width = 0.8 / len(series)
    x = np.arange(LEVELS - 1)
    for i, (label, column, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [100 * (v or 0) for v in values], width,
               color=COLORS[column], alpha=1.0 if i < 2 else 0.45, hatch="" if i < 2 else "//", label=label)
    ax.set_xticks(x, [f"{k + 1} → {k + 2}" for k in range(LEVELS - 1)])
    ax.set_ylim(0, 105)
    ax.set_xlabel("level pair k → k+1")
    ax.set_ylabel("rows: level k+1 has every word of positive k (%)", fontsize=9)
    ax.set_title("Containment between consecutive levels")
    _legend_below(fig, ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


def root_distance_figure(profiles: list[tuple[str, dict[str, Any]]], encoder: str) -> Figure:
    """Mean ± std root distance per level, positives and negatives, per dataset."""
    fig = Figure(figsize=(7, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    levels = np.arange(1, LEVELS + 1)
    for i, (label, prof) in enumerate(profiles):
        if not prof["rows"]:
            continue
        for j, column in enumerate(("positive", "negative")):
            data = prof[f"{column}_root_distance"]
            suffix = f" (d_corr {prof['d_corr']:.3f})" if column == "positive" and prof["d_corr"] is not None else ""
            ax.errorbar(levels + 0.05 * (2 * i + j), data["mean"], yerr=data["std"], fmt="o-" if i == 0 else "s--",
                        color=COLORS[column], capsize=3, label=f"{label}: {column}s{suffix}")
    ax.set_xticks(levels, [str(k) for k in levels])
    ax.set_xlabel("hierarchy level (1 = most generic, 4 = caption)")
    ax.set_ylabel('root distance ‖e − r‖ (r = embedding of "")')
    ax.set_title(f"Root distance per level under {encoder} (zero-shot)")
    _legend_below(fig, ax)
    ax.grid(alpha=0.3)
    return fig


def tau_figure(profiles: list[tuple[str, dict[str, Any]]]) -> Figure:
    """Distribution of the per-hierarchy Kendall τ whose mean is d_corr."""
    fig = Figure(figsize=(7, 3.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    values = np.round(np.linspace(-1, 1, 7), 3)  # τ of 4 untied items is a multiple of 1/3
    width = 0.8 / max(1, len(profiles))
    x = np.arange(len(values))
    for i, (label, prof) in enumerate(profiles):
        taus = np.round([t for t in prof["tau"] if t is not None], 3)
        shares = [float(np.mean(np.isclose(taus, v))) if len(taus) else 0.0 for v in values]
        ax.bar(x + (i - (len(profiles) - 1) / 2) * width, shares, width, label=label,
               color="tab:purple" if i == 0 else "tab:gray")
    ax.set_xticks(x, [f"{v:+.2f}" for v in values])
    ax.set_xlabel("Kendall τ between level and root distance (per positive hierarchy)")
    ax.set_ylabel("share of hierarchies")
    ax.set_title("Per-hierarchy ordering under the encoder (mean = d_corr)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


# --- HTML ----------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(fig: SavedFigure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure><img alt="{_e(fig.title)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_e(fig.title)} · <a href="{_e(fig.name)}">{_e(fig.name)}</a></figcaption></figure>')


def comparison_rows(stats: list[dict[str, Any]], profiles: list[dict[str, Any]], skipped: list[int]) -> list[tuple[str, list[str]]]:
    """(statistic, value per dataset) for the side-by-side table."""
    rows: list[tuple[str, list[str]]] = [
        ("hierarchies", [str(s["rows"]) for s in stats]),
        ("rows skipped (not 4 levels)", [str(k) for k in skipped]),
    ]
    for column in ("positive", "negative"):
        for k in range(LEVELS):
            rows.append((f"{column} words, level {k + 1} (mean)", [_num(s[column]["words_mean"][k]) for s in stats]))
    for column in ("positive", "negative"):
        for k in range(LEVELS - 1):
            rows.append((f"{column} containment {k + 1}→{k + 2}", [_pct(s[column]["containment"][k]) for s in stats]))
            rows.append((f"{column} coverage {k + 1}→{k + 2}", [_pct(s[column]["coverage"][k]) for s in stats]))
        rows.append((f"{column}: a level repeats the one above", [_pct(s[column]["repeated_adjacent"]) for s in stats]))
        rows.append((f"{column}: distinct level-1 categories", [str(s[column]["distinct_level1"]) for s in stats]))
    for k in range(LEVELS):
        rows.append((f"negative = positive at level {k + 1}", [_pct(s["negative_equals_positive"][k]) for s in stats]))
    for k in range(LEVELS - 1):
        rows.append((f"negative {k + 2} has all words of positive {k + 1}",
                     [_pct(s["negative_refines_positive"][k]) for s in stats]))
    rows.append(("rows encoded", [str(p["rows"]) for p in profiles]))
    rows.append(("d_corr (positives)", [_num(p["d_corr"], 3) for p in profiles]))
    rows.append(("hierarchies ordered perfectly (τ = 1)", [_pct(p["fraction_perfect_order"]) for p in profiles]))
    for column in ("positive", "negative"):
        for k in range(LEVELS):
            rows.append((f"{column} root distance, level {k + 1}", [
                _num(p[f"{column}_root_distance"]["mean"][k], 3) if p[f"{column}_root_distance"] else "–"
                for p in profiles]))
    return rows


def _hierarchy_rows(table: pa.Table, indices: list[int], tau: dict[int, float | None]) -> list[list[str]]:
    """Rows of a side-by-side table: one block of LEVELS lines per hierarchy."""
    rows = []
    for i in indices:
        row = table.slice(i, 1).to_pylist()[0]
        score = "–" if row.get("filter_score") is None else f"{row['filter_score']:.3f}"
        t = tau.get(i)
        head = (f"<b>{_e(row['id'])}</b><br>{_e(row['split'])}<br>filter {score}<br>"
                f"τ {'–' if t is None else f'{t:+.2f}'}")
        for k in range(LEVELS):
            first = f'<td rowspan="{LEVELS}" class="rowhead">{head}</td>' if k == 0 else ""
            rows.append([first, str(k + 1), _e(row["positive"][k]), _e(row["negative"][k])])
    return rows


def _hierarchy_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("row", "level", "positive", "negative"))
    body = "".join("<tr>" + r[0] + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>" for r in rows)
    return f'<table class="hier"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def worst_indices(table: pa.Table, tau: dict[int, float | None], k: int) -> tuple[list[int], list[int]]:
    """Lowest filter scores (when the release has them), and lowest τ under the encoder (ties,
    where the encoder cannot order the levels at all, first); both stable in row order."""
    scores = table["filter_score"].to_pylist()
    scored = [i for i, s in enumerate(scores) if s is not None]
    by_filter = sorted(scored, key=lambda i: scores[i])[:k]
    by_tau = sorted(tau, key=lambda i: -2.0 if tau[i] is None else tau[i])[:k]
    return by_filter, by_tau


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem;max-width:100%}
th,td{border:1px solid #ddd;padding:.3rem .55rem;text-align:left;vertical-align:top}
td code{overflow-wrap:anywhere}
th{background:#f3f3f6}
.headline{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.headline div{background:#f3f3f6;border-radius:8px;padding:.6rem 1rem;min-width:10rem}
.headline b{display:block;font-size:1.3rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}
.hier td.rowhead{background:#fafafa;font-size:.8rem;white-space:nowrap}
.warn{color:#a40000;font-weight:600}.muted{color:#666;font-size:.85rem}
code{background:#f3f3f6;padding:0 .2rem;border-radius:3px}
"""

# Sets data-images / data-images-loaded on <body> once every figure has decoded: headless checks read it.
LOADED_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-images-loaded', String(loaded));
});
"""


def _section(key: str, title: str, *parts: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def funnel_section(steps: list[FunnelStep], gaps: list[tuple[str, str, int]], fig: SavedFigure) -> str:
    rows = []
    for s in steps:
        reasons = ", ".join(f"{_e(k)}: {v}" for k, v in sorted(s.reasons.items()))
        if s.unexplained_rejects:
            reasons = ", ".join(filter(None, [reasons, f'<span class="warn">no reason recorded: {s.unexplained_rejects}</span>']))
        side = "" if s.on_row_path else ' <span class="muted">(side stage: rows are not passed on)</span>'
        rows.append([_e(s.stage) + side, str(s.rows_in), str(s.accepted), str(s.rejected), _pct(s.acceptance),
                     reasons or "–"])
    if gaps:
        note = "".join(f'<p class="warn">{abs(n)} rows {"added" if n > 0 else "lost"} between {_e(a)} and {_e(b)}.</p>'
                       for a, b, n in gaps)
    elif len(steps) == 1:
        note = '<p class="muted">No stage lineage was recorded in this release: only the released rows are known.</p>'
    else:
        note = "<p>Every row is accounted for: each stage took in exactly what the one before it accepted.</p>"
    return _section("funnel", "Acceptance funnel", _img(fig), note,
                    _table(["stage", "in", "accepted", "rejected", "acceptance", "rejects by reason"], rows))


def shape_section(datasets: list[Dataset], stats: list[dict[str, Any]], words: SavedFigure,
                  contained: SavedFigure) -> str:
    words_rows, contain_rows = [], []
    for dataset, s in zip(datasets, stats):
        for column in ("positive", "negative"):
            c = s[column]
            words_rows.append([_e(dataset.label), column] + [
                f"{_num(c['words_mean'][k])} <span class='muted'>(median {c['words_median'][k]})</span>"
                for k in range(LEVELS)])
            contain_rows.append([_e(dataset.label), column] + [
                f"{_pct(c['containment'][k])} <span class='muted'>(coverage {_pct(c['coverage'][k])})</span>"
                for k in range(LEVELS - 1)] + [_pct(c["repeated_adjacent"])])
    equal_rows = [[_e(d.label)] + [_pct(v) for v in s["negative_equals_positive"]] for d, s in zip(datasets, stats)]
    refine_rows = [[_e(d.label)] + [_pct(v) for v in s["negative_refines_positive"]] for d, s in zip(datasets, stats)]
    return _section(
        "shape", "Shape of the hierarchies",
        _img(words),
        _table(["dataset", "side"] + [f"level {k + 1} words" for k in range(LEVELS)], words_rows),
        _img(contained),
        "<p>Containment k → k+1: rows whose level k+1 contains every word of level k (case-folded, no stemming); "
        "coverage: mean share of level k's words found in level k+1.</p>",
        _table(["dataset", "side"] + [f"{k + 1} → {k + 2}" for k in range(LEVELS - 1)] + ["a level repeats"],
               contain_rows),
        "<p>Negatives that equal the positive at the same level (no negative at all):</p>",
        _table(["dataset"] + [f"level {k + 1}" for k in range(LEVELS)], equal_rows),
        "<p>Negative level k+1 is written as a child of positive level k; rows where it contains every word "
        "of that parent:</p>",
        _table(["dataset"] + [f"positive {k + 1} → negative {k + 2}" for k in range(LEVELS - 1)], refine_rows),
    )


def encoder_section(datasets: list[Dataset], profiles: list[dict[str, Any]], encoder: str,
                    distance: SavedFigure, taus: SavedFigure) -> str:
    rows = []
    for dataset, p in zip(datasets, profiles):
        for column in ("positive", "negative"):
            prof = p[f"{column}_root_distance"]
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(prof["mean"], prof["std"])] if prof else ["–"] * LEVELS
            rows.append([_e(dataset.label), column] + cells)
    summary = [[_e(d.label), f"{p['rows']} of {d.table.num_rows}", _num(p["d_corr"], 3), _num(p["d_corr_std"], 3),
                _pct(p["fraction_perfect_order"])] for d, p in zip(datasets, profiles)]
    return _section(
        "encoder", "Root distance and d_corr",
        f"<p>Under <code>{_e(encoder)}</code> with no fine-tuning. Root distance = ‖e − r‖ for unit embeddings e "
        "and r = embedding of the empty string; d_corr = mean Kendall τ between level and root distance over "
        "the positive hierarchies (1 = generality always ordered generic → specific).</p>",
        _table(["dataset", "rows encoded", "d_corr", "τ std", "perfectly ordered"], summary),
        _img(distance),
        _table(["dataset", "side"] + [f"level {k + 1}" for k in range(LEVELS)], rows),
        _img(taus),
    )


def comparison_section(datasets: list[Dataset], stats: list[dict[str, Any]], profiles: list[dict[str, Any]]) -> str:
    rows = [[_e(name)] + values for name, values in comparison_rows(stats, profiles, [d.skipped for d in datasets])]
    return _section("comparison", "Release against the reference",
                    "<p>The same statistics, computed the same way, side by side.</p>",
                    _table(["statistic"] + [_e(d.label) for d in datasets], rows))


def samples_section(table: pa.Table, sample: list[int], by_filter: list[int], by_tau: list[int],
                    tau: dict[int, float | None], seed: int) -> str:
    parts = [f"<h3>Random sample (seed {seed})</h3>", _hierarchy_table(_hierarchy_rows(table, sample, tau))]
    if by_filter:
        parts += ["<h3>Lowest filter scores</h3>", _hierarchy_table(_hierarchy_rows(table, by_filter, tau))]
    else:
        parts.append('<p class="muted">No filter scores in this release.</p>')
    parts += ["<h3>Worst ordered under the encoder (lowest τ)</h3>",
              _hierarchy_table(_hierarchy_rows(table, by_tau, tau))]
    return _section("samples", "Hierarchies: positive and negative side by side", *parts)


def lineage_section(manifest: ReleaseManifest, table: pa.Table, steps: list[FunnelStep]) -> str:
    info = [["name", _e(manifest.name)], ["version", _e(manifest.version)],
            ["created", _e(manifest.created_at)],
            ["config fingerprint", f"<code>{_e(manifest.config_fingerprint)}</code>"],
            ["code version", _e(manifest.code_version)], ["licence", _e(manifest.license)]]
    info += [[f"split {_e(k)}", str(v)] for k, v in manifest.splits.items()]
    info.append(["prompt hashes", ", ".join(f"<code>{_e(h)}</code>" for h in manifest.prompt_hashes) or "–"])
    models = [[_e(role), f"<code>{_e(ident)}</code>"] for role, ident in manifest.models.items()]
    stage_fps = {name: entry.fingerprint for name, entry in manifest.stages.items()}
    stages = [[_e(s.stage), f"<code>{_e(stage_fps[s.stage])}</code>" if stage_fps.get(s.stage) else "–", _num(s.seconds, 1),
               "–" if s.throughput is None else f"{s.throughput:.3g}",
               ", ".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in sorted(s.details.items())) or "–",
               ", ".join(f"{_e(k)}={v:.4g}" for k, v in sorted(s.counters.items())) or "–"] for s in steps]
    sources = sorted({v for v in table["source"].to_pylist() if v})
    generators = sorted({v for v in table["generator_model"].to_pylist() if v})
    notes = "".join(f"<li>{_e(line)}</li>" for line in source_licences(sources))
    notes += "".join(f"<li><code>{_e(g)}</code>: {_e(note)}</li>" for g, note in generator_notes(generators))
    return _section(
        "lineage", "Lineage",
        _table(["field", "value"], info),
        _table(["role", "model"], models or [["(none recorded)", "–"]]),
        "<p>Throughput = input rows per second of stage compute time (sum over shards).</p>",
        _table(["stage", "fingerprint", "seconds", "rows/s", "details", "counters"], stages),
        f"<ul>{notes}</ul>",
    )


def headline(stats: list[dict[str, Any]], profiles: list[dict[str, Any]], steps: list[FunnelStep]) -> dict[str, list[str]]:
    """The numbers shown first, release first and reference (when given) second."""
    def levels(values: list[float | None], fmt=_num) -> str:
        return " · ".join(fmt(v) for v in values)

    out = {
        "hierarchies": [str(s["rows"]) for s in stats],
        "positive words per level": [levels(s["positive"]["words_mean"], lambda v: _num(v, 1)) for s in stats],
        "negative words per level": [levels(s["negative"]["words_mean"], lambda v: _num(v, 1)) for s in stats],
        "positive containment 1→2 · 2→3 · 3→4": [levels(s["positive"]["containment"], _pct) for s in stats],
        "d_corr (zero-shot)": [_num(p["d_corr"], 3) for p in profiles],
    }
    if steps[0].stage != "release" and steps[0].rows_in:
        out["released of input rows"] = [_pct(steps[-1].accepted / steps[0].rows_in)]
    return out


def render_html(report: dict[str, Any], sections: list[str]) -> str:
    """The page: headline numbers, then one section per topic; no external resources."""
    release = report["release"]
    labels = report["datasets"]
    cards = "".join(
        f"<div>{_e(name)}<b>{_e(values[0])}</b>"
        + (f"<span class='muted'>{_e(labels[1])}: {_e(values[1])}</span>" if len(values) > 1 else "") + "</div>"
        for name, values in report["headline"].items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(release['name'])} {_e(release['version'])}: quality report</title>
<style>{STYLE}</style></head>
<body>
<h1>{_e(release['name'])} {_e(release['version'])}</h1>
<p class="muted">Quality report of the release at <code>{_e(release['path'])}</code>, created {_e(release['created_at'])},
config <code>{_e(release['config_fingerprint'])}</code>, hierarcaps-gen {_e(release['code_version'])}.
Encoder numbers: <code>{_e(report['encoder'])}</code>, zero-shot. Sample seed {report['seed']}.</p>
<div class="headline">{cards}</div>
{''.join(sections)}
<script>{LOADED_SCRIPT}</script>
</body></html>
"""


def build_report(
    release_dir: Path,
    out_dir: Path,
    reference: Path | None = None,
    seed: int = 0,
    *,
    encoder: str = "embedded:minilm",
    max_encoded_rows: int | None = 1000,
    sample_size: int = 8,
    device: str = "auto",
) -> Path:
    """Write OUT/index.html (self-contained), OUT/*.png and OUT/report.json; return the HTML path."""
    from hiercaps_gen.encoders import get_embedder
    from hiercaps_gen.models import resolve, weights_hash

    release_dir, out_dir = Path(release_dir), Path(out_dir)
    manifest, table = read_release_table(release_dir)
    datasets = [Dataset("release", table)] + ([read_reference(Path(reference))] if reference is not None else [])
    stats = [hierarchy_stats(d.table) for d in datasets]
    embedder = get_embedder(encoder, device)
    encoder_id = f"{encoder}@{weights_hash(resolve(encoder))}"
    profiles = [encoder_profile(embedder, d, max_encoded_rows, seed) for d in datasets]
    steps = funnel(manifest)
    gaps = funnel_gaps(steps)

    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = [(d.label, p) for d, p in zip(datasets, profiles)]
    funnel_png = save_figure(funnel_figure(steps), out_dir, "funnel.png", "Acceptance funnel by stage")
    words_png = save_figure(words_figure(datasets), out_dir, "words_per_level.png", "Words per level")
    contained_png = save_figure(containment_figure([(d.label, s) for d, s in zip(datasets, stats)]), out_dir,
                                "containment.png", "Containment between consecutive levels")
    distance_png = save_figure(root_distance_figure(labelled, encoder), out_dir, "root_distance.png",
                               "Root distance per level")
    tau_png = save_figure(tau_figure(labelled), out_dir, "tau.png", "Per-hierarchy Kendall τ")

    tau = dict(zip(profiles[0]["indices"], profiles[0]["tau"]))
    sample = sample_indices(table.num_rows, sample_size, seed)
    by_filter, by_tau = worst_indices(table, tau, sample_size)
    ids = table["id"].to_pylist()
    report = {
        "release": {"path": str(release_dir), **manifest.model_dump(include={
            "name", "version", "created_at", "config_fingerprint", "code_version", "license", "splits", "models",
            "prompt_hashes"})},
        "seed": seed,
        "encoder": encoder_id,
        "datasets": [d.label for d in datasets],
        "headline": headline(stats, profiles, steps),
        "stats": {d.label: {**s, "skipped": d.skipped} for d, s in zip(datasets, stats)},
        "encoder_profiles": {d.label: {k: v for k, v in p.items() if k not in ("indices", "tau")}
                             for d, p in zip(datasets, profiles)},
        "funnel": [{"stage": s.stage, "in": s.rows_in, "accepted": s.accepted, "rejected": s.rejected,
                    "reasons": s.reasons, "unexplained_rejects": s.unexplained_rejects, "seconds": s.seconds,
                    "rows_per_second": s.throughput} for s in steps],
        "funnel_gaps": [{"from": a, "to": b, "rows": n} for a, b, n in gaps],
        "samples": {"random": [ids[i] for i in sample], "lowest_filter_score": [ids[i] for i in by_filter],
                    "lowest_tau": [ids[i] for i in by_tau]},
        "figures": [f.name for f in (funnel_png, words_png, contained_png, distance_png, tau_png)],
    }
    sections = [
        funnel_section(steps, gaps, funnel_png),
        shape_section(datasets, stats, words_png, contained_png),
        encoder_section(datasets, profiles, encoder_id, distance_png, tau_png),
        comparison_section(datasets, stats, profiles) if reference is not None else "",
        samples_section(table, sample, by_filter, by_tau, tau, seed),
        lineage_section(manifest, table, steps),
    ]
    atomic_write_json(out_dir / "report.json", report)
    page = out_dir / "index.html"
    atomic_write_bytes(page, render_html(report, sections).encode("utf-8"))
    return page
