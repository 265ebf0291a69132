"""Which weights produced a text: the string stored in lineage and mixed into cache keys."""

from __future__ import annotations

from pathlib import Path

from hiercaps_gen.models import ModelNotAvailable, resolve, weights_hash


def model_identity(model: str, revision: str | None = None) -> str:
    """`model@<content hash>` for local weights, `model@revision` (or the bare id) for hub ids."""
    try:
        source = resolve(model)
    except ModelNotAvailable:
        return model
    if source.embedded or Path(source.path).exists():
        return f"{model}@{weights_hash(source)}"
    return f"{model}@{revision}" if revision else model
