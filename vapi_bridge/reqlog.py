"""One log line per request, on stderr: what an operator needs, and nothing private.

A record holds timings, counts and Vapi's call id; never a body, a header, a key or a phone
number. ``text`` is for people, ``json`` for log collectors. When the request is over, the
record's observer (the metrics) sees it once, whether or not it is logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

logger = logging.getLogger("vapi_bridge.requests")

_SAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


def safe_id(value: str | None) -> str | None:
    """Strip anything that could forge a log line out of a client-supplied id."""
    return _SAFE_ID.sub("", value)[:64] or None if value else None


def safe_path(path: str) -> str:
    """The request path with anything unprintable replaced: it is decoded client input."""
    return _UNPRINTABLE.sub("?", path)[:200]


_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
# Fields that are not figures about the request: never logged.
_INTERNAL = ("started", "observer")


@dataclass
class RequestRecord:
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    call_id: str | None = None
    profile: str | None = None
    model: str | None = None
    stream: bool = False
    ttft_ms: float | None = None
    ttfs_ms: float | None = None
    think_ms: float | None = None
    total_ms: float | None = None
    chunks: int = 0
    requested_model: str | None = None
    tried: list[str] = field(default_factory=list)
    hedged: bool = False
    rate_remaining: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    outcome: str = "ok"
    error: str | None = None
    # Each upstream failure met, by error code (a bounded set): the error the request ended
    # with, or the turn's failed attempts when it records them.
    upstream_failures: list[str] = field(default_factory=list)
    observer: Callable[[RequestRecord], None] | None = field(
        default=None, repr=False, compare=False
    )

    def first_token(self) -> None:
        """SambaNova's first token (chunk) arrived now."""
        self.ttft_ms = self._since_start(time.perf_counter())

    def first_speech(self) -> None:
        """The first character the caller will hear is going out now."""
        self.ttfs_ms = self._since_start(time.perf_counter())

    def first_speech_at(self, when: float | None) -> None:
        if when is not None:
            self.ttfs_ms = self._since_start(when)

    def attempts(self, story: list[str], *, hedged: bool) -> None:
        """What happened to each model asked, in order (``A(429)>B``)."""
        self.tried, self.hedged = story, hedged

    def fallbacks(self) -> int:
        """1 when another model than the one asked for answered (after a failure, a slow
        first token, a hedge, or straight away because the asked one was cooling down)."""
        answered = self.tried[-1] if self.tried and "(" not in self.tried[-1] else None
        return int(answered is not None and answered != self.requested_model)

    def _since_start(self, when: float) -> float:
        return round((when - self.started) * 1000, 1)

    def usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.prompt_tokens = prompt if isinstance(prompt, int) else None
            self.completion_tokens = completion if isinstance(completion, int) else None

    def emit(self, log_format: str) -> None:
        self.finish()
        level = logging.WARNING if self.status >= 500 or self.outcome != "ok" else logging.INFO
        logger.log(level, self.json() if log_format == "json" else self.text())

    def finish(self) -> None:
        """The request is over: fix its total time; the observer sees it once, and a failing
        observer never fails the request."""
        self.total_ms = round((time.perf_counter() - self.started) * 1000, 1)
        observer, self.observer = self.observer, None
        if observer is not None:
            try:
                observer(self)
            except Exception:
                logger.exception("the request record's observer failed")

    def json(self) -> str:
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in _INTERNAL and getattr(self, f.name) not in (None, [])
        }
        data["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return json.dumps(data, separators=(",", ":"))

    def text(self) -> str:
        parts = [time.strftime("%H:%M:%S"), self.method, self.path, str(self.status)]
        if self.call_id:
            parts.append(f"call={self.call_id}")
        if self.profile:
            parts.append(f"profile={self.profile}")
        if self.model:
            parts.append(f"model={self.model}")
        if self.stream:
            parts.append("stream")
        if self.ttft_ms is not None:
            parts.append(f"ttft={self.ttft_ms:.0f}ms")
        if self.ttfs_ms is not None:
            parts.append(f"ttfs={self.ttfs_ms:.0f}ms")
        if self.think_ms is not None:
            parts.append(f"think={self.think_ms:.0f}ms")
        parts.append(f"total={self.total_ms:.0f}ms")
        if self.stream:
            parts.append(f"chunks={self.chunks}")
        if self.tried and self.tried != [self.requested_model]:
            parts.append("attempts=" + ">".join(self.tried) + (" hedged" if self.hedged else ""))
        if self.rate_remaining is not None:
            parts.append(f"remaining={self.rate_remaining}")
        if self.prompt_tokens is not None or self.completion_tokens is not None:
            parts.append(f"tokens={self.prompt_tokens}/{self.completion_tokens}")
        if self.outcome != "ok":
            parts.append(f"outcome={self.outcome}")
        if self.error:
            parts.append(f'error="{self.error}"')
        return " ".join(parts)


def setup(log_format: str) -> None:
    """Request lines and warnings on stderr, unbuffered, plain (no colour codes in logs)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("vapi_bridge")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
