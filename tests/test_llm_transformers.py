"""The transformers backend on a tiny real model: batching, the shared-prefix cache and seeded
sampling must not change what a request generates; an over-long prompt fails alone."""

from __future__ import annotations

import pytest

from hiercaps_gen.llm.base import GenerationRequest, Sampling
from hiercaps_gen.llm.transformers_backend import RowSampler, TransformersGenerator, common_prefix
from hiercaps_gen.llm.prompts import load_prompt

from .test_llm_helpers import build_tiny_model, sample_captions


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    directory = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", max_positions=1024)
    return TransformersGenerator(str(directory), device="cpu", batch_size=4)


def requests(captions, **sampling):
    template = load_prompt("abstract_v1")
    return [GenerationRequest(template.messages(c), Sampling(max_new_tokens=10, **sampling)) for c in captions]


CAPTIONS = sample_captions(40)[::5] + ["Two dogs.", "A very long caption " + "with many words " * 12]


def test_outputs_depend_on_the_caption(generator):
    texts = {g.text for g in generator.generate(requests(CAPTIONS))}
    assert len(texts) > len(CAPTIONS) // 2  # the tiny model is not ignoring its input


def test_batching_and_prefix_cache_do_not_change_greedy_output(generator):
    reqs = requests(CAPTIONS)
    batched = generator.generate(reqs)
    generator.batch_size, generator.prefix_cache = 1, False
    try:
        alone = [generator.generate([r])[0] for r in reqs]
    finally:
        generator.batch_size, generator.prefix_cache = 4, True
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(g.completion_tokens == 10 or g.finish_reason == "stop" for g in batched)
    assert [g.prompt_tokens for g in batched] == [len(generator.encode(r)) for r in reqs]


def test_seeded_sampling_is_per_row(generator):
    sampled = requests(CAPTIONS[:1], temperature=1.0, seed=7)[0]
    others = requests(CAPTIONS[1:5])
    alone = generator.generate([sampled])[0].text
    in_batch = generator.generate(others[:2] + [sampled] + others[2:])[2].text
    assert alone == in_batch
    reseeded = {generator.generate(requests(CAPTIONS[:1], temperature=1.0, seed=s))[0].text for s in range(4)}
    assert len(reseeded) > 1


def test_prompt_beyond_context_fails_alone(generator):
    reqs = requests(["A cat.", "word " * 1500, "A dog."])
    out = generator.generate(reqs)
    assert out[1].error is not None and "context" in out[1].error
    assert out[0].error is None and out[2].error is None and out[0].text


def test_row_sampler_keeps_one_token_and_leaves_greedy_rows():
    import torch

    scores = torch.randn(3, 50)
    processor = RowSampler([Sampling(), Sampling(temperature=0.8, top_p=0.5, seed=1), Sampling()])
    out = processor(torch.zeros(3, 1, dtype=torch.long), scores)
    assert torch.equal(out[0], scores[0]) and torch.equal(out[2], scores[2])
    assert int(torch.isfinite(out[1]).sum()) == 1
    probs = torch.softmax(scores[1] / 0.8, -1)
    chosen = int(out[1].argmax())
    head = torch.sort(probs, descending=True)
    allowed = head.indices[: int(((head.values.cumsum(0) - head.values) < 0.5).sum())]
    assert chosen in allowed.tolist()


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[5], [6]]) == 0
