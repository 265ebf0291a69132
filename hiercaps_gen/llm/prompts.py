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
# Regex classes of the structured answer: every line break `str.splitlines` splits on, and those plus
# whitespace (a level must start with a visible character, so a blank level cannot pass).
_BREAKS = r"\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
NOT_BREAK = rf"[^{_BREAKS}]"
VISIBLE = rf"[^{_BREAKS} \t\xa0]"
GENERATED_LEVELS = (1, 2, 3)
# A caption word as a level may copy it: letters and digits, inner hyphens and apostrophes kept.
_CAPTION_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


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
    # Optional answer shape (templates from v2 on): word range per level, and the levels that may
    # only use the caption's own words. None / empty: any text of up to 120 characters (v1).
    level_words: dict[int, tuple[int, int]] | None = None
    from_caption: frozenset[int] = frozenset()
    not_last: frozenset[str] = frozenset()  # words a `from_caption` level may not end on ("a", "of")

    def answer(self, levels: tuple[str, str, str] | list[str]) -> str:
        """The answer text for generated levels 1..3 (generic → specific), in the taught order."""
        return "\n".join(f"Level {k}: {levels[k - 1]}" for k in self.answer_order)

    def answer_regex(self, caption: str | None = None) -> str:
        """Structured-output constraint for backends that enforce one (vLLM, `vllm serve`).

        What the few-shot turns teach, as `parse_answer` reads it: an optional leading space (chat
        templates such as Llama-2's put one before the assistant's text, so the model's first token
        carries it), then one line per level holding a visible character first and no line break
        of any kind `str.splitlines` knows (carriage returns too). A template with `level_words`
        also bounds each level's word count, and its `from_caption` levels may only use words of
        `caption` (as written or lower-cased), fewer than the caption has, and may not end on a
        `not_last` word: a level then cannot leave the caption's content, restate all of it, or
        stop mid-phrase ("a child squats in front of a") — the failures a small model makes most.
        Without a caption the bounds still apply, the vocabulary does not.
        """
        lines = (rf"Level {k}: {self._level_regex(k, caption)}" for k in self.answer_order)
        return " ?" + "\n".join(lines)

    def _level_regex(self, level: int, caption: str | None) -> str:
        if self.level_words is None:
            return rf"{VISIBLE}{NOT_BREAK}{{0,119}}"
        low, high = self.level_words[level]
        word = last = rf"{VISIBLE}+"
        if caption is not None and level in self.from_caption:
            tokens = _CAPTION_WORD.findall(caption)
            vocabulary = sorted({t for token in tokens for t in (token, token.lower())})
            if len(tokens) >= 2:  # a one-word caption leaves nothing shorter to copy: bounds only
                final = [t for t in vocabulary if t.lower() not in self.not_last] or vocabulary
                word, last = "(" + "|".join(vocabulary) + ")", "(" + "|".join(final) + ")"
                high = min(high, len(tokens) - 1)
                low = min(low, high)
        return rf"({word} ){{{low - 1},{high - 1}}}{last}"

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
        shape = data.get("answer") or {}
        level_words = {int(k): (int(v[0]), int(v[1])) for k, v in shape["words"].items()} if "words" in shape else None
        template = PromptTemplate(
            name=str(data["name"]), hash=hashlib.sha256(raw).hexdigest()[:16], system=str(data["system"]).strip(),
            user=str(data["user"]), answer_order=order, examples=examples,  # type: ignore[arg-type]
            level_words=level_words, from_caption=frozenset(int(k) for k in shape.get("from_caption", ())),
            not_last=frozenset(str(w).lower() for w in shape.get("not_last", ())),
        )
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"prompt template {path} is malformed: {exc}") from None
    if sorted(order) != list(GENERATED_LEVELS) or any(len(levels) != 3 for _, levels in examples):
        raise PromptError(f"{path}: answer_order must be a permutation of 1,2,3 and examples need 3 levels")
    words = template.level_words
    if words is not None and (sorted(words) != list(GENERATED_LEVELS) or any(not 1 <= lo <= hi for lo, hi in words.values())):
        raise PromptError(f"{path}: answer.words needs a range 1 <= low <= high for each of levels 1, 2, 3")
    if not template.from_caption <= set(GENERATED_LEVELS) or (template.from_caption and words is None):
        raise PromptError(f"{path}: answer.from_caption names generated levels and needs answer.words")
    if "{caption}" not in template.user or not template.user.rstrip().endswith("{caption}"):
        raise PromptError(f"{path}: the user text must end with the {{caption}} placeholder")
    return template
