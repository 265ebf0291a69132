"""The two ordering tasks as text-to-text examples, one model for both (direction prefixes).

generic→specific: "generic to specific: anything => p1 => … => pk" → p(k+1), k = 0..3; the same
prompt with a positive prefix is what the negatives stage samples siblings from.
specific→generic: "specific to generic: <caption>" → "p3 => p2 => p1" (what distillation uses).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hiercaps_gen.hierarchy import ANYTHING, LEVELS, SEPARATOR

DOWN = "generic to specific:"
UP = "specific to generic:"
ARROW = re.compile(r"\s*=\s*>\s*")  # WordPiece decoding writes "=>" as "= >"


@dataclass(frozen=True)
class Example:
    row_id: str
    source: str
    target: str


def down_source(prefix: Sequence[str]) -> str:
    """Prompt for the level after `prefix` (levels 1..k, possibly empty: the child of "anything")."""
    return f"{DOWN} {SEPARATOR.join([ANYTHING, *prefix])}"


def up_source(caption: str) -> str:
    return f"{UP} {caption}"


def up_target(positive: Sequence[str]) -> str:
    return SEPARATOR.join(reversed(list(positive[: LEVELS - 1])))


def parse_up(text: str) -> list[str] | None:
    """Levels 1..3 (generic first) from a specific→generic output, or None when malformed."""
    parts = [p.strip() for p in ARROW.split(text)]
    if len(parts) != LEVELS - 1 or not all(parts):
        return None
    return parts[::-1]


def examples(row_id: str, positive: Sequence[str]) -> list[Example]:
    """All training examples of one hierarchy: LEVELS generic→specific steps and one upward."""
    down = [Example(row_id, down_source(positive[:k]), positive[k]) for k in range(LEVELS)]
    return down + [Example(row_id, up_source(positive[-1]), up_target(positive))]


def heldout_ids(ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded, order-independent held-out set of hierarchies (never split one across sets)."""
    unique = sorted(set(ids), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    count = min(len(unique) - 1, max(1, round(fraction * len(unique)))) if len(unique) > 1 else 0
    return set(unique[:count])
