"""What a finished reply is, and the one way streamed tool-call deltas are put together.

These types sit at the bottom of the import graph: the stream stages build them, the app hands
them to middleware, ``test`` judges them, and hooks and transcripts read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call."""

    id: str | None
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class ToolCalls:
    """Accumulates streamed tool-call deltas by their ``index``, as OpenAI clients do.

    :meth:`add` reports what is malformed in a delta instead of raising, so a strict reader
    (``test``) can name each problem while a lenient one (the relay) just carries on.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, index: int, delta: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        record = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        call_id = delta.get("id")
        if isinstance(call_id, str):
            record["id"] = call_id
        elif call_id is not None:
            problems.append("a tool-call `id` that is not a string")
        function = delta.get("function")
        if function is None:
            return problems
        if not isinstance(function, Mapping):
            return [*problems, "a tool-call `function` that is not an object"]
        for key in ("name", "arguments"):
            value = function.get(key)
            if isinstance(value, str):
                record[key] += value
            elif value is not None:
                problems.append(f"a tool-call `function.{key}` that is not a string")
        return problems

    def complete(self) -> list[ToolCall]:
        return [ToolCall(**self._calls[i]) for i in sorted(self._calls)]


@dataclass(frozen=True)
class Reply:
    """One finished reply: what the caller heard, what was held back, and how long it took.

    ``reasoning`` is the model's thinking, never spoken but kept for transcripts and hooks.
    ``ttft_ms`` is the time to SambaNova's first token, ``ttfs_ms`` the time to the first
    character the caller hears. ``outcome`` is ``ok`` for a whole reply, otherwise why it
    ended early.
    """

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    ttft_ms: float | None = None
    ttfs_ms: float | None = None
    total_ms: float | None = None
    usage: dict[str, Any] | None = None
    outcome: str = "ok"
    reasoning: str = ""
    call_id: str | None = None
    model: str = ""
