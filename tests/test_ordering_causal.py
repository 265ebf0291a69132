"""The causal (decoder-only) ordering path — what the CPU default's SmolLM2 recipe runs — on a
tiny randomly initialised Llama with SmolLM2's own tokenizer, saved as a directory like a hub model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiercaps_gen.config import OrderingConfig
from hiercaps_gen.models import resolve
from hiercaps_gen.ordering.generate import OrderingModel
from hiercaps_gen.ordering.model import PROMPT_END, freeze_below, load
from hiercaps_gen.ordering.tasks import down_source
from hiercaps_gen.stages.train_ordering import train_ordering

from .test_ordering_data import hierarchy_rows, tiny_config, write_abstract

POSITIVE = ["animal", "dog", "a dog on a couch", "A small dog asleep on a couch."]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = resolve("embedded:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_train_sample_and_reload_a_causal_ordering_model(tmp_path: Path, tiny_llama: Path) -> None:
    run_dir = tmp_path / "run"
    write_abstract(run_dir, hierarchy_rows(60))
    config = tiny_config(**{"ordering.model": str(tiny_llama), "ordering.max_steps": 40, "ordering.eval_every": 20,
                            "ordering.learning_rate": 5e-3, "ordering.bf16": True})
    manifest = train_ordering(config, run_dir)
    stats = manifest["stats"]
    assert stats["heldout_loss_best"] < 0.8 * stats["heldout_loss_start"], stats
    assert stats["trainable_parameters"] == stats["parameters"]
    model = OrderingModel.from_run(run_dir, "cpu")
    assert model.s2s.causal and model.s2s.tokenizer.padding_side == "left"
    sources = [down_source(POSITIVE[:k]) for k in range(4)]
    scored = model.scored(sources, n=3, sample=True, seed=5)
    assert [[t for t, _ in outs] for outs in scored] == model.generate(sources, n=3, sample=True, seed=5)
    assert all(PROMPT_END not in t and lp <= 0 for outs in scored for t, lp in outs)
    config_json = json.loads((run_dir / "train-ordering" / "model" / "config.json").read_text())
    assert not config_json.get("is_encoder_decoder", False)


def test_freeze_below_trains_only_the_top_blocks(tiny_llama: Path) -> None:
    s2s = load(str(tiny_llama))
    total = sum(p.numel() for p in s2s.model.parameters())
    top = sum(p.numel() for p in s2s.model.model.layers[-1].parameters()) + sum(
        p.numel() for p in s2s.model.model.norm.parameters())
    assert freeze_below(s2s, 1) == top < total
    assert not s2s.model.model.embed_tokens.weight.requires_grad
    assert OrderingConfig(train_layers=1).train_layers == 1
