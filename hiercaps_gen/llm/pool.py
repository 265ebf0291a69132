"""One loaded backend per worker process and LLM config, shared by every shard that runs there.

A Dask task gets its own unpickled copy of the stage, so a backend held by the stage object would
be loaded once per shard. Holding it here, per process, makes it once per worker; the stage (local
runner) or the flow (each Dask worker, through `close_all`) closes it when the stage ends.
"""

from __future__ import annotations

import threading

from hiercaps_gen.config import LLMConfig
from hiercaps_gen.llm.base import Generator

_lock = threading.Lock()
_generators: dict[str, Generator] = {}


def _key(llm: LLMConfig) -> str:
    return llm.model_dump_json()


def acquire(llm: LLMConfig) -> Generator:
    """This process's backend for `llm`, loaded on first use."""
    key = _key(llm)
    with _lock:
        if key not in _generators:
            from hiercaps_gen.llm.factory import create_generator

            _generators[key] = create_generator(llm)
        return _generators[key]


def loaded() -> int:
    """How many backends this process holds."""
    return len(_generators)


def close(llm: LLMConfig) -> None:
    """Close and forget this process's backend for `llm`, if any."""
    with _lock:
        generator = _generators.pop(_key(llm), None)
    if generator is not None:
        generator.close()


def close_all() -> int:
    """Close every backend of this process (run on each Dask worker when a stage ends); how many."""
    with _lock:
        generators = list(_generators.values())
        _generators.clear()
    for generator in generators:
        generator.close()
    return len(generators)
