"""The stream's stages: each takes a chunk and gives a chunk, in order, between upstream and Vapi.

A stage owns the chunk it is given (it may change it in place) and returns the chunk to pass
on, or ``None`` to pass nothing on for now. It may hold a little back (a tag split across
chunks, a markdown marker) and gives it out from :meth:`Stage.flush` when the stream ends, or
folds it into the chunk that carries the finish reason. What a stage learns that is not for
the caller (reasoning text, what it removed, usage) goes into the turn's :class:`Trace`.

The first stage is always :class:`Normalise` (repair into what Vapi's parser accepts); the
last is :class:`Collect` (gather the reply as the caller got it). Stages in between are added
only when configured, so a stage that is off costs nothing.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vapi_bridge.errors import InBandError, UpstreamStreamBroken
from vapi_bridge.reply import ToolCalls

Chunk = dict[str, Any]


@dataclass
class Trace:
    """What the stages noticed in one turn, for the request record, hooks and transcripts."""

    started: float = field(default_factory=time.perf_counter)
    usage: dict[str, Any] | None = None
    reasoning: list[str] = field(default_factory=list)
    think_ms: float | None = None
    removed: Counter[str] = field(default_factory=Counter)


class Stage(Protocol):
    def feed(self, chunk: Chunk) -> Chunk | None: ...

    def flush(self) -> Chunk | None: ...


StageFactory = Callable[[Trace], Stage]


class Pipeline:
    """Stages run in order; a chunk a stage drops goes no further."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        self._feeds = tuple(stage.feed for stage in self.stages)

    def feed(self, chunk: Any) -> Chunk | None:
        for feed in self._feeds:
            chunk = feed(chunk)
            if chunk is None:
                return None
        return chunk  # type: ignore[no-any-return]

    def flush(self) -> list[Chunk]:
        """What each stage still held, passed through the stages after it."""
        out: list[Chunk] = []
        for i, stage in enumerate(self.stages):
            held = stage.flush()
            for later in self.stages[i + 1 :]:
                if held is None:
                    break
                held = later.feed(held)
            if held is not None:
                out.append(held)
        return out


class Normalise:
    """Repair upstream chunks: ids, an integer ``created``, a ``choices`` list, tool-call indexes.

    SambaNova's stream is OpenAI-shaped with quirks: ``created`` may be a float, tool-call
    deltas may lack ``index``, usage arrives in a chunk with ``choices: []``, and an in-band
    ``{"error": ...}`` frame arrives as data. Vapi fails the turn on a missing ``choices`` list.
    """

    def __init__(self, trace: Trace, *, model: str, forward_usage: bool = False) -> None:
        self.trace = trace
        self.model = model
        self.forward_usage = forward_usage
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._ids_to_index: dict[str, int] = {}
        self._last_index = -1
        self._has_tool_calls = False

    def feed(self, chunk: Any) -> Chunk | None:
        if not isinstance(chunk, dict):
            raise UpstreamStreamBroken("SambaNova sent a stream event that is not a JSON object.")
        get = chunk.get
        if get("error") is not None:
            raise InBandError(f"SambaNova reported an error in its stream: {error_text(chunk)}")
        usage = get("usage")
        if isinstance(usage, dict):
            self.trace.usage = usage
        choices = get("choices")
        if not isinstance(choices, list):
            choices = []
        if not choices and not (usage and self.forward_usage):
            return None
        chunk_id, model, created = get("id"), get("model"), get("created")
        out: Chunk = {
            "id": chunk_id if isinstance(chunk_id, str) else self.id,
            "object": "chat.completion.chunk",
            "created": created if type(created) is int else int_created(created, self.created),
            "model": model if isinstance(model, str) else self.model,
            "choices": [self._choice(c) for c in choices if isinstance(c, dict)],
        }
        if usage and self.forward_usage:
            out["usage"] = usage
        fingerprint = get("system_fingerprint")
        if fingerprint:
            out["system_fingerprint"] = fingerprint
        return out

    def flush(self) -> Chunk | None:
        return None

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        # The chunk is this stage's (it came from json.loads): its delta is reused, not copied.
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        calls = delta.get("tool_calls")
        if calls:
            if isinstance(calls, list):
                delta["tool_calls"] = [self._tool_call(c) for c in calls if isinstance(c, dict)]
                self._has_tool_calls = True
            else:  # not a list of calls: nothing a client could read (and Collect would fail)
                del delta["tool_calls"]
        finish = choice.get("finish_reason")
        if finish == "stop" and self._has_tool_calls:
            finish = "tool_calls"
        out = {"index": choice.get("index", 0), "delta": delta, "finish_reason": finish}
        if choice.get("logprobs") is not None:
            out["logprobs"] = choice["logprobs"]
        return out

    def _tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        call = dict(call)
        call_id = call.get("id")
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            if isinstance(call_id, str) and call_id in self._ids_to_index:
                index = self._ids_to_index[call_id]
            elif isinstance(call_id, str) or self._last_index < 0:
                index = self._last_index + 1
            else:
                index = self._last_index
            call["index"] = index
        self._last_index = max(self._last_index, index)
        if isinstance(call_id, str):
            self._ids_to_index[call_id] = index
            call.setdefault("type", "function")
        return call


class Collect:
    """The last stage: counts what goes out and gathers the reply as the caller got it."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.chunks = 0
        self.text_parts: list[str] = []
        self.tool_calls = ToolCalls()
        self.finish_reason: str | None = None
        self.first_speech: float | None = None

    def feed(self, chunk: Chunk) -> Chunk:
        self.chunks += 1
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text_parts.append(content)
                if self.first_speech is None and not content.isspace():
                    self.first_speech = time.perf_counter()
            calls = delta.get("tool_calls")
            if calls:
                if self.first_speech is None:
                    self.first_speech = time.perf_counter()
                for call in calls:
                    self.tool_calls.add(call["index"], call)
            if choice["finish_reason"] is not None:
                self.finish_reason = str(choice["finish_reason"])
        return chunk

    def flush(self) -> Chunk | None:
        return None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "unknown error")[:300]
    return str(error)[:300]


def int_created(value: Any, fallback: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return fallback
    return int(value)


def like(template: Chunk, choices: list[dict[str, Any]]) -> Chunk:
    """A chunk with ``template``'s id, created and model, for text a stage gives out late."""
    return {
        "id": template["id"],
        "object": template["object"],
        "created": template["created"],
        "model": template["model"],
        "choices": choices,
    }
