"""Statistics of hierarchy tables and release manifests: one definition for the report and the card.

Everything here is pure (no model, no I/O), so the HTML report, the dataset card and the tests
agree on what "words per level" or "containment" means:

- words: whitespace-separated tokens, as the HierarCaps paper's per-level lengths are counted.
- containment k → k+1: the share of rows whose level k+1 contains every word of level k
  (case-folded `\\w+` tokens, no stemming: "dogs" does not contain "dog"). It measures how often a
  more specific level literally refines the one above it; the reference data scores well below 1
  because abstraction often changes words ("motorized transportation" → "motorcycle").
- coverage k → k+1: the mean share of level k's words found in level k+1 (a softer containment).
- funnel: per stage, rows in / accepted / rejected by reason, from the release manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from hiercaps_gen.hierarchy import LEVELS, dedup_key, word_count
from hiercaps_gen.release.manifest import ReleaseManifest
from hiercaps_gen.stages.registry import NAMES

STAGE_ORDER = NAMES  # pipeline order, from the stage registry
ROW_PATH = ("ingest", "abstract", "negatives", "filter", "release")  # stages rows flow through, in order
_WORD = re.compile(r"\w+")


def chains(table: pa.Table, column: str) -> list[list[str]]:
    """The `column` hierarchies of a table as Python lists (LEVELS strings each)."""
    values = table.column(column).to_pylist() if table.num_rows else []
    bad = sum(1 for v in values if v is None or len(v) != LEVELS)
    if bad:
        raise ValueError(f"{bad} '{column}' hierarchies do not have {LEVELS} levels")
    return values


def word_counts(hierarchies: list[list[str]]) -> list[list[int]]:
    """Words of each level: one list per level (level 1 first), one entry per hierarchy."""
    return [[word_count(h[level]) for h in hierarchies] for level in range(LEVELS)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


def contains(uppers: list[str], lowers: list[str]) -> tuple[float | None, float | None]:
    """(share of pairs whose lower text has every word of the upper one, mean share of upper words
    found in the lower one). An upper text without word tokens counts as contained, coverage 1."""
    full, share = [], []
    for upper_text, lower_text in zip(uppers, lowers):
        upper, lower = _tokens(upper_text), _tokens(lower_text)
        full.append(float(upper <= lower))
        share.append(len(upper & lower) / len(upper) if upper else 1.0)
    return _mean(full), _mean(share)


def containment(hierarchies: list[list[str]]) -> tuple[list[float | None], list[float | None]]:
    """(containment, coverage) for each level pair k → k+1 of the same hierarchies."""
    pairs = [contains([h[k] for h in hierarchies], [h[k + 1] for h in hierarchies]) for k in range(LEVELS - 1)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def repeated_adjacent(hierarchies: list[list[str]]) -> float | None:
    """Share of hierarchies where some level repeats the one above it (ignoring case and punctuation)."""
    return _mean([
        float(any(dedup_key(h[k]) == dedup_key(h[k + 1]) for k in range(LEVELS - 1))) for h in hierarchies
    ])


def column_stats(hierarchies: list[list[str]]) -> dict[str, Any]:
    """Shape statistics of one side (positives or negatives) of a set of hierarchies."""
    counts = word_counts(hierarchies)
    contained, covered = containment(hierarchies)
    return {
        "words_mean": [_mean(c) for c in counts],
        "words_median": [sorted(c)[len(c) // 2] if c else None for c in counts],
        "containment": contained,
        "coverage": covered,
        "repeated_adjacent": repeated_adjacent(hierarchies),
        "distinct_level1": len({dedup_key(h[0]) for h in hierarchies}),
    }


def level_profile(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Words per level and level-k-in-level-k+1 containment of both sides (stage manifests)."""
    return {side: column_stats([r[side] for r in rows]) for side in ("positive", "negative") if rows}


def hierarchy_stats(table: pa.Table) -> dict[str, Any]:
    """Shape statistics of a table with `positive` and `negative` list<string> columns.

    `negative_equals_positive[k]` is the share of rows whose negative level k+1 is the positive
    level k+1 (case- and punctuation-insensitive): a negative that is no negative at all.
    `negative_refines_positive[k]` is the containment of positive level k+1 in negative level k+2:
    a negative is written as a child of the positive one level up, so this is its containment.
    """
    pos, neg = chains(table, "positive"), chains(table, "negative")
    refines = [contains([p[k] for p in pos], [n[k + 1] for n in neg])[0] for k in range(LEVELS - 1)]
    return {
        "rows": table.num_rows,
        "positive": column_stats(pos),
        "negative": column_stats(neg),
        "negative_equals_positive": [
            _mean([float(dedup_key(p[k]) == dedup_key(n[k])) for p, n in zip(pos, neg)]) for k in range(LEVELS)
        ],
        "negative_refines_positive": refines,
    }


@dataclass(frozen=True)
class FunnelStep:
    """One stage's row accounting, as recorded in its stage manifest."""

    stage: str
    rows_in: int
    accepted: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    counters: dict[str, float] = field(default_factory=dict)  # numeric stats (tokens, prompts, ...)
    details: dict[str, str] = field(default_factory=dict)  # text stats (model id, backend, device, ...)

    @property
    def on_row_path(self) -> bool:
        """False for side stages (train-ordering trains on rows but does not pass them on)."""
        return self.stage in ROW_PATH

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.rows_in if self.rows_in else None

    @property
    def throughput(self) -> float | None:
        """Input rows per second of stage compute time."""
        return self.rows_in / self.seconds if self.seconds else None

    @property
    def unexplained_rejects(self) -> int:
        """Rejected rows the manifest gives no reason for (0 when every reject is explained)."""
        return self.rejected - sum(self.reasons.values())


def _seconds(stats: dict[str, Any]) -> float | None:
    value = stats.get("shard_seconds", stats.get("seconds"))
    return float(value) if isinstance(value, (int, float)) else None


def funnel(manifest: ReleaseManifest) -> list[FunnelStep]:
    """Row accounting of every stage in a release manifest, in pipeline order, then the release."""
    stages = manifest.stages
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    steps = []
    for name in sorted(stages, key=lambda n: (rank.get(n, len(rank)), n)):
        totals, stats = stages[name].totals, stages[name].stats
        counters = {k: float(v) for k, v in stats.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seconds", "shard_seconds")}
        steps.append(FunnelStep(
            stage=name, rows_in=int(totals.get("in", 0)), accepted=int(totals.get("accepted", 0)),
            rejected=int(totals.get("rejected", 0)), reasons=dict(totals.get("reasons", {})),
            seconds=_seconds(stats), counters=counters,
            details={k: v for k, v in stats.items() if isinstance(v, str)},
        ))
    released = int(sum(manifest.splits.values()))
    steps.append(FunnelStep(stage="release", rows_in=released, accepted=released, rejected=0))
    return steps


def funnel_gaps(steps: list[FunnelStep]) -> list[tuple[str, str, int]]:
    """(from, to, rows) wherever a row-path stage does not take in what the one before accepted.

    Negative = rows lost between stages, positive = rows added (e.g. distilled positives). Empty
    when the funnel is closed; only the release step is compared when no stage lineage was kept.
    """
    path = [s for s in steps if s.on_row_path]
    return [
        (a.stage, b.stage, b.rows_in - a.accepted)
        for a, b in zip(path, path[1:])
        if b.rows_in != a.accepted
    ]
