"""Versioned prompt templates: load, hash, render, and the answer format they teach.

A template is one YAML file in `prompts/`: a system text, few-shot examples and the line format
of an answer. Rendering puts everything shared first (system + examples, byte-identical for every
caption, so prefix caches hit) and the caption last, as a JSON string literal with `<` and `>`
escaped: a caption can then add no line, no chat turn and no special token to the prompt.
The file's sha256 goes into every row's lineage.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hiercaps_gen.config import REPO_ROOT
from hiercaps_gen.llm.base import Message

PROMPTS_DIR = REPO_ROOT / "prompts"
GENERATED_LEVELS = (1, 2, 3)


class PromptError(ValueError):
    """A template file that is missing or malformed."""


def quote_caption(caption: str) -> str:
    """The caption as one JSON string literal that no tokenizer reads as markup."""
    return json.dumps(caption, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded template; `hash` identifies its exact bytes."""

    name: str
    hash: str
    system: str
    user: str
    answer_order: tuple[int, ...]
    examples: tuple[tuple[str, tuple[str, str, str]], ...]

    def answer(self, levels: tuple[str, str, str] | list[str]) -> str:
        """The answer text for generated levels 1..3 (generic → specific), in the taught order."""
        return "\n".join(f"Level {k}: {levels[k - 1]}" for k in self.answer_order)

    def answer_regex(self) -> str:
        """Structured-output constraint for backends that enforce one (vLLM, `vllm serve`)."""
        return "\n".join(rf"Level {k}: [^\n]{{1,120}}" for k in self.answer_order)

    def shared_messages(self) -> tuple[Message, ...]:
        """Everything before the caption: identical for every request."""
        messages: list[Message] = [("system", self.system)]
        for caption, levels in self.examples:
            messages.append(("user", self.user.format(caption=quote_caption(caption))))
            messages.append(("assistant", self.answer(levels)))
        return tuple(messages)

    def messages(self, caption: str) -> tuple[Message, ...]:
        return self.shared_messages() + (("user", self.user.format(caption=quote_caption(caption))),)


_LINE = re.compile(r"^\s*Level\s*([0-9]+)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_answer(text: str, order: tuple[int, ...]) -> tuple[str, str, str]:
    """Levels 1..3 from an answer; PromptError unless it is exactly the taught lines, in order."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    found = [_LINE.match(line) for line in lines]
    if len(lines) != len(order) or not all(found):
        raise PromptError(f"expected {len(order)} 'Level k:' lines, got {len(lines)} lines")
    levels: dict[int, str] = {}
    for match, expected in zip(found, order, strict=True):
        assert match is not None
        if int(match.group(1)) != expected:
            raise PromptError(f"expected 'Level {expected}:', got 'Level {match.group(1)}:'")
        levels[expected] = match.group(2)
    return levels[1], levels[2], levels[3]


def prompt_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"}:
        return path
    return PROMPTS_DIR / f"{name}.yaml"


def load_prompt(name: str) -> PromptTemplate:
    """Load `prompts/<name>.yaml` (or a YAML path) and check its shape."""
    path = prompt_path(name)
    if not path.is_file():
        raise PromptError(f"prompt template {path} not found")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
        order = tuple(int(k) for k in data["answer_order"])
        examples = tuple((str(e["caption"]), tuple(str(x) for x in e["levels"])) for e in data["examples"])
        template = PromptTemplate(
            name=str(data["name"]), hash=hashlib.sha256(raw).hexdigest()[:16], system=str(data["system"]).strip(),
            user=str(data["user"]), answer_order=order, examples=examples,  # type: ignore[arg-type]
        )
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"prompt template {path} is malformed: {exc}") from None
    if sorted(order) != list(GENERATED_LEVELS) or any(len(levels) != 3 for _, levels in examples):
        raise PromptError(f"{path}: answer_order must be a permutation of 1,2,3 and examples need 3 levels")
    if "{caption}" not in template.user or not template.user.rstrip().endswith("{caption}"):
        raise PromptError(f"{path}: the user text must end with the {{caption}} placeholder")
    return template
