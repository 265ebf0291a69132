"""Arrow schemas of the rows each stage writes: the data contract between stages.

Each stage's schema extends the one before it, so a row carries its whole lineage forward.
"""

from __future__ import annotations

import pyarrow as pa

LEVELS = 4
ANYTHING = "anything"  # level 0: the implicit root every level-1 description is a child of

CAPTION = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("image_id", pa.string()),
        ("image_url", pa.string()),
        ("caption", pa.string()),
    ]
)

POSITIVE = pa.schema(
    list(CAPTION)
    + [
        ("positive", pa.list_(pa.string())),
        ("positive_origin", pa.string()),  # "llm" or "distilled"
        ("generator_model", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_hash", pa.string()),
        ("seed", pa.int64()),
        ("attempts", pa.int32()),
    ]
)

NEGATIVE = pa.schema(
    list(POSITIVE)
    + [
        ("negative", pa.list_(pa.string())),
        ("ordering_model_hash", pa.string()),
    ]
)

FILTERED = pa.schema(list(NEGATIVE) + [("filter_score", pa.float64())])

RELEASE = pa.schema(list(FILTERED) + [("split", pa.string())])

REJECT = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("row", pa.string()),  # the rejected input row as JSON: nothing is lost
    ]
)
