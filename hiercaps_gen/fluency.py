"""Fluency: mean per-token negative log-likelihood (nats) of a text under a small causal LM.

Word salad ("a man\\" vegetable 1 blankets in a ) bedsc [ s.") costs a language model far more
nats per token than a caption does, so the filter rejects negatives whose NLL is high in absolute
terms or well above the positive's at the same level, and `bench/quality.py` reports the same
number per side and level. The offline default is the shipped SmolLM2-135M (its GGUF exported once
to safetensors, `llm/hf_export.py`); any causal LM id or directory works the same way. Each text is scored on its own, after the
tokenizer's document-start token, so every token of it is predicted.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from hiercaps_gen.models import pick_device


class FluencyScorer:
    """`nll(texts)`: mean per-token NLL of each text (nats); higher reads worse."""

    def __init__(self, model: str = "embedded:smollm2", device: str = "auto", batch_size: int = 64) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hiercaps_gen.llm.hf_export import hf_model_dir

        path = hf_model_dir(model)  # an embedded GGUF loads from its cached safetensors export: seconds, not a minute
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.to(self.device).eval()
        vocab = self.tokenizer.get_vocab()
        # GPT-2-style document start where the vocabulary has one (SmolLM2), else BOS / EOS
        self.start = vocab.get("<|endoftext|>", self.tokenizer.bos_token_id or self.tokenizer.eos_token_id)
        self.batch_size = batch_size

    @torch.inference_mode()
    def nll(self, texts: list[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.float64)
        ids = [[self.start, *t] for t in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                batch[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch[:, 1:, None].to(self.device))[..., 0]
            scored = mask[:, 1:].to(self.device).float()
            per_text = (-(logp * scored).sum(1) / scored.sum(1).clamp(min=1)).cpu().numpy()
            out[chunk] = per_text
        return out


def reads_worse(negative_nll: float, positive_nll: float, max_nll: float, max_excess: float) -> bool:
    """The fluency rule the filter applies (and `negatives.fluent` before it): a negative is salad
    when its NLL/token is above `max_nll`, or more than `max_excess` nats above its positive's."""
    return negative_nll > max_nll or negative_nll - positive_nll > max_excess


@lru_cache(maxsize=2)
def get_fluency_scorer(model: str = "embedded:smollm2", device: str = "auto") -> FluencyScorer:
    """One loaded LM per process and model."""
    return FluencyScorer(model, device)
