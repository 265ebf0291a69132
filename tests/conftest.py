"""Shared fixtures: isolated Prefect home, offline hub, and synthetic rows for release tests."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

CATEGORIES = {
    "animal": ["dog", "cat", "horse", "bird"],
    "vehicle": ["bus", "train", "bicycle", "car"],
    "food": ["pizza", "sandwich", "cake", "salad"],
}
PLACES = ["on a street", "in a park", "near the water", "in a kitchen", "on a table"]


def synthetic_rows(n: int, seed: int = 0, images: int | None = None) -> list[dict]:
    """Rows in schema.FILTERED with well-formed 4-level hierarchies (for release tests)."""
    rng = random.Random(seed)
    images = images or max(1, n // 3)
    rows = []
    for i in range(n):
        cat = rng.choice(sorted(CATEGORIES))
        thing = rng.choice(CATEGORIES[cat])
        other = rng.choice([t for t in CATEGORIES[cat] if t != thing])
        other_cat = rng.choice([c for c in sorted(CATEGORIES) if c != cat])
        place = rng.choice(PLACES)
        caption = f"A {rng.choice(['small', 'large', 'brown', 'white'])} {thing} {place} number {i}"
        image = i % images
        rows.append({
            "id": f"synthetic:{i}", "source": "synthetic", "source_id": str(i),
            "image_id": str(image), "image_url": f"http://example.invalid/{image}.jpg",
            "caption": caption,
            "positive": [cat, thing, f"a {thing} {place}", caption],
            "negative": [other_cat, other, f"a {other} {place}", f"A {other} {place} number {i}"],
            "positive_origin": "llm", "generator_model": "test", "prompt_version": "v0",
            "prompt_hash": "0" * 16, "seed": seed, "attempts": 1, "ordering_model_hash": "none",
            "filter_score": rng.random(),
        })
    return rows


os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")  # ephemeral, isolated per session
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# the ephemeral API server starts in 20 s on an idle machine; a busy 2-core CI box needs longer
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")



@pytest.fixture(scope="session")
def smollm2_vllm():
    """The real CPU vLLM engine on the embedded SmolLM2, started once per test session."""
    from hiercaps_gen.config import LLMConfig
    from hiercaps_gen.llm.vllm_backend import VLLMGenerator

    generator = VLLMGenerator(LLMConfig(backend="vllm", device="cpu", structured_output=True, batch_size=64))
    yield generator
    generator.close()
