"""report: a self-contained HTML quality report of a release, with its figures as PNG files.

    OUT/index.html        one page, no external resources: figures are embedded as data: URIs
    OUT/*.png             the same figures as files (funnel, words per level, containment,
                          root distance, Kendall τ)
    OUT/report.json       every number on the page, for scripts and CI

Numbers come from `statistics.py` (shape statistics shared with the dataset card; root distances
and d_corr from `geometry`) under an offline encoder, zero-shot, on at most `max_encoded_rows` rows per dataset (a seeded sample), so the
report stays minutes on a CPU for any release size. With `reference`, the same statistics are
computed for a file in the HierarCaps authors' CSV layout and shown side by side. The page is
deterministic: same release, reference, seed and encoder give the same bytes. Figures are drawn in
`figures.py`; the page is `templates/report.html.j2`, rendered by jinja2 with autoescape, so text
from a release is escaped by the template and only markup built here with `Markup.format` (which
escapes its arguments) passes through as HTML.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
from markupsafe import Markup

from hiercaps_gen.release.card import generator_notes, source_licences
from hiercaps_gen.files import atomic_write_bytes, atomic_write_json
from hiercaps_gen.hierarchy import LEVELS
from hiercaps_gen.release.manifest import ReleaseManifest
from hiercaps_gen.release.stats import FunnelStep, funnel, funnel_gaps, hierarchy_stats
from hiercaps_gen.report.figures import (
    SavedFigure,
    containment_figure,
    funnel_figure,
    root_distance_figure,
    save_figure,
    tau_figure,
    words_figure,
)
from hiercaps_gen.report.statistics import (
    Dataset,
    encoder_profile,
    read_reference,
    read_release_table,
    sample_indices,
    worst_indices,
)

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
)
Section = dict[str, Any]


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _code(value: Any) -> Markup:
    return Markup("<code>{}</code>").format(value)


def _figure(fig: SavedFigure) -> dict[str, Any]:
    return {"kind": "figure", "figure": {"name": fig.name, "title": fig.title,
                                         "base64": base64.b64encode(fig.png).decode("ascii")}}


def _table(header: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"kind": "table", "header": header, "rows": rows}


def _html(markup: str) -> dict[str, Any]:
    """A fixed paragraph of this module's own markup (never data)."""
    return {"kind": "html", "html": Markup(markup)}


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
        rows.append((f"{column}: distinct level-1 texts", [str(s[column]["distinct_level1"]) for s in stats]))
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


def _hierarchies(table: pa.Table, indices: list[int], tau: dict[int, float | None]) -> dict[str, Any]:
    """A side-by-side table: one block of LEVELS lines per hierarchy, its id in the first."""
    rows = []
    for i in indices:
        row = table.slice(i, 1).to_pylist()[0]
        score = "–" if row.get("filter_score") is None else f"{row['filter_score']:.3f}"
        t = tau.get(i)
        head = Markup("<b>{}</b><br>{}<br>filter {}<br>τ {}").format(
            row["id"], row["split"], score, "–" if t is None else f"{t:+.2f}")
        for k in range(LEVELS):
            rows.append({"head": head if k == 0 else None, "level": k + 1,
                         "positive": row["positive"][k], "negative": row["negative"][k]})
    return {"kind": "hierarchies", "rows": rows}


def funnel_section(steps: list[FunnelStep], gaps: list[tuple[str, str, int]], fig: SavedFigure) -> Section:
    rows = []
    for s in steps:
        reasons = Markup(", ").join(Markup("{}: {}").format(k, v) for k, v in sorted(s.reasons.items()))
        if s.unexplained_rejects:
            warn = Markup('<span class="warn">no reason recorded: {}</span>').format(s.unexplained_rejects)
            reasons = Markup(", ").join(filter(None, [reasons, warn]))
        side = "" if s.on_row_path else Markup(' <span class="muted">(side stage: rows are not passed on)</span>')
        rows.append([Markup("{}{}").format(s.stage, side), s.rows_in, s.accepted, s.rejected, _pct(s.acceptance),
                     reasons or "–"])
    if gaps:
        note = Markup("").join(
            Markup('<p class="warn">{} rows {} between {} and {}.</p>').format(abs(n), "added" if n > 0 else "lost", a, b)
            for a, b, n in gaps)
    elif len(steps) == 1:
        note = Markup('<p class="muted">No stage lineage was recorded in this release: only the released rows are known.</p>')
    else:
        note = Markup("<p>Every row is accounted for: each stage took in exactly what the one before it accepted.</p>")
    return {"id": "funnel", "title": "Acceptance funnel", "blocks": [
        _figure(fig), {"kind": "html", "html": note},
        _table(["stage", "in", "accepted", "rejected", "acceptance", "rejects by reason"], rows)]}


def shape_section(datasets: list[Dataset], stats: list[dict[str, Any]], words: SavedFigure,
                  contained: SavedFigure) -> Section:
    words_rows, contain_rows = [], []
    for dataset, s in zip(datasets, stats):
        for column in ("positive", "negative"):
            c = s[column]
            words_rows.append([dataset.label, column] + [
                Markup("{} <span class='muted'>(median {})</span>").format(_num(c["words_mean"][k]), c["words_median"][k])
                for k in range(LEVELS)])
            contain_rows.append([dataset.label, column] + [
                Markup("{} <span class='muted'>(coverage {})</span>").format(_pct(c["containment"][k]),
                                                                          _pct(c["coverage"][k]))
                for k in range(LEVELS - 1)] + [_pct(c["repeated_adjacent"])])
    equal_rows = [[d.label] + [_pct(v) for v in s["negative_equals_positive"]] for d, s in zip(datasets, stats)]
    refine_rows = [[d.label] + [_pct(v) for v in s["negative_refines_positive"]] for d, s in zip(datasets, stats)]
    return {"id": "shape", "title": "Shape of the hierarchies", "blocks": [
        _figure(words),
        _table(["dataset", "side"] + [f"level {k + 1} words" for k in range(LEVELS)], words_rows),
        _figure(contained),
        _html("<p>Containment k → k+1: rows whose level k+1 contains every word of level k (case-folded, no "
              "stemming); coverage: mean share of level k's words found in level k+1.</p>"),
        _table(["dataset", "side"] + [f"{k + 1} → {k + 2}" for k in range(LEVELS - 1)] + ["a level repeats"],
               contain_rows),
        _html("<p>Negatives that equal the positive at the same level (no negative at all):</p>"),
        _table(["dataset"] + [f"level {k + 1}" for k in range(LEVELS)], equal_rows),
        _html("<p>Negative level k+1 is written as a child of positive level k; rows where it contains every word "
              "of that parent:</p>"),
        _table(["dataset"] + [f"positive {k + 1} → negative {k + 2}" for k in range(LEVELS - 1)], refine_rows),
    ]}


def encoder_section(datasets: list[Dataset], profiles: list[dict[str, Any]], encoder: str,
                    distance: SavedFigure, taus: SavedFigure) -> Section:
    rows = []
    for dataset, p in zip(datasets, profiles):
        for column in ("positive", "negative"):
            prof = p[f"{column}_root_distance"]
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(prof["mean"], prof["std"])] if prof else ["–"] * LEVELS
            rows.append([dataset.label, column] + cells)
    summary = [[d.label, f"{p['rows']} of {d.table.num_rows}", _num(p["d_corr"], 3), _num(p["d_corr_std"], 3),
                _pct(p["fraction_perfect_order"])] for d, p in zip(datasets, profiles)]
    intro = Markup(
        "<p>Under {} with no fine-tuning. Root distance = ‖e − r‖ for unit embeddings e and r = embedding of the "
        "empty string; d_corr = mean Kendall τ between level and root distance over the positive hierarchies "
        "(1 = generality always ordered generic → specific).</p>").format(_code(encoder))
    return {"id": "encoder", "title": "Root distance and d_corr", "blocks": [
        {"kind": "html", "html": intro},
        _table(["dataset", "rows encoded", "d_corr", "τ std", "perfectly ordered"], summary),
        _figure(distance),
        _table(["dataset", "side"] + [f"level {k + 1}" for k in range(LEVELS)], rows),
        _figure(taus),
    ]}


def comparison_section(datasets: list[Dataset], stats: list[dict[str, Any]], profiles: list[dict[str, Any]]) -> Section:
    rows = [[name] + values for name, values in comparison_rows(stats, profiles, [d.skipped for d in datasets])]
    return {"id": "comparison", "title": "Release against the reference", "blocks": [
        _html("<p>The same statistics, computed the same way, side by side.</p>"),
        _table(["statistic"] + [d.label for d in datasets], rows)]}


def samples_section(table: pa.Table, sample: list[int], by_filter: list[int], by_tau: list[int],
                    tau: dict[int, float | None], seed: int) -> Section:
    blocks = [{"kind": "h3", "text": f"Random sample (seed {seed})"}, _hierarchies(table, sample, tau)]
    if by_filter:
        blocks += [{"kind": "h3", "text": "Lowest filter scores"}, _hierarchies(table, by_filter, tau)]
    else:
        blocks.append(_html('<p class="muted">No filter scores in this release.</p>'))
    blocks += [{"kind": "h3", "text": "Worst ordered under the encoder (lowest τ)"}, _hierarchies(table, by_tau, tau)]
    return {"id": "samples", "title": "Hierarchies: positive and negative side by side", "blocks": blocks}


def lineage_section(manifest: ReleaseManifest, table: pa.Table, steps: list[FunnelStep]) -> Section:
    info: list[list[Any]] = [
        ["name", manifest.name], ["version", manifest.version], ["created", manifest.created_at],
        ["config fingerprint", _code(manifest.config_fingerprint)],
        ["code version", manifest.code_version], ["licence", manifest.license]]
    info += [[f"split {k}", v] for k, v in manifest.splits.items()]
    info.append(["prompt hashes", Markup(", ").join(_code(h) for h in manifest.prompt_hashes) or "–"])
    models = [[role, _code(ident)] for role, ident in manifest.models.items()]
    stage_fps = {name: entry.fingerprint for name, entry in manifest.stages.items()}
    stages = [[s.stage, _code(stage_fps[s.stage]) if stage_fps.get(s.stage) else "–", _num(s.seconds, 1),
               "–" if s.throughput is None else f"{s.throughput:.3g}",
               Markup(", ").join(Markup("{}: {}").format(k, _code(v)) for k, v in sorted(s.details.items())) or "–",
               ", ".join(f"{k}={v:.4g}" for k, v in sorted(s.counters.items())) or "–"] for s in steps]
    sources = sorted({v for v in table["source"].to_pylist() if v})
    generators = sorted({v for v in table["generator_model"].to_pylist() if v})
    notes = Markup("").join(Markup("<li>{}</li>").format(line) for line in source_licences(sources))
    notes += Markup("").join(Markup("<li>{}: {}</li>").format(_code(g), note) for g, note in generator_notes(generators))
    return {"id": "lineage", "title": "Lineage", "blocks": [
        _table(["field", "value"], info),
        _table(["role", "model"], models or [["(none recorded)", "–"]]),
        _html("<p>Throughput = input rows per second of stage compute time (sum over shards).</p>"),
        _table(["stage", "fingerprint", "seconds", "rows/s", "details", "counters"], stages),
        {"kind": "html", "html": Markup("<ul>{}</ul>").format(notes)},
    ]}


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


def render_html(report: dict[str, Any], sections: list[Section]) -> str:
    """The page: headline numbers, then one section per topic; no external resources."""
    return TEMPLATES.get_template("report.html.j2").render(
        release=report["release"], encoder=report["encoder"], seed=report["seed"], headline=report["headline"],
        datasets=report["datasets"], sections=sections, levels=LEVELS)


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
        *([comparison_section(datasets, stats, profiles)] if reference is not None else []),
        samples_section(table, sample, by_filter, by_tau, tau, seed),
        lineage_section(manifest, table, steps),
    ]
    atomic_write_json(out_dir / "report.json", report)
    page = out_dir / "index.html"
    atomic_write_bytes(page, render_html(report, sections).encode("utf-8"))
    return page
