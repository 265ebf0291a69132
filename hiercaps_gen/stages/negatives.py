"""negatives: for each positive level k, a sibling n_k sampled from the ordering model.

n_k is drawn from the generic→specific direction conditioned on p_1..p_{k-1} ("anything" for
k = 1), so it is a plausible child of p_{k-1}; a candidate is kept only if it is not p_k, not a
paraphrase of it (MiniLM cosine ≥ `paraphrase_threshold`), not an ancestor (p_j, j < k, or
"anything", or near one without extending it: a longer text near p_j with a content word p_j
lacks is a specialization of p_j, which is what a sibling of p_{j+1} is) and not a descendant
(p_j, j > k: those are true of the image). At levels 1..`rank_from_level`−1 (a word or two) the
first valid sample is kept, so n_k is a draw from the model's distribution restricted to valid
siblings, as in the paper; taking the most likely of a few samples there collapsed onto the mode
("person" as n_1 of half the rows). From `rank_from_level` on (phrases and sentences) the valid
sample the model finds most likely (mean token log-probability) is kept: fluent text wins over the
word salad a small model also samples; with `min_words_share` a sample shorter than that share of
p_k's words is kept only when no longer one is valid (a sibling is about as specific as p_k).
With `level1_source: categories` (the CPU default) n_1 is not sampled: it is drawn among the
hypernym table's categories that no positive level names, which a small model's n_1 ("person",
"roadassistant") often is not; measured in docs/decisions.md; with `level1_order: breadth` (the
CPU default) among those about as broad as p_1, no narrower, first. With `known_word_levels: 2` (the
CPU default) a level-1 or level-2 candidate with a word nobody knows is refused (`unknown_word`).
With `repeat_ngram: 3` (the CPU default) a level-3 or level-4 candidate that says a run of three
words twice is refused (`repetitive`): the fluency filter reads such a loop as likely text.
With `fluent: true` (the CPU default) a candidate at a level the filter judges for fluency (4) that
the filter's rule would refuse is refused here (`not_fluent`), and the next valid sample is tried.
At levels 1-2 a candidate whose head the hypernym table puts at, above or below p_k's head is no
sibling ("dogs" or "a large dog" for "dog", "person" for "man", "woman" for "people": true of the
image) and is refused as `same_head`, `ancestor` or `descendant`.
With `level1_pair: margin` (the CPU default) a drawn p_1 the encoder does not see as containing p_2
beside n_1 ("organism" over "man") is re-chosen among the table's options (`rechoose_level1`).
Sampling is seeded per (seed, shard, round, batch): same seed, same negatives. The sampler is the
trained model in transformers or, with `negatives.engine: vllm` (the CPU default), in a vLLM engine
held once per worker process (`ordering/vllm_sampler.py`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from functools import cached_property
from typing import Any

import numpy as np
import torch

from hiercaps_gen import hierarchy, hypernyms
from hiercaps_gen.encoders import get_embedder
from hiercaps_gen.fluency import get_fluency_scorer, reads_worse
from hiercaps_gen.geometry import exterior_angle
from hiercaps_gen.ordering.generate import OrderingModel, trained_model_hash
from hiercaps_gen.ordering.model import torch_threads
from hiercaps_gen.ordering.vllm_sampler import VLLMOrderingModel
from hiercaps_gen.hierarchy import content_words, dedup_key, is_hierarchy, word_count
from hiercaps_gen.ordering.tasks import ARROW, down_source
from hiercaps_gen.release.stats import level_profile
from hiercaps_gen.stages.base import Reject, Resources, ShardOutput, ShardStage, load_manifest, read_stage_rows

LEVELS = hierarchy.LEVELS
TABLE_LEVELS = 2  # levels 1-2: a word or two, whose head noun the hypernym table can place
RELATED = {"same": "same_head", "above": "ancestor", "below": "descendant"}
DISTILL_STAGE = "distill"


def nearest_breadth_first(options: list[str], breadth: int, rng: random.Random, nearest: int = 3) -> list[str]:
    """Table categories ordered as n_1 candidates beside a p_1 of `breadth` table members: those no
    narrower than p_1 before narrower ones, each by how far their breadth is from p_1's (log
    scale), the first `nearest` shuffled. A sibling as broad as p_1 ("food" beside "animal",
    "seat" beside "plumbing fixture") is what the RE loss should push out of p_1's cone: a
    narrower n_1 taught the level-1 order less, a concrete noun far less (docs/decisions.md, stop 29)."""
    sizes = hypernyms.category_sizes()
    ordered = sorted(options, key=lambda c: (sizes[c] < breadth, abs(math.log(sizes[c]) - math.log(breadth))))
    head = ordered[:nearest]
    rng.shuffle(head)
    return head + ordered[nearest:]


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class NegativesStage(ShardStage):
    name = "negatives"
    input_stage = "abstract"
    config_section = "negatives"
    output_schema = hierarchy.NEGATIVE

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        """A GPU when the model runs on `cuda`: on a mixed cluster such shards go to GPU workers only."""
        return Resources(cpus=1, memory_gb=3.0).on(self.config.ordering.device)

    def ordering_hash(self) -> str:
        return trained_model_hash(self.run_dir)

    def fingerprint_inputs(self) -> dict[str, Any]:
        """The ordering model's hash: a retrained model redoes every shard; with `fluent`, the
        filter's fluency rule too (another threshold, other negatives)."""
        inputs: dict[str, Any] = {"ordering_model": self.ordering_hash()}
        if self.config.negatives.fluent:
            f = self.config.filter
            inputs["fluency"] = [f.fluency_model, f.fluency_from_level, f.max_negative_nll, f.max_nll_excess]
        return inputs

    def shards(self) -> list[dict[str, Any]]:
        """The abstract shards, plus the distilled ones when `ordering.distill` is on."""
        entries = super().shards()
        if self.config.ordering.distill:
            entries += [{**e, "stage": DISTILL_STAGE} for e in load_manifest(self.run_dir, DISTILL_STAGE)["shards"]]
        return entries

    @cached_property
    def model(self) -> OrderingModel | VLLMOrderingModel:
        """The run's ordering model, sampled by transformers or by a vLLM engine (`negatives.engine`)."""
        cfg, ordering = self.config.negatives, self.config.ordering
        if cfg.engine == "vllm":
            return VLLMOrderingModel.from_run(self.run_dir, device=ordering.device, kv_cache_gib=cfg.kv_cache_gib,
                                              max_seqs=cfg.batch_size * cfg.candidates, threads=ordering.threads,
                                              reproducible=cfg.reproducible)
        return OrderingModel.from_run(self.run_dir, ordering.device)

    def close(self) -> None:
        """Stop this process's vLLM engine (if any) when the stage ends."""
        model = self.__dict__.pop("model", None)
        if isinstance(model, VLLMOrderingModel):
            model.close()

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to a worker (Dask) without the model: the worker loads (or pools) its own."""
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def lexical_problem(self, text: str, k: int, positive: list[str]) -> str | None:
        """Why candidate `text` cannot be n_k, judged on its words alone (None: no objection)."""
        key = dedup_key(text)
        if not key or ARROW.search(text) or "##" in text:  # "##": a stray word-piece continuation
            return "malformed"
        keys = [dedup_key(p) for p in positive]
        if key == keys[k]:
            return "same_as_positive"
        if key == dedup_key(hierarchy.ANYTHING) or key in keys[:k]:
            return "ancestor"
        if key in keys[k + 1 :]:
            return "descendant"
        if k == LEVELS - 1 and word_count(text) < self.config.negatives.min_level4_words:
            return "not_a_sentence"
        if word_count(text) > self.config.negatives.max_words_ratio * word_count(positive[k]) + 4:
            return "too_long"  # a sibling is about as specific as p_k; sampled run-ons repeat themselves
        if k >= TABLE_LEVELS and (n := self.config.negatives.repeat_ngram) and hierarchy.repeats_ngram(text, n):
            return "repetitive"  # a loop the fluency filter may pass: repeated text reads as likely
        if k < self.config.negatives.known_word_levels and not all(map(self.is_known, hierarchy.words(text))):
            return "unknown_word"  # "roadassistant": a one- or two-word text the fluency filter does not judge
        if k < TABLE_LEVELS and (related := hypernyms.relation(hierarchy.words(text), hierarchy.words(positive[k]))):
            return RELATED[related]
        return None

    def is_known(self, word: str) -> bool:
        return any(form in self.known_words for form in hypernyms.forms(word))

    @cached_property
    def known_words(self) -> frozenset[str]:
        """Words a short negative may use: the scorer's whole-word vocabulary (MiniLM's lacks
        "giraffe" and "skateboard"), every word of the run's positives, and the hypernym table."""
        vocabulary = get_embedder(self.config.negatives.encoder, self.config.ordering.device).tokenizer.get_vocab()
        positives = [w for row in read_stage_rows(self.run_dir, self.input_stage) for p in row["positive"]
                     for w in hierarchy.words(p)]
        table = [w for name in [*hypernyms.table(), *hypernyms.category_names()] for w in name.split()]
        return frozenset(w for w in vocabulary if w.isalpha()) | frozenset(positives) | frozenset(table)

    def similarity_problem(self, text: str, k: int, sims: np.ndarray, positive: list[str]) -> str | None:
        """Why candidate `text`, with cosines `sims` to p_1..p_4, cannot be n_k (None: no objection).
        Near an ancestor p_j is a problem unless the text extends p_j (longer, with a content word
        p_j lacks): "a cat watching a computer on a desk" near p_3 "a cat watching a computer" is
        one of p_3's children, as n_4 should be; "a cat is watching a computer" restates it."""
        near = sims >= self.config.negatives.paraphrase_threshold
        if near[k]:
            return "paraphrase"
        if any(near[j] and not self._extends(text, positive[j]) for j in range(k)):
            return "ancestor"
        if near[k + 1 :].any():
            return "descendant"
        return None

    @staticmethod
    def _extends(text: str, ancestor: str) -> bool:
        return word_count(text) > word_count(ancestor) and bool(content_words(text) - content_words(ancestor))

    def candidate_problem(self, text: str, k: int, sims: np.ndarray, positive: list[str]) -> str | None:
        return self.lexical_problem(text, k, positive) or self.similarity_problem(text, k, sims, positive)

    def level1_categories(self, row: dict[str, Any]) -> list[str]:
        """Candidates for n_1 when `level1_source: categories`: the hypernym table's categories that
        no word of p_1..p_4 names (siblings of p_1 not true of the image, as far as the table
        knows), lexically valid, in a seeded order: the first to pass the similarity checks is a
        uniform draw among valid siblings, as the model's first valid sample is at levels 2+ —
        among those no wordier than p_1 first: a sibling is about as specific as p_1, and drawn
        over all the table's categories and kinds ("sports equipment", "hoofed mammal") n_1 had
        ~20 % more words than the reference's (docs/decisions.md, stop 23). With `level1_order:
        breadth` and a table-category p_1, breadth orders them instead (`nearest_breadth_first`)."""
        positive = row["positive"]
        named = {p.lower() for p in positive}
        words = [w for p in positive for w in hierarchy.words(p)]
        options = [c for c in hypernyms.absent_categories(words, named) if self.lexical_problem(c, 0, positive) is None]
        rng = random.Random(_seed(self.config.seed, row["id"], "level1"))
        rng.shuffle(options)
        p1_breadth = hypernyms.category_sizes().get(positive[0].lower())
        if self.config.negatives.level1_order == "breadth" and p1_breadth is not None:
            return nearest_breadth_first(options, p1_breadth, rng)
        return sorted(options, key=lambda c: word_count(c) > word_count(positive[0]))

    def rechoose_level1(self, rows: list[dict[str, Any]], chosen: dict[tuple[int, int], str]) -> tuple[list[dict[str, Any]], int]:
        """Rows with p_1 re-chosen beside their drawn n_1 where the pair teaches the wrong order, and
        how many changed (`level1_pair: margin`).

        p_1 was drawn among the table categories of p_2's head, every one true; some ("organism",
        "adult" over "man") the encoder does not see as containing p_2, so the row's level-1 RE
        margin Ξ(p_1, n_1) − Ξ(p_1, p_2) is negative and the row pulls the fine-tune the wrong way
        (dropping the lowest-margin 10 % of rows lifted the RE proxy by 0.009: docs/decisions.md).
        Where the margin is not positive, p_1 becomes the option with the highest margin beside
        which n_1 still passes every candidate check; elsewhere the drawn p_1 stays.
        """
        options = {i: hierarchy.level1_options(*row["positive"][:2]) for i, row in enumerate(rows) if (i, 0) in chosen}
        options = {i: opts for i, opts in options.items() if len(opts) > 1}
        texts = sorted({t for i, opts in options.items() for t in [*opts, *rows[i]["positive"], chosen[(i, 0)]]})
        if not texts:
            return rows, 0
        embedder = get_embedder(self.config.negatives.encoder, self.config.ordering.device)
        vector = dict(zip(texts, torch.from_numpy(np.asarray(embedder.encode(texts)))))
        root = torch.from_numpy(np.asarray(embedder.root()))
        out, changed = list(rows), 0
        for i, opts in options.items():
            positive, negative = rows[i]["positive"], chosen[(i, 0)]
            candidates = torch.stack([vector[o] for o in opts])
            margins = (exterior_angle(candidates, vector[negative], root)
                       - exterior_angle(candidates, vector[positive[1]], root)).tolist()
            current = margins[opts.index(positive[0].lower())] if positive[0].lower() in opts else -np.inf
            if current > 0:
                continue
            to_options = (candidates @ vector[negative]).tolist()  # n_1's cosine to each option, then to p_2..p_4
            below = [float(vector[negative] @ vector[p]) for p in positive[1:]]
            fits = [(m, o) for m, o, cos in zip(margins, opts, to_options)
                    if m > current and self.candidate_problem(negative, 0, np.array([cos, *below]), [o, *positive[1:]]) is None]
            if fits:
                out[i] = {**rows[i], "positive": [max(fits)[1], *positive[1:]]}
                changed += 1
        return out, changed

    def ranked(self, samples: list[tuple[float, str]], positive: str) -> list[tuple[float, str]]:
        """(score, text) samples in the order a ranked level tries them: the most likely first, and
        with `min_words_share` those shorter than that share of p_k's words after the rest (the
        most likely sample is often a short one; at 1.0 the RE proxy fell 0.010, at 0.75 — the
        `cpu` profile — n_3 matched the reference's length and the proxy rose 0.006:
        docs/decisions.md, stops 23 and 26). Stable: ties keep sample order."""
        short = self.config.negatives.min_words_share * word_count(positive)
        return sorted(samples, key=lambda pair: (word_count(pair[1]) < short, -pair[0]))

    def process(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        with torch_threads(self.config.ordering.threads):
            return self._negatives(rows, shard)

    def _negatives(self, rows: list[dict[str, Any]], shard: str) -> ShardOutput:
        cfg = self.config.negatives
        rejects = [Reject(r, "malformed_positive", "positive is not 4 non-empty levels ending with the caption")
                   for r in rows if not (is_hierarchy(r["positive"]) and r["positive"][-1] == r["caption"])]
        valid = [r for r in rows if is_hierarchy(r["positive"]) and r["positive"][-1] == r["caption"]]
        chosen: dict[tuple[int, int], str] = {}
        problems: dict[tuple[int, int], Counter[str]] = {
            (i, k): Counter() for i in range(len(valid)) for k in range(LEVELS)
        }
        queues: dict[tuple[int, int], list[str]] = {}
        stats: dict[str, float] = {}
        sampled = range(LEVELS)
        if cfg.level1_source == "categories":
            firsts = [(i, 0) for i in range(len(valid))]
            for i, _ in firsts:
                queues[(i, 0)] = self.level1_categories(valid[i])
                if not queues[(i, 0)]:
                    problems[(i, 0)]["no_absent_category"] += 1
            self._pick_by_similarity(firsts, valid, queues, chosen, problems)
            sampled = range(1, LEVELS)
            if cfg.level1_pair == "margin":
                valid, rechosen = self.rechoose_level1(valid, chosen)
                stats["level1_rechosen"] = float(rechosen)
        for round_ in range(cfg.rounds):
            pending = [(i, k) for i in range(len(valid)) for k in sampled if (i, k) not in chosen]
            for start in range(0, len(pending), cfg.batch_size):
                batch = pending[start : start + cfg.batch_size]
                sources = [down_source(valid[i]["positive"][:k]) for i, k in batch]
                samples = self.model.scored(
                    sources, cfg.candidates, sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                    seed=_seed(self.config.seed, shard, round_, start),
                )
                for (i, k), outs in zip(batch, samples):
                    ok = []
                    for text, score in outs:
                        problem = self.lexical_problem(text, k, valid[i]["positive"])
                        if problem is None:
                            ok.append((score, text))
                        else:
                            problems[(i, k)][problem] += 1
                    if k + 1 >= cfg.rank_from_level:
                        ok = self.ranked(ok, valid[i]["positive"][k])
                    queues[(i, k)] = [text for _, text in ok]
                self._pick_by_similarity(batch, valid, queues, chosen, problems)
        accepted, model_hash = [], self.model.model_hash
        for i, row in enumerate(valid):
            missing = [k for k in range(LEVELS) if (i, k) not in chosen]
            if missing:
                detail = "; ".join(f"level {k + 1}: {dict(problems[(i, k)])}" for k in missing)
                rejects.append(Reject(row, "no_valid_negative", detail))
                continue
            out = {name: row[name] for name in hierarchy.POSITIVE.names}
            negative = [chosen[(i, k)] for k in range(LEVELS)]
            accepted.append({**out, "negative": negative, "ordering_model_hash": model_hash})
        rejected_candidates: Counter[str] = sum(problems.values(), Counter())
        stats["candidates_examined"] = float(sum(rejected_candidates.values()) + len(chosen))
        stats.update({f"candidates_{reason}": float(n) for reason, n in rejected_candidates.items()})
        return ShardOutput(accepted, rejects, stats)

    def _pick_by_similarity(
        self, batch: list[tuple[int, int]], valid: list[dict[str, Any]], queues: dict[tuple[int, int], list[str]],
        chosen: dict[tuple[int, int], str], problems: dict[tuple[int, int], Counter[str]],
    ) -> None:
        """Embed lexically valid candidates, most likely first, one per level at a time, until each
        level has one that is no paraphrase: the first usually passes, so this embeds ~1 text per
        level instead of all of them."""
        embedder = get_embedder(self.config.negatives.encoder, self.config.ordering.device)
        rows = sorted({i for i, _ in batch})
        positives = embedder.encode([p for i in rows for p in valid[i]["positive"]]).reshape(len(rows), LEVELS, -1)
        of_row = dict(zip(rows, positives))
        todo = [key for key in batch if queues[key]]
        while todo:
            texts = [queues[key].pop(0) for key in todo]
            vectors = embedder.encode(texts)
            passed = []
            for (i, k), text, vector in zip(todo, texts, vectors):
                problem = self.similarity_problem(text, k, of_row[i] @ vector, valid[i]["positive"])
                if problem is None:
                    passed.append(((i, k), text))
                else:
                    problems[(i, k)][problem] += 1
            for (key, text), fluent in zip(passed, self.fluent(passed, valid)):
                if fluent:
                    chosen[key] = text
                else:
                    problems[key]["not_fluent"] += 1
            todo = [key for key in todo if key not in chosen and queues[key]]

    def fluent(self, candidates: list[tuple[tuple[int, int], str]], valid: list[dict[str, Any]]) -> list[bool]:
        """Whether each ((row, level), text) candidate passes the filter's fluency rule (`fluent`):
        the filter would drop the whole row for a level-4 negative that reads worse than its
        positive, though another valid sample of that level often reads well (docs/decisions.md)."""
        f = self.config.filter
        judged = [(i, k, text) for (i, k), text in candidates if k >= f.fluency_from_level - 1]
        if not (self.config.negatives.fluent and judged):
            return [True] * len(candidates)
        scorer = get_fluency_scorer(f.fluency_model, f.device)  # type: ignore[arg-type]  # the config validates it
        texts = [t for i, k, text in judged for t in (text, valid[i]["positive"][k])]
        nll = dict(zip(texts, scorer.nll(texts)))
        verdict = {(i, k): not reads_worse(nll[text], nll[valid[i]["positive"][k]], f.max_negative_nll, f.max_nll_excess)
                   for i, k, text in judged}
        return [verdict.get(key, True) for key, _ in candidates]

    def summarize(self, rows: list[dict[str, Any]], stats: dict[str, float]) -> dict[str, Any]:
        return level_profile(rows)
