"""Run configuration: pure pydantic models, loaded from YAML, split from the engines.

A run's identity is the hash of its canonical JSON dump (`fingerprint`); each stage also has its
own fingerprint (its section plus the seed), so changing the negatives' threshold does not
invalidate the LLM's shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A run config that cannot be loaded: unknown keys, bad values, missing file."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(Strict):
    source: Literal["coco", "cc", "parquet"] = "coco"
    input: str = "data/coco_val2014_sample/captions.json"
    limit: int | None = Field(default=None, ge=1, description="sample this many captions (seeded)")
    num_shards: int = Field(default=4, ge=1, le=100_000)
    max_chars: int = Field(default=1000, ge=1, description="longer captions are rejected")
    min_words: int = Field(default=2, ge=1)


class LLMConfig(Strict):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = "embedded:smollm2"
    revision: str | None = None
    base_urls: list[str] = Field(default_factory=list, description="openai backend endpoints")
    api_key_env: str = "OPENAI_API_KEY"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    structured_output: bool = False
    concurrency: int = Field(default=16, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    prefix_cache: bool = Field(default=True, description="transformers: compute the shared prompt prefix once")
    threads: int | None = Field(default=None, ge=1, description="CPU threads: torch's (transformers), vLLM's OpenMP (None: all)")
    kv_cache_gib: int = Field(default=1, ge=1, description="vllm on CPU: KV-cache size (vLLM's own default is ~80 % of RAM)")
    compile: bool = Field(default=False, description="vllm: torch.compile + graphs instead of eager mode")
    max_model_len: int | None = Field(default=None, ge=16, description="vllm: context length (None: the model's)")
    reproducible: bool = Field(
        default=False, description="vllm: the same engine steps every run (engine core in-process, grammars "
        "compiled when a request is added); for an unshared machine, one engine per process (docs/vllm.md)"
    )


class AbstractConfig(Strict):
    llm: LLMConfig = LLMConfig()
    prompt: str = "abstract_v2"
    max_attempts: int = Field(default=3, ge=1)
    retry_temperature: float = Field(default=0.7, ge=0.0)
    candidates: int = Field(default=1, ge=1)
    embedding_check: bool = False
    max_level1_words: int = Field(default=3, ge=1)
    min_overlap: float = Field(default=0.5, ge=0.0, le=1.0, description="share of level k words in level k+1")
    level1_check: bool = Field(default=True, description="level 1 must be level 2's head or a known hypernym of it")
    repair_level1: bool = Field(default=True, description="replace a failing level 1 by the hypernym table's category")
    head_level1: bool = Field(
        default=False, description="level 1 becomes the head noun of a modified level 2 (\"bear\" for \"brown bear\")"
    )
    draw_level1: bool = Field(
        default=False, description="redraw a table-category level 1 (seeded) among all categories of level 2's head"
    )
    embedding_min_tau: float = Field(default=0.6, ge=-1.0, le=1.0, description="Kendall tau, root distance vs level")
    embedding_encoder: str = Field(default="embedded:minilm", description="sentence encoder of the embedding check")
    max_caption_chars: int = Field(default=2000, ge=1, description="longer captions are rejected, not prompted")
    llm_budget: int | None = Field(default=None, ge=0, description="captions sent to the LLM (seeded choice)")
    cache: bool = Field(default=True, description="content-addressed generation cache in RUN/abstract/")


class OrderingConfig(Strict):
    model: str = Field(default="embedded:t5-minilm-corpus-vocab", description="recipe, hub id or directory")
    revision: str | None = None
    d_model: int = Field(default=128, ge=8, description="size of recipe-built T5 models")
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    d_ff: int = Field(default=512, ge=8)
    epochs: int = Field(default=30, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    eval_every: int = Field(default=50, ge=1, description="steps between held-out evaluations")
    patience: int | None = Field(
        default=4, ge=1, description="stop after this many evaluations without a better held-out loss; the best is kept"
    )
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    max_source_len: int = Field(default=64, ge=8)
    max_target_len: int = Field(default=32, ge=4)
    train_layers: int | None = Field(
        default=None, ge=1, description="causal models: train only the top N blocks and the final norm (None: all)"
    )
    bf16: bool = Field(default=False, description="train under bfloat16 autocast (weights stay float32)")
    distill: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="CPU threads for ordering/negatives (None: torch's)")


class NegativesConfig(Strict):
    candidates: int = Field(default=6, ge=1, description="samples per level and round")
    rounds: int = Field(default=2, ge=1, description="sampling rounds for levels still without a negative")
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    encoder: str = Field(default="embedded:minilm", description="paraphrase scorer")
    paraphrase_threshold: float = Field(default=0.85, gt=0.0, le=1.0, description="MiniLM cosine to p_j")
    min_level4_words: int = Field(default=5, ge=1, description="level-4 negatives are caption-like sentences")
    max_words_ratio: float = Field(
        default=2.0, gt=0, description="n_k may have at most ratio × words(p_k) + 4 words (a sibling, not a run-on)"
    )
    level1_source: Literal["model", "categories"] = Field(
        default="model", description="n_1 sampled by the ordering model, or drawn among table categories no positive names"
    )
    level1_order: Literal["words", "breadth"] = Field(
        default="words",
        description="categories n_1: no wordier than p_1 first, or by breadth (table members under them): no "
        "narrower than p_1 first, nearest p_1's first, the nearest three in a seeded order",
    )
    level1_pair: Literal["drawn", "margin"] = Field(
        default="drawn",
        description="p_1 as the abstract stage drew it, or re-chosen beside a drawn n_1 among the table categories "
        "of p_2's head when its RE margin is not positive: the one the encoder best separates",
    )
    known_word_levels: int = Field(
        default=0, ge=0, le=4, description="levels 1..N: every word known to the scorer's vocabulary, the positives or the table"
    )
    repeat_ngram: int = Field(
        default=0, ge=0,
        description="levels 3-4: a candidate in which a run of N words occurs twice is refused (`repetitive`); 0: off",
    )
    fluent: bool = Field(
        default=False,
        description="levels from filter.fluency_from_level: a candidate the filter's fluency check would refuse "
        "(its model and thresholds) is refused here (`not_fluent`) and the next valid one tried",
    )
    rank_from_level: int = Field(
        default=3, ge=1, le=5,
        description="levels below it keep their first valid sample; from it on, the most likely valid sample",
    )
    min_words_share: float = Field(
        default=0.0, ge=0.0, le=2.0,
        description="from rank_from_level on, a valid sample with fewer words than this share of p_k's ranks after "
        "the longer ones (a sibling is about as specific as p_k); 0: most likely first",
    )
    batch_size: int = Field(default=64, ge=1, description="prompts per generate call")
    engine: Literal["transformers", "vllm"] = Field(
        default="transformers", description="what samples the ordering model: vllm serves decoder-only models only"
    )
    kv_cache_gib: int = Field(default=1, ge=1, description="vllm engine on CPU: KV-cache size")
    reproducible: bool = Field(default=False, description="vllm engine: as `llm.reproducible` (docs/vllm.md)")

    @model_validator(mode="after")
    def _pair_needs_drawn_n1(self) -> NegativesConfig:
        if self.level1_pair == "margin" and self.level1_source != "categories":
            raise ValueError("negatives.level1_pair re-chooses p_1 beside a drawn n_1: it needs level1_source: categories")
        return self


class FilterConfig(Strict):
    scorer: Literal["embedding", "nli"] = "embedding"
    encoder: str = Field(default="embedded:minilm", description="embedding scorer's encoder")
    nli_model: str = "cross-encoder/nli-deberta-v3-base"
    nli_revision: str | None = None
    min_positive_order: float = Field(
        default=0.3, ge=-1.0, le=1.0, description="embedding: min Kendall tau of root distance vs level"
    )
    max_negative_similarity: float = Field(default=0.95, gt=0.0, le=1.0, description="embedding: cosine(n_k, p_k)")
    nli_min_entailment: float = Field(default=0.5, ge=0.0, le=1.0, description="nli: P(p_k+1 entails p_k)")
    nli_max_negative_entailment: float = Field(default=0.5, ge=0.0, le=1.0, description="nli: P(caption entails n_k)")
    fluency_model: str | None = Field(default="embedded:smollm2", description="causal LM for NLL/token (None: off)")
    fluency_from_level: int = Field(default=4, ge=1, le=4, description="judge negatives from this level on (short texts: NLL is noise)")
    max_negative_nll: float = Field(default=7.5, gt=0, description="NLL/token (nats) above which a negative is salad")
    max_nll_excess: float = Field(default=3.0, gt=0, description="max NLL/token of n_k minus that of p_k")
    batch_size: int = Field(default=64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="CPU threads for scoring (None: torch's)")


class ReleaseConfig(Strict):
    name: str = "hierarcaps-gen-sample"
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    rows_per_shard: int = Field(default=50_000, ge=1)
    license: str = "CC BY 4.0 (source captions); generated text under the generator model's terms"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v) or v.startswith("."):
            raise ValueError("release name may hold letters, digits, '-', '_', '.' only")
        return v


class FinetuneConfig(Strict):
    encoder: str = "embedded:minilm"
    encoder_type: Literal["auto", "clip", "sentence"] = "auto"
    learning_rate: float | None = Field(
        default=None, gt=0, description="None: the encoder type's default (CLIP 1e-7, sentence 3e-5)"
    )
    batch_size: int = Field(default=8, ge=1, description="hierarchies per step")
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    lambda_pull: float = 10.0
    lambda_entail: float = 1.0
    lambda_margin: float = 1.0
    checkpoint_every: int = Field(default=1000, ge=1, description="steps between checkpoints")
    checkpoint_minutes: float = Field(default=10.0, gt=0, description="also checkpoint after this long")
    shuffle_buffer: int = Field(default=10_000, ge=1, description="hierarchies held for the seeded shuffle")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ExecutionConfig(Strict):
    task_runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    workers: int = Field(default=2, ge=1)


class RunConfig(Strict):
    name: str = "default"
    seed: int = 0
    ingest: IngestConfig = IngestConfig()
    abstract: AbstractConfig = AbstractConfig()
    ordering: OrderingConfig = OrderingConfig()
    negatives: NegativesConfig = NegativesConfig()
    filter: FilterConfig = FilterConfig()
    release: ReleaseConfig = ReleaseConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="after")
    def _fluent_needs_a_fluency_model(self) -> RunConfig:
        if self.negatives.fluent and self.filter.fluency_model is None:
            raise ValueError("negatives.fluent applies the filter's fluency check: it needs filter.fluency_model")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """Identity of the whole run: sha256 of the canonical dump, 16 hex digits."""
        return _digest(self.canonical_json())

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides applied (`{"abstract.llm.backend": "openai"}`); a None
        value sets the field to None (`{"filter.fluency_model": None}`: no fluency check)."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return _validate(data, source="overrides")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _validate(data: Any, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid run config ({source}): {problems}") from None


def load_config(name_or_path: str | Path = "cpu") -> RunConfig:
    """Load a shipped profile (`cpu`, `gpu`) or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and (PROFILES_DIR / f"{name_or_path}.yaml").exists():
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        profiles = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"config {name_or_path!s} not found (profiles: {profiles})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return _validate(data, source=str(path))
