"""One loaded engine per worker process and LLM config, shared by every shard that runs there.

A Dask task gets its own unpickled copy of the stage, so an engine held by the stage object would
be loaded once per shard. Holding it here, per process, makes it once per worker; the stage (local
runner) or the flow (each Dask worker, through `close_all`) closes it when the stage ends. An engine
is the abstract stage's `Generator` by default, or whatever `build` makes (the negatives stage's
vLLM ordering sampler); anything with a `close()` method.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from hiercaps_gen.config import LLMConfig


class Engine(Protocol):
    def close(self) -> None: ...


Build = Callable[[LLMConfig], Any]

_lock = threading.Lock()
_generators: dict[str, Engine] = {}


def _default_build(llm: LLMConfig) -> Any:
    from hiercaps_gen.llm.factory import create_generator

    return create_generator(llm)


def _key(llm: LLMConfig, build: Build | None) -> str:
    kind = "generator" if build is None else f"{build.__module__}.{build.__qualname__}"
    return f"{kind}:{llm.model_dump_json()}"


def acquire(llm: LLMConfig, build: Build | None = None) -> Any:
    """This process's engine for `llm` (the configured `Generator`, or `build(llm)`), loaded on first use."""
    key = _key(llm, build)
    with _lock:
        if key not in _generators:
            _generators[key] = (build or _default_build)(llm)
        return _generators[key]


def loaded() -> int:
    """How many engines this process holds."""
    return len(_generators)


def close(llm: LLMConfig, build: Build | None = None) -> None:
    """Close and forget this process's engine for `llm` (made by `build`), if any."""
    with _lock:
        generator = _generators.pop(_key(llm, build), None)
    if generator is not None:
        generator.close()


def close_all() -> int:
    """Close every engine of this process (run on each Dask worker when a stage ends); how many."""
    with _lock:
        generators = list(_generators.values())
        _generators.clear()
    for generator in generators:
        generator.close()
    return len(generators)
