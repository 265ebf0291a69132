"""Content-addressed cache of LLM generations, so a rerun never pays for the same call twice.

Keys are `GenerationRequest.key(model_id)`: sha256 over model, full prompt (and so the template's
bytes and the caption), sampling parameters and seed. Values are plain text and counts in SQLite
(WAL mode: several shard workers may share one file). Failed generations are not stored.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from hiercaps_gen.llm.base import Generation, GenerationRequest, Generator, OnResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL
)
"""


class LLMCache:
    """A SQLite file of generations keyed by request content."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                rows = self._db.execute(
                    "SELECT key, text, prompt_tokens, completion_tokens, finish_reason FROM generations "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk,
                ).fetchall()
                for key, text, prompt_tokens, completion_tokens, finish in rows:
                    found[key] = Generation(text, prompt_tokens, completion_tokens, finish, cached=True)
        return found

    def put(self, key: str, model: str, generation: Generation) -> None:
        if generation.error is not None:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, generation.text, generation.prompt_tokens, generation.completion_tokens,
                 generation.finish_reason),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedGenerator(Generator):
    """A backend behind the cache: hits are answered locally, misses are saved as they finish."""

    def __init__(self, backend: Generator, cache: LLMCache) -> None:
        self.backend = backend
        self.cache = cache
        self.model_id = backend.model_id
        self.hits = 0
        self.misses = 0

    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        keys = [request.key(self.model_id) for request in requests]
        found = self.cache.get_many(keys)
        results: list[Generation | None] = [found.get(key) for key in keys]
        for index, result in enumerate(results):
            if result is not None and on_result is not None:
                on_result(index, result)
        missing = [i for i, result in enumerate(results) if result is None]
        self.hits += len(requests) - len(missing)
        self.misses += len(missing)

        def save(position: int, generation: Generation) -> None:
            index = missing[position]
            self.cache.put(keys[index], self.model_id, generation)
            results[index] = generation
            if on_result is not None:
                on_result(index, generation)

        if missing:
            fresh = self.backend.generate([requests[i] for i in missing], on_result=save)
            for position, generation in enumerate(fresh):  # backends that report only at the end
                if results[missing[position]] is None:
                    save(position, generation)
        return [result for result in results if result is not None]

    def close(self) -> None:
        self.backend.close()
        self.cache.close()
