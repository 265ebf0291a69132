"""The content-addressed generation cache: a repeated call costs nothing, any change of model,
prompt or sampling misses, and generations finished before an interruption are kept."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hiercaps_gen.llm.base import Generation, GenerationRequest, Sampling
from hiercaps_gen.llm.transformers_backend import TransformersGenerator
from hiercaps_gen.llm.cache import CachedGenerator, LLMCache
from hiercaps_gen.llm.prompts import load_prompt

from .test_llm_helpers import build_tiny_model, sample_captions


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return TransformersGenerator(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), device="cpu", batch_size=2)


def requests(n: int, **sampling) -> list[GenerationRequest]:
    template = load_prompt("abstract_v1")
    return [GenerationRequest(template.messages(c), Sampling(max_new_tokens=6, **sampling)) for c in sample_captions(n)]


def test_cache_round_trip_survives_reopen_and_skips_failures(tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite")
    cache.put("k1", "m", Generation("text", 10, 3, "stop"))
    cache.put("k2", "m", Generation.failed("bad request"))
    cache.close()
    again = LLMCache(tmp_path / "c.sqlite")
    found = again.get_many(["k1", "k2", "k3"])
    assert set(found) == {"k1"} and found["k1"].text == "text" and found["k1"].cached
    assert found["k1"].completion_tokens == 3 and len(again) == 1


def test_key_covers_model_prompt_and_sampling():
    base = requests(1)[0]
    keys = {
        base.key("m"), base.key("m2"),
        replace(base, sampling=replace(base.sampling, seed=1)).key("m"),
        replace(base, sampling=replace(base.sampling, temperature=0.7)).key("m"),
        replace(base, sampling=replace(base.sampling, max_new_tokens=7)).key("m"),
        replace(base, regex="x").key("m"),
        requests(2)[1].key("m"),
    }
    assert len(keys) == 7 and base.key("m") == requests(1)[0].key("m")


def test_second_call_is_served_from_the_cache(tmp_path, backend):
    cached = CachedGenerator(backend, LLMCache(tmp_path / "c.sqlite"))
    first = cached.generate(requests(4))
    assert cached.misses == 4 and cached.hits == 0 and not any(g.cached for g in first)
    second = cached.generate(requests(6))  # 4 seen + 2 new
    assert cached.hits == 4 and cached.misses == 6
    assert [g.text for g in second[:4]] == [g.text for g in first]
    assert [g.cached for g in second] == [True] * 4 + [False] * 2


def test_generations_finished_before_an_interruption_are_kept(tmp_path, backend):
    cache = LLMCache(tmp_path / "c.sqlite")
    seen = []

    def interrupt_after_first_batch(index: int, generation: Generation) -> None:
        seen.append(index)
        if len(seen) == 2:  # batch_size=2: the first batch is done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CachedGenerator(backend, cache).generate(requests(6), on_result=interrupt_after_first_batch)
    assert len(cache) == 2
    resumed = CachedGenerator(backend, cache)
    resumed.generate(requests(6))
    assert resumed.hits == 2 and resumed.misses == 4
