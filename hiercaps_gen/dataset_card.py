"""The dataset card (README.md) of a release, written from the release's own numbers."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hiercaps_gen.schema import LEVELS


def words_per_level(table: pa.Table, column: str) -> list[float]:
    """Mean whitespace-separated words at each level of a list<string> column."""
    if table.num_rows == 0:
        return [0.0] * LEVELS
    means = []
    for level in range(LEVELS):
        texts = pc.list_element(table[column], level)
        words = pc.list_value_length(pc.utf8_split_whitespace(texts))
        means.append(round(pc.mean(words).as_py(), 2))
    return means


def _row(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


def render_card(manifest: dict[str, Any], table: pa.Table) -> str:
    stages = manifest.get("stages", {})
    funnel = "\n".join(
        f"| {name} | {s['totals'].get('in', '')} | {s['totals'].get('accepted', '')} | "
        f"{', '.join(f'{k}: {v}' for k, v in s['totals'].get('reasons', {}).items()) or '—'} |"
        for name, s in stages.items()
    ) or "| (rows released directly) | | | |"
    models = "\n".join(f"- {role}: `{ident}`" for role, ident in manifest.get("models", {}).items()) or "- (none recorded)"
    sources = ", ".join(sorted(set(table["source"].to_pylist()))) if table.num_rows else "—"
    example = ""
    if table.num_rows:
        first = table.slice(0, 1).to_pylist()[0]
        example = (
            f"\n## Example\n\n    positive: {' => '.join(first['positive'])}\n"
            f"    negative: {' => '.join(first['negative'])}\n"
        )
    return f"""---
license: cc-by-4.0
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

Captions from: {sources}. Licence: {manifest['license']}. COCO captions © COCO Consortium,
CC BY 4.0 (https://cocodataset.org). Images are not included; `image_url` points to them.

## Splits

| split | rows |
|---|---|
""" + "\n".join(f"| {k} | {v} |" for k, v in manifest["splits"].items()) + f"""

Train and test share no image (split by a seeded hash of `image_id`).

## Statistics

Mean words per level (1 → {LEVELS}):

| | {' | '.join(f'level {i + 1}' for i in range(LEVELS))} |
|---|{'---|' * LEVELS}
| positive | {_row(words_per_level(table, 'positive'))} |
| negative | {_row(words_per_level(table, 'negative'))} |

## Lineage

Models:
{models}

Prompt template hashes: {', '.join(f'`{h}`' for h in manifest.get('prompt_hashes', [])) or '—'}

| stage | in | accepted | rejects by reason |
|---|---|---|---|
{funnel}
{example}
## Intended use and limitations

For training and evaluating how text (and image-text) encoders order descriptions by generality,
e.g. with the Radial Embedding loss. The hierarchies are machine-written: levels can be vague,
repetitive or wrong about the image, and negatives can be true of the image by accident. Small
offline generator models (the CPU default) write noticeably weaker text than the production
Llama-2 setup. Not for use as ground truth about the images.

## Loading

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_dir="path/to/{manifest['name']}/{manifest['version']}")
```

Every file's sha256 is in `manifest.json`; `hiercaps-gen pull` verifies them before use.
"""
