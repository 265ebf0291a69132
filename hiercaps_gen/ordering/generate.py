"""Generation with a trained ordering model: sampled children (negatives), upward chains (distill)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hiercaps_gen.models import pick_device
from hiercaps_gen.ordering.model import PROMPT_END, Seq2Seq, load, prompt_ids
from hiercaps_gen.hierarchy import SEPARATOR
from hiercaps_gen.ordering.tasks import ARROW, up_source
from hiercaps_gen.stages.base import load_manifest, stage_dir

TRAIN_STAGE = "train-ordering"
MODEL_DIR = "model"


def model_dir(run_dir: Path) -> Path:
    """Where train-ordering keeps the run's model."""
    return stage_dir(run_dir, TRAIN_STAGE) / MODEL_DIR


def clean_output(text: str) -> str:
    """An ordering model's output as a level: up to its line end (a causal continuation ends there),
    with "=>" arrows normalised (WordPiece decodes them as "= >")."""
    return ARROW.sub(SEPARATOR, text.split(PROMPT_END)[0]).strip()


def trained_model_hash(run_dir: Path) -> str:
    """Hash of the run's trained ordering model: stages that use it put it in their fingerprints."""
    return load_manifest(run_dir, TRAIN_STAGE)["model_hash"]


@dataclass
class OrderingModel:
    """A run's trained ordering model plus the hash that goes into every row it helps write."""

    s2s: Seq2Seq
    model_hash: str
    device: str
    max_source_len: int
    max_target_len: int

    @classmethod
    def from_run(cls, run_dir: Path, device: str = "auto") -> OrderingModel:
        manifest = load_manifest(run_dir, TRAIN_STAGE)
        s2s = load(str(model_dir(run_dir)))
        where = pick_device(device)
        s2s.to(where).model.eval()
        cfg = manifest["config"]
        return cls(s2s, manifest["model_hash"], where, cfg["max_source_len"], cfg["max_target_len"])

    def generate(
        self, sources: list[str], n: int = 1, *, sample: bool = False, temperature: float = 1.0,
        top_p: float = 1.0, seed: int = 0,
    ) -> list[list[str]]:
        """`n` outputs per source (sampled under `seed`, or greedy when not sampling)."""
        scored = self.scored(sources, n, sample=sample, temperature=temperature, top_p=top_p, seed=seed)
        return [[text for text, _ in outs] for outs in scored]

    @torch.inference_mode()
    def scored(
        self, sources: list[str], n: int = 1, *, sample: bool = False, temperature: float = 1.0,
        top_p: float = 1.0, seed: int = 0,
    ) -> list[list[tuple[str, float]]]:
        """Like `generate`, each output with its mean token log-probability under the sampler."""
        if not sources:
            return []
        tok = self.s2s.tokenizer
        if self.s2s.causal:
            ids = prompt_ids(self.s2s.tokenizer, sources, self.max_source_len)
            enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")  # left padding
        else:
            enc = tok(sources, truncation=True, max_length=self.max_source_len, padding=True, return_tensors="pt")
        torch.manual_seed(seed)
        out = self.s2s.model.generate(
            input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
            do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
            top_k=0 if sample else None, num_return_sequences=n, max_new_tokens=self.max_target_len,
            output_scores=True, return_dict_in_generate=True,
        )
        steps = self.s2s.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, -steps.shape[1] :]
        mask = generated != self.s2s.pad_id
        means = (torch.where(mask, steps, 0.0).sum(1) / mask.sum(1).clamp(min=1)).tolist()
        decoded = tok.batch_decode(generated if self.s2s.causal else out.sequences, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=True)
        pairs = [(clean_output(t), m) for t, m in zip(decoded, means)]
        return [pairs[i * n : (i + 1) * n] for i in range(len(sources))]

    def ancestors(self, captions: list[str]) -> list[str]:
        """Greedy specific→generic outputs ("p3 => p2 => p1") for captions; parse with tasks.parse_up."""
        return [outs[0] for outs in self.generate([up_source(c) for c in captions])]
