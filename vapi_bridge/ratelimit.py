"""SambaNova's rate-limit headers, read when present and never depended on.

``x-ratelimit-*`` headers are reported by third parties only; ``Retry-After`` on a 429 is the
documented signal. Both are parsed leniently: seconds (``12``, ``0.5``), durations as OpenAI
writes them (``1m30s``, ``250ms``), or a Unix time for the reset.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True)
class RateLimit:
    """What one answer said about the model's request budget."""

    remaining: int | None = None
    limit: int | None = None
    reset_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        remaining = _integer(headers.get("x-ratelimit-remaining-requests"))
        limit = _integer(headers.get("x-ratelimit-limit-requests"))
        reset = seconds(headers.get("x-ratelimit-reset-requests"))
        if remaining is None and limit is None and reset is None:
            return None
        return cls(remaining=remaining, limit=limit, reset_s=reset)


def seconds(value: str | None) -> float | None:
    """A header's wait in seconds from now, or ``None`` when it cannot be read."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            return None
        return sum(float(n) * _UNIT[u] for n, u in parts)
    if number > 1e9:  # a Unix time, not a wait
        return max(0.0, number - time.time())
    return max(0.0, number)


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
