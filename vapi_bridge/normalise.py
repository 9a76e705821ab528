"""Repair upstream chunks into what Vapi's parser accepts.

SambaNova's stream is OpenAI-shaped with quirks (protocol.md section 3): ``created`` may be a
float, tool-call deltas may lack ``index``, usage arrives in a chunk with ``choices: []``, and
an in-band ``{"error": ...}`` frame arrives as data. Vapi fails the turn on a missing
``choices`` list, so every chunk leaving the bridge goes through :class:`StreamNormaliser`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vapi_bridge.errors import InBandError, UpstreamStreamBroken


@dataclass
class StreamNormaliser:
    """Stateful per-stream repair: ids, ``created``, tool-call indexes, finish reasons.

    It also gathers what the request log and the transcript want (text, tool calls, usage),
    so nothing downstream has to parse the stream again.
    """

    model: str
    forward_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    chunks: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    text_parts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    _ids_to_index: dict[str, int] = field(default_factory=dict)
    _last_index: int = -1

    def feed(self, chunk: Any) -> dict[str, Any] | None:
        """The repaired chunk to send, or ``None`` when there is nothing for the client."""
        if not isinstance(chunk, dict):
            raise UpstreamStreamBroken("SambaNova sent a stream event that is not a JSON object.")
        if chunk.get("error") is not None:
            raise InBandError(f"SambaNova reported an error in its stream: {_error_text(chunk)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            choices = []
        if not choices and not (usage and self.forward_usage):
            return None
        out: dict[str, Any] = {
            "id": chunk.get("id") if isinstance(chunk.get("id"), str) else self.id,
            "object": "chat.completion.chunk",
            "created": _int_created(chunk.get("created"), self.created),
            "model": chunk.get("model") if isinstance(chunk.get("model"), str) else self.model,
            "choices": [self._choice(c) for c in choices if isinstance(c, dict)],
        }
        if usage and self.forward_usage:
            out["usage"] = usage
        if chunk.get("system_fingerprint"):
            out["system_fingerprint"] = chunk["system_fingerprint"]
        self.chunks += 1
        return out

    def final_chunk(self, reason: str = "stop") -> dict[str, Any] | None:
        """A closing chunk when upstream ended without a finish reason; else ``None``."""
        if self.finish_reason is not None:
            return None
        self.finish_reason = reason
        self.chunks += 1
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
        }

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        delta = choice.get("delta")
        delta = dict(delta) if isinstance(delta, dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.text_parts.append(content)
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [self._tool_call(c) for c in calls if isinstance(c, dict)]
        finish = choice.get("finish_reason")
        if finish == "stop" and self.tool_calls:
            finish = "tool_calls"
        if finish is not None:
            self.finish_reason = str(finish)
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
        record = self.tool_calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        if isinstance(call_id, str):
            record["id"] = call_id
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                record["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                record["arguments"] += function["arguments"]
        return call


def normalise_completion(body: Any, model: str) -> dict[str, Any]:
    """Repair a non-streaming ``chat.completion`` body (int ``created``, a ``choices`` list)."""
    if not isinstance(body, dict):
        raise UpstreamStreamBroken("SambaNova answered with a body that is not a JSON object.")
    if body.get("error") is not None:
        raise InBandError(f"SambaNova reported an error: {_error_text(body)}")
    out = dict(body)
    out["object"] = "chat.completion"
    out["created"] = _int_created(body.get("created"), int(time.time()))
    out.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
    out.setdefault("model", model)
    choices = body.get("choices")
    out["choices"] = choices if isinstance(choices, list) else []
    return out


def _int_created(value: Any, fallback: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return fallback
    return int(value)


def _error_text(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "unknown error")[:300]
    return str(error)[:300]
