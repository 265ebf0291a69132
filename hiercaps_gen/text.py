"""Caption text normalisation: one canonical form before anything is hashed or prompted."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFC, control and format characters removed, whitespace collapsed and trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co"}
    )
    return _WHITESPACE.sub(" ", text).strip()


def dedup_key(text: str) -> str:
    """Key under which two captions count as duplicates: case- and punctuation-insensitive."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def word_count(text: str) -> int:
    return len(text.split())
