"""The dataset card (README.md) of a release, written from the release's own numbers.

The statistics come from `release_stats`, the same functions the HTML report uses, so the card
and the report never disagree. Encoder-based numbers (root distance, d_corr) need a model and are
left to `hiercaps-gen report`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from hiercaps_gen.release_stats import FunnelStep, funnel, funnel_gaps, hierarchy_stats
from hiercaps_gen.schema import LEVELS

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
    return sorted({v for v in table.column(column).to_pylist() if v}) if table.num_rows else []


def limitations(stats: dict[str, Any]) -> list[str]:
    """Measured weaknesses of this release, one sentence each."""
    pos, neg = stats["positive"], stats["negative"]
    return [
        f"Level 1 of the positives averages {_num(pos['words_mean'][0])} words "
        f"({pos['distinct_level1']} distinct level-1 categories over {stats['rows']} rows).",
        f"In {_pct(pos['repeated_adjacent'])} of rows a positive level repeats the one above it; "
        f"in {_pct(neg['repeated_adjacent'])} a negative level does.",
        "Negative level equal to the positive level at the same depth (levels 1→4): "
        + ", ".join(_pct(v) for v in stats["negative_equals_positive"]) + ".",
        "Positive level k+1 contains every word of level k (k = 1→2, 2→3, 3→4): "
        + ", ".join(_pct(v) for v in pos["containment"]) + ".",
    ]


def render_card(manifest: dict[str, Any], table: pa.Table) -> str:
    stats = hierarchy_stats(table)
    steps = funnel(manifest)
    gaps = funnel_gaps(steps)
    sources = _distinct(table, "source")
    generators = _distinct(table, "generator_model")
    hub_licence = "cc-by-4.0" if sources == ["coco"] else "other"
    models = "\n".join(f"- {role}: `{ident}`" for role, ident in manifest.get("models", {}).items()) or "- (none recorded)"
    funnel_rows = "\n".join(_funnel_row(s) for s in steps)
    gap_lines = "".join(
        f"\n**{'Added' if n > 0 else 'Lost'} between {a} and {b}: {abs(n)} rows.**\n" for a, b, n in gaps
    )
    example = ""
    if table.num_rows:
        first = table.slice(0, 1).to_pylist()[0]
        example = (
            f"\n## Example\n\n    positive: {' => '.join(first['positive'])}\n"
            f"    negative: {' => '.join(first['negative'])}\n"
        )
    levels = " | ".join(f"level {i + 1}" for i in range(LEVELS))
    pairs = " | ".join(f"{k + 1}→{k + 2}" for k in range(LEVELS - 1))
    newline = "\n"
    return f"""---
license: {hub_licence}
pretty_name: {manifest['name']}
task_categories: [text-retrieval, zero-shot-image-classification]
configs:
- config_name: default
  data_files:
  - split: train
    path: train-*.parquet
  - split: test
    path: test-*.parquet
---
# {manifest['name']} {manifest['version']}

HierarCaps-style caption hierarchies written by hierarcaps-gen {manifest['code_version']}
(config `{manifest['config_fingerprint']}`). Each row holds a **positive** hierarchy of {LEVELS}
descriptions, generic → specific, whose last level is the original caption, and a **negative**
hierarchy whose level *k* is a plausible sibling of positive level *k* that is not true of the
image (Alper & Averbuch-Elor, *Emergent Visual-Semantic Hierarchies in Image-Text
Representations*, ECCV 2024).

## Source and licence

Release licence: {manifest['license']}.

{newline.join(f'- {line}' for line in source_licences(sources)) or '- (no rows)'}

Images are not included; `image_url` points to them under their own terms.

## Splits

| split | rows |
|---|---|
{newline.join(f'| {k} | {v} |' for k, v in manifest['splits'].items())}

Train and test share no image (split by a seeded hash of `image_id`).

## Statistics

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

Prompt template hashes: {', '.join(f'`{h}`' for h in manifest.get('prompt_hashes', [])) or '—'}

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
ds = load_dataset("parquet", data_dir="path/to/{manifest['name']}/{manifest['version']}")
```

Every file's sha256 is in `manifest.json`; `hiercaps-gen pull` verifies them before use.
"""
