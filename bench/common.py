"""What the bench scripts share: this checkout on sys.path, offline Hugging Face settings, a timer.

Imported first, as `from common import REPO, timed` (a script's own folder is on sys.path).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """fn() and the seconds it took (wall clock)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
