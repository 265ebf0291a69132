"""One interface for every LLM backend: requests in, generations out, in the same order.

Stages speak chat messages and sampling settings only; how a backend batches, schedules or sends
them is its own business. A backend reports each finished generation through `on_result` as soon
as it has it, so a caller can save paid-for work before a later request fails.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Message = tuple[str, str]  # (role, content)
OnResult = Callable[[int, "Generation"], None]


class BackendUnavailable(RuntimeError):
    """The backend could not be reached after bounded retries; rerunning the stage resumes."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request; temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """A chat to complete. `regex` asks for structured output where the backend supports it."""

    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    regex: str | None = None

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def key(self, model_id: str) -> str:
        """Content address of this request for one model: what the cache is keyed by."""
        payload = {"model": model_id, "messages": self.messages, "sampling": asdict(self.sampling), "regex": self.regex}
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Generation:
    """A backend's answer. `error` is set for a request that can never succeed (bad request)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    error: str | None = None
    cached: bool = False
    prefix_cached_tokens: int = 0  # prompt tokens the backend's prefix cache served (vLLM)

    @classmethod
    def failed(cls, error: str) -> Generation:
        return cls(text="", finish_reason="error", error=error)


class Generator(ABC):
    """A loaded backend. `model_id` names the weights for lineage and cache keys."""

    model_id: str

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None) -> list[Generation]:
        """Complete every request; results are in request order. Raises BackendUnavailable."""

    def close(self) -> None:
        """Release the backend's memory and connections (GPU memory above all)."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_chat(tokenizer: Any, request: GenerationRequest) -> str:
    """The prompt text: the model's own chat template, or plain turns for a base model."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(request.chat(), add_generation_prompt=True, tokenize=False)
    turns = [f"{role.capitalize()}: {content}" for role, content in request.messages]
    return "\n\n".join(turns) + "\n\nAssistant:"
