"""Exponential backoff with jitter, for every retry loop of the backend.

``delay(attempt, base, cap)`` is ``min(cap, base * 2**attempt)`` with "equal jitter": between
half of it and all of it, so that 64 tasks that failed together do not retry in lockstep, and
no retry comes sooner than half the nominal wait.
"""

from __future__ import annotations

import random


def delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    if base <= 0:
        return 0.0
    nominal = min(cap, base * 2.0 ** max(0, attempt))
    return nominal / 2 + random.uniform(0, nominal / 2)
