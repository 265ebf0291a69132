"""The report's figures: matplotlib, every axis labelled, written as PNG files."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hiercaps_gen.files import atomic_write_bytes
from hiercaps_gen.hierarchy import LEVELS
from hiercaps_gen.release.stats import FunnelStep, chains, word_counts
from hiercaps_gen.report.statistics import Dataset

MAX_WORDS_BIN = 30  # word-count histograms put everything longer in the last bin
COLORS = {"positive": "tab:blue", "negative": "tab:orange"}
UNEXPLAINED = "(no reason recorded)"
REJECT_COLORS = ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


@dataclass(frozen=True)
class SavedFigure:
    """A written figure: its file name and PNG bytes (embedded in the page as well)."""

    name: str
    title: str
    png: bytes



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
