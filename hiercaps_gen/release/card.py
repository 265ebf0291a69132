"""The dataset card (README.md) of a release: Hub metadata up front, the release's own numbers below.

The YAML front matter is built with `huggingface_hub.DatasetCardData`, so the Hub, its dataset
viewer and `datasets.load_dataset(release_dir)` read the splits from `configs` (`data/<split>-*`)
and the schema and sizes from `dataset_info`. Shape statistics come from `release.stats`, the
functions the HTML report uses; above `STATS_SAMPLE_ROWS` rows they are computed on a seeded
sample, and the card says so. Encoder-based numbers (root distance, d_corr) are left to
`hiercaps-gen report`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from huggingface_hub import DatasetCardData

from hiercaps_gen.release.manifest import SPLITS, ReleaseManifest
from hiercaps_gen.release.stats import FunnelStep, funnel, funnel_gaps, hierarchy_stats
from hiercaps_gen.hierarchy import LEVELS

STATS_SAMPLE_ROWS = 5_000
DATA_DIR = "data"
HUB_LICENCES = {"coco": "cc-by-4.0"}  # a source whose captions carry a Hub-listed licence
SOURCE_DATASETS = {"coco": "extended|coco", "cc": "extended|conceptual_captions"}
DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))

SOURCE_LICENCES = {
    "coco": "MS-COCO captions © COCO Consortium, Creative Commons Attribution 4.0 (https://cocodataset.org)",
    "cc": "Conceptual Captions © Google LLC, free to use for any purpose, attribution to Google appreciated "
          "(https://ai.google.com/research/ConceptualCaptions)",
}
UNKNOWN_LICENCE = "licence not recorded by the pipeline: check the source's terms before redistributing"

GENERATOR_NOTES = {
    "embedded:smollm2": (
        "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), run on CPU as a 4-bit GGUF. It is the offline "
        "default, chosen for size, not quality: at 135M parameters expect generic levels that copy caption "
        "words or drift from the caption, and level-1 categories less consistent than the reference's."
    ),
    "meta-llama/Llama-2-7b-chat-hf": (
        "Llama 2 7B chat (Meta), the authors' generator; the Llama 2 Community License and Acceptable Use "
        "Policy apply to its outputs. It can describe things that are not in the image and carries the "
        "biases of its training data into the categories it picks."
    ),
}
UNKNOWN_GENERATOR = "No notes for this generator: check its model card for licence and known failure modes."


def model_name(identity: str) -> str:
    """`embedded:smollm2@1a2b` → `embedded:smollm2` (lineage appends a weights hash or revision)."""
    return identity.split("@", 1)[0]


def source_licences(sources: list[str]) -> list[str]:
    return [f"{s}: {SOURCE_LICENCES.get(s, UNKNOWN_LICENCE)}" for s in sources]


def generator_notes(generators: list[str]) -> list[tuple[str, str]]:
    """(generator id, what is known about its licence and failure modes) for each generator."""
    return [(g, GENERATOR_NOTES.get(model_name(g), UNKNOWN_GENERATOR)) for g in generators]


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _funnel_row(step: FunnelStep) -> str:
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(step.reasons.items()))
    if step.unexplained_rejects:
        reasons = ", ".join(filter(None, [reasons, f"(no reason recorded): {step.unexplained_rejects}"]))
    rate = f"{step.throughput:.3g}" if step.throughput else "—"
    return f"| {step.stage} | {step.rows_in} | {step.accepted} | {step.rejected} | {reasons or '—'} | {rate} |"


def _distinct(table: pa.Table, column: str) -> list[str]:
    return sorted(v for v in pc.unique(table.column(column)).to_pylist() if v)


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1T")


def _dtype(arrow_type: pa.DataType) -> str:
    """`datasets`' dtype name of an Arrow primitive (they differ for floats: double → float64)."""
    return DTYPES.get(str(arrow_type), str(arrow_type))


def feature(arrow_type: pa.DataType) -> dict[str, str]:
    """The `datasets` YAML feature of a release column type (primitives and lists of them), written
    here rather than with `datasets.Features`, whose import alone costs seconds per release."""
    if pa.types.is_list(arrow_type):
        return {"list": _dtype(arrow_type.value_type)}
    return {"dtype": _dtype(arrow_type)}


def stats_sample(table: pa.Table, seed: int, order: pa.Array | None = None) -> pa.Table:
    """All rows up to STATS_SAMPLE_ROWS, else a seeded uniform sample of that many, in id order.

    `order` sorts `table` by id when it is not sorted itself (the writer never sorts it whole):
    the sample is then picked among the sorted positions, so it is the same rows either way."""
    if table.num_rows <= STATS_SAMPLE_ROWS:
        return table if order is None else table.take(order)
    picks = pa.array(np.sort(np.random.default_rng(seed).choice(table.num_rows, STATS_SAMPLE_ROWS, replace=False)))
    return table.take(picks if order is None else pc.take(order, picks))


class CardStatistics(NamedTuple):
    """The card's shape statistics and the sample they were computed on."""

    stats: dict[str, Any]
    sampled: int
    seed: int


def card_statistics(table: pa.Table, seed: int, order: pa.Array | None = None) -> CardStatistics:
    """Shape statistics of (a seeded sample of) the release rows; pure Python, so the writer runs
    it while the shards are encoded in other threads."""
    sample = stats_sample(table, seed, order)
    return CardStatistics(hierarchy_stats(sample), sample.num_rows, seed)


def card_data(manifest: ReleaseManifest, table: pa.Table, split_bytes: dict[str, int]) -> DatasetCardData:
    """Hub metadata: configs per split, dataset_info (features, split sizes), licence, language, sizes."""
    sources = _distinct(table, "source")
    hub_licence = HUB_LICENCES.get(sources[0]) if len(sources) == 1 else None
    # `other` needs a license_name on the Hub; the card's "Source and licence" section spells it out
    licence = {"license": hub_licence} if hub_licence else {"license": "other", "license_name": "hierarcaps-gen-mixed"}
    total = sum(manifest.splits.values())
    present = [split for split in SPLITS if manifest.splits.get(split)]  # an empty split has no files to point to
    files = [f for f in manifest.files if f.is_data]
    return DatasetCardData(
        **licence,
        pretty_name=manifest.name,
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["found", "machine-generated"],
        multilinguality=["monolingual"],
        size_categories=[size_category(total)],
        source_datasets=[SOURCE_DATASETS[s] for s in sources if s in SOURCE_DATASETS] or None,
        task_categories=["text-retrieval", "zero-shot-image-classification"],
        configs=[{"config_name": "default", "data_files": [
            {"split": split, "path": f"{DATA_DIR}/{split}-*"} for split in present]}] if present else None,
        dataset_info={
            "features": [{"name": field.name, **feature(field.type)} for field in table.schema],
            "splits": [{"name": split, "num_bytes": split_bytes.get(split, 0), "num_examples": manifest.splits[split]}
                       for split in present],
            "download_size": sum(f.bytes for f in files),
            "dataset_size": sum(split_bytes.values()),
        },
    )


def limitations(stats: dict[str, Any]) -> list[str]:
    """Measured weaknesses of this release, one sentence each."""
    pos, neg = stats["positive"], stats["negative"]
    return [
        f"Level 1 of the positives averages {_num(pos['words_mean'][0])} words "
        f"({pos['distinct_level1']} distinct level-1 texts over {stats['rows']} rows).",
        f"In {_pct(pos['repeated_adjacent'])} of rows a positive level repeats the one above it; "
        f"in {_pct(neg['repeated_adjacent'])} a negative level does.",
        "Negative level equal to the positive level at the same depth (levels 1→4): "
        + ", ".join(_pct(v) for v in stats["negative_equals_positive"]) + ".",
        "Positive level k+1 contains every word of level k (k = 1→2, 2→3, 3→4): "
        + ", ".join(_pct(v) for v in pos["containment"]) + ".",
    ]


def render_card(manifest: ReleaseManifest, table: pa.Table, statistics: CardStatistics | None = None,
                split_bytes: dict[str, int] | None = None, order: pa.Array | None = None) -> str:
    """README.md of a release: `DatasetCardData` front matter, then the card text.

    `statistics` default to `card_statistics(table, seed 0, order)`; `split_bytes` are the
    in-memory (Arrow) sizes of the splits for `dataset_info`; `order` sorts `table` by id.
    """
    statistics = statistics or card_statistics(table, 0, order)
    stats = statistics.stats
    steps = funnel(manifest)
    gaps = funnel_gaps(steps)
    generators = _distinct(table, "generator_model")
    sources = _distinct(table, "source")
    metadata = card_data(manifest, table, split_bytes or {})
    models = "\n".join(f"- {role}: `{ident}`" for role, ident in manifest.models.items()) or "- (none recorded)"
    funnel_rows = "\n".join(_funnel_row(s) for s in steps)
    gap_lines = "".join(
        f"\n**{'Added' if n > 0 else 'Lost'} between {a} and {b}: {abs(n)} rows.**\n" for a, b, n in gaps
    )
    example = ""
    if table.num_rows:
        first = table.slice(0 if order is None else order[0].as_py(), 1).to_pylist()[0]
        example = (
            f"\n## Example\n\n    positive: {' => '.join(first['positive'])}\n"
            f"    negative: {' => '.join(first['negative'])}\n"
        )
    sampled = (f"computed on a seeded sample of {statistics.sampled:,} of the {table.num_rows:,} rows "
               f"(seed {statistics.seed})" if statistics.sampled < table.num_rows
               else f"computed on all {table.num_rows:,} rows")
    levels = " | ".join(f"level {i + 1}" for i in range(LEVELS))
    pairs = " | ".join(f"{k + 1}→{k + 2}" for k in range(LEVELS - 1))
    newline = "\n"
    return f"""---
{metadata.to_yaml()}
---
# {manifest.name} {manifest.version}

HierarCaps-style caption hierarchies written by hierarcaps-gen {manifest.code_version}
(config `{manifest.config_fingerprint}`). Each row holds a **positive** hierarchy of {LEVELS}
descriptions, generic → specific, whose last level is the original caption, and a **negative**
hierarchy whose level *k* is a plausible sibling of positive level *k* that is not true of the
image (Alper & Averbuch-Elor, *Emergent Visual-Semantic Hierarchies in Image-Text
Representations*, ECCV 2024).

## Source and licence

Release licence: {manifest.license}.

{newline.join(f'- {line}' for line in source_licences(sources)) or '- (no rows)'}

Images are not included; `image_url` points to them under their own terms.

## Splits

| split | rows |
|---|---|
{newline.join(f'| {k} | {v} |' for k, v in manifest.splits.items())}

Train and test share no image (split by a seeded hash of `image_id`).

## Statistics

Shape statistics below are {sampled}.

Mean words per level (1 → {LEVELS}; HierarCaps reference ≈ 1.2, 1.6, 6.3, 10.5 for positives and
1.2, 1.9, 7.2, 11.8 for negatives):

| | {levels} |
|---|{'---|' * LEVELS}
| positive | {' | '.join(_num(v) for v in stats['positive']['words_mean'])} |
| negative | {' | '.join(_num(v) for v in stats['negative']['words_mean'])} |

Containment k → k+1 (share of rows whose level k+1 contains every word of level k; a negative
level k+1 is written as a child of positive level k, so the last row is its containment):

| | {pairs} |
|---|{'---|' * (LEVELS - 1)}
| positive → positive | {' | '.join(_pct(v) for v in stats['positive']['containment'])} |
| negative → negative | {' | '.join(_pct(v) for v in stats['negative']['containment'])} |
| positive → negative | {' | '.join(_pct(v) for v in stats['negative_refines_positive'])} |

Root distances and d_corr under an encoder, figures and sample hierarchies:
`hiercaps-gen report --release <this directory> --out <dir>`.

## Lineage

Models:
{models}

Prompt template hashes: {', '.join(f'`{h}`' for h in manifest.prompt_hashes) or '—'}

Acceptance funnel (throughput = input rows per second of stage compute):

| stage | in | accepted | rejected | rejects by reason | rows/s |
|---|---|---|---|---|---|
{funnel_rows}
{gap_lines}{example}
## Intended use

For training and evaluating how text (and image-text) encoders order descriptions by generality,
e.g. with the Radial Embedding loss. Not for use as ground truth about the images.

## Known limitations

The hierarchies are machine-written: levels can be vague, repetitive or wrong about the image, and
negatives can be true of the image by accident.

{newline.join(f'- `{g}`: {note}' for g, note in generator_notes(generators)) or '- (no generator recorded)'}

Measured on this release:

{newline.join(f'- {line}' for line in limitations(stats))}

## Loading

```python
from datasets import load_dataset
ds = load_dataset("path/to/{manifest.name}/{manifest.version}")        # this directory: train and test
ds = load_dataset("<org>/{manifest.name}", revision="{manifest.version}")  # once pushed to the Hub
```

Every file's sha256 is in `manifest.json`; `hiercaps-gen pull` verifies them before use:
`hiercaps-gen pull hf://<org>/{manifest.name} --version {manifest.version}`.
"""
