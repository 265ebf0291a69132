"""filter: keep rows whose positives entail upward and whose negatives really differ.

Lexical checks run first for every scorer (complete rows, level 4 == caption, each level adds
something, no negative repeating a positive). Then a pluggable scorer judges meaning:
- "embedding" (offline): the MiniLM Radial-Embedding geometry. Positives must move away from the
  root (embedding of "") as they get more specific — Kendall τ between level and root distance
  ≥ `min_positive_order`, from level 2 on when the hypernym table vouches for level 1
  (`hierarchy.level1_problem`): zero-shot MiniLM puts a two-word category ("physical object")
  farther from the root than its member ("sign"), the very order RE fine-tuning has to teach — and
  n_k must not be a near-copy of p_k (cosine < `max_negative_similarity`).
  filter_score is the RE entailment margin: mean_k Ξ(p_k, n_k) − Ξ(p_k, p_{k+1}) (radians).
- "nli" (hub cross-encoder, GPU node): P(p_{k+1} entails p_k) ≥ `nli_min_entailment` for
  k = 1..3, and P(caption entails n_k) < `nli_max_negative_entailment` (a negative true of the
  image is not a negative). filter_score = min positive entailment − max negative entailment.
Before the scorer, for either: fluency (`fluency.py`) — a negative at level ≥ `fluency_from_level` (4)
whose per-token NLL under a small causal LM (SmolLM2 offline) is above `max_negative_nll`, or more
than `max_nll_excess` nats above its positive's at the same level, is word salad (`not_fluent`;
with `negatives.fluent` the negatives stage applies the same rule to its candidates first).
Every drop is a reject with its reason and the numbers behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from hiercaps_gen import hierarchy
from hiercaps_gen.config import FilterConfig
from hiercaps_gen.encoders import get_embedder
from hiercaps_gen.fluency import FluencyScorer, get_fluency_scorer, reads_worse
from hiercaps_gen.geometry import hierarchy_angles, kendall_tau, root_distance, shows_order
from hiercaps_gen.hierarchy import dedup_key, is_hierarchy
from hiercaps_gen.models import pick_device, resolve
from hiercaps_gen.ordering.model import torch_threads
from hiercaps_gen.release.stats import level_profile
from hiercaps_gen.stages.base import Reject, Resources, ShardOutput, ShardStage

LEVELS = hierarchy.LEVELS


@dataclass(frozen=True)
class Verdict:
    score: float
    reason: str | None = None  # None: keep
    detail: str = ""


class Scorer(Protocol):
    def judge(self, positives: list[list[str]], negatives: list[list[str]]) -> list[Verdict]: ...


class EmbeddingJudge:
    """Offline scorer on the Radial-Embedding geometry of `filter.encoder` (no NLI model needed)."""

    def __init__(self, cfg: FilterConfig, device: str = "auto") -> None:
        self.cfg = cfg
        self.embedder = get_embedder(cfg.encoder, device)

    def judge(self, positives: list[list[str]], negatives: list[list[str]]) -> list[Verdict]:
        n = len(positives)
        vecs = self.embedder.encode([t for h in positives + negatives for t in h]).reshape(2 * n, LEVELS, -1)
        pos, neg, root = vecs[:n], vecs[n:], self.embedder.root()
        dist = root_distance(pos, root)
        taus, below_level1 = kendall_tau(dist), kendall_tau(dist[:, 1:])
        sim = (pos * neg).sum(-1)
        positive_angle, negative_angle = hierarchy_angles(*(torch.from_numpy(a) for a in (pos, neg, root)))
        margin = (negative_angle - positive_angle).mean(-1).numpy()
        out = []
        for i in range(n):
            vouched = hierarchy.level1_problem(positives[i][0], positives[i][1]) is None
            tau = float(below_level1[i] if vouched else taus[i])
            if not shows_order(tau, self.cfg.min_positive_order):
                levels = "2-4" if vouched else "1-4"
                reason, detail = "positive_order", f"tau={tau:.2f} (levels {levels}) root distances={np.round(dist[i], 3).tolist()}"
            elif sim[i].max() >= self.cfg.max_negative_similarity:
                k = int(sim[i].argmax())
                reason, detail = "negative_too_similar", f"level {k + 1}: cosine(n, p)={sim[i, k]:.3f}"
            else:
                reason, detail = None, ""
            out.append(Verdict(float(margin[i]), reason, detail))
        return out


class NLIScorer:
    """Cross-encoder entailment (e.g. cross-encoder/nli-deberta-v3-base): hub id or directory."""

    def __init__(self, cfg: FilterConfig, device: str = "auto") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve(cfg.nli_model).path
        self.cfg = cfg
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.nli_revision)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, revision=cfg.nli_revision)
        self.model.to(self.device).eval()
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        entail = [i for name, i in labels.items() if name.startswith("entail")]
        if len(entail) != 1:
            raise ValueError(f"{cfg.nli_model}: no single 'entailment' label in {self.model.config.id2label}")
        self.entail = entail[0]

    @torch.inference_mode()
    def entailment(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(premises), self.cfg.batch_size):
            enc = self.tokenizer(premises[s : s + self.cfg.batch_size], hypotheses[s : s + self.cfg.batch_size],
                                 padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            out.append(self.model(**enc).logits.float().softmax(-1)[:, self.entail].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def judge(self, positives: list[list[str]], negatives: list[list[str]]) -> list[Verdict]:
        n = len(positives)
        up = self.entailment([h[k + 1] for h in positives for k in range(LEVELS - 1)],
                             [h[k] for h in positives for k in range(LEVELS - 1)]).reshape(n, LEVELS - 1)
        true_neg = self.entailment([p[-1] for p in positives for _ in range(LEVELS)],
                                   [t for h in negatives for t in h]).reshape(n, LEVELS)
        out = []
        for i in range(n):
            if up[i].min() < self.cfg.nli_min_entailment:
                k = int(up[i].argmin())
                reason, detail = "positive_not_entailed", f"P(level {k + 2} entails level {k + 1})={up[i, k]:.3f}"
            elif true_neg[i].max() >= self.cfg.nli_max_negative_entailment:
                k = int(true_neg[i].argmax())
                reason, detail = "negative_entailed", f"P(caption entails negative level {k + 1})={true_neg[i, k]:.3f}"
            else:
                reason, detail = None, ""
            out.append(Verdict(float(up[i].min() - true_neg[i].max()), reason, detail))
        return out


SCORERS: dict[str, type] = {"embedding": EmbeddingJudge, "nli": NLIScorer}


def lexical_problem(row: dict[str, Any]) -> tuple[str, str] | None:
    """Scorer-independent checks; (reason, detail) or None."""
    pos, neg = row.get("positive"), row.get("negative")
    if not (is_hierarchy(pos) and is_hierarchy(neg)) or pos[-1] != row["caption"]:
        return "malformed", "positive and negative need 4 non-empty levels; positive level 4 must be the caption"
    keys = [dedup_key(p) for p in pos]
    for k in range(LEVELS - 1):
        if keys[k] == keys[k + 1]:
            return "positive_not_refined", f"levels {k + 1} and {k + 2} are the same text: {pos[k]!r}"
    for k, text in enumerate(neg):
        if dedup_key(text) in keys:
            return "negative_equals_positive", f"negative level {k + 1} {text!r} is a positive level"
    return None


def fluency_problems(cfg: FilterConfig, positives: list[list[str]], negatives: list[list[str]],
                     nll: Callable[[list[str]], np.ndarray]) -> list[tuple[str, str] | None]:
    """("not_fluent", detail) per row whose negatives read worse than its positives, else None."""
    levels = list(range(cfg.fluency_from_level - 1, LEVELS))
    texts = [h[k] for pair in zip(positives, negatives) for h in pair for k in levels]
    scores = nll(texts).reshape(len(positives), 2, len(levels)) if texts else np.zeros((0, 2, len(levels)))
    out: list[tuple[str, str] | None] = []
    for pos, neg in scores:
        bad = [(k, p, n) for k, p, n in zip(levels, pos, neg)
               if reads_worse(n, p, cfg.max_negative_nll, cfg.max_nll_excess)]
        out.append(None if not bad else ("not_fluent", "; ".join(
            f"level {k + 1}: NLL/token negative {n:.2f} vs positive {p:.2f}" for k, p, n in bad)))
    return out


class FilterStage(ShardStage):
    name = "filter"
    input_stage = "negatives"
    config_section = "filter"
    output_schema = hierarchy.FILTERED

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        """A GPU when the model runs on `cuda`: on a mixed cluster such shards go to GPU workers only."""
        return Resources(cpus=1, memory_gb=2.0).on(self.config.filter.device)

    @cached_property
    def scorer(self) -> Scorer:
        return SCORERS[self.config.filter.scorer](self.config.filter, self.config.filter.device)

    @cached_property
    def fluency(self) -> FluencyScorer | None:
        model = self.config.filter.fluency_model
        return None if model is None else get_fluency_scorer(model, self.config.filter.device)

    def process(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        with torch_threads(self.config.filter.threads):
            return self._filter(rows)

    def _filter(self, rows: list[dict[str, Any]]) -> ShardOutput:
        rejects, candidates = [], []
        for row in rows:
            problem = lexical_problem(row)
            if problem is None:
                candidates.append(row)
            else:
                rejects.append(Reject(row, *problem))
        if self.fluency is not None and candidates:
            problems = fluency_problems(self.config.filter, [r["positive"] for r in candidates],
                                        [r["negative"] for r in candidates], self.fluency.nll)
            rejects += [Reject(row, *problem) for row, problem in zip(candidates, problems) if problem]
            candidates = [row for row, problem in zip(candidates, problems) if not problem]
        positives, negatives = [r["positive"] for r in candidates], [r["negative"] for r in candidates]
        verdicts = self.scorer.judge(positives, negatives) if candidates else []
        accepted = []
        for row, verdict in zip(candidates, verdicts):
            if verdict.reason is None:
                accepted.append({**{k: row[k] for k in hierarchy.NEGATIVE.names}, "filter_score": verdict.score})
            else:
                rejects.append(Reject(row, verdict.reason, verdict.detail))
        return ShardOutput(accepted, rejects, {"scored": float(len(candidates))})

    def summarize(self, rows: list[dict[str, Any]], stats: dict[str, float]) -> dict[str, Any]:
        scores = [r["filter_score"] for r in rows]
        return {**level_profile(rows), "scorer": self.config.filter.scorer,
                "mean_filter_score": float(np.mean(scores)) if scores else None}
