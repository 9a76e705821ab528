"""A built-in offline model for ``serve --demo``: no key, no network, same interface.

It streams a short canned reply word by word and, when the request offers tools and the
caller names one ("check availability", "end call"), a tool call to it. That is enough to
wire up Vapi, try ``vapi-bridge test`` and see tool calls flow before having a SambaNova key.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vapi_bridge.ratelimit import RateLimit
from vapi_bridge.translate import message_text


class DemoStream:
    """A canned stream that stops as soon as it is closed."""

    rate: RateLimit | None = None

    def __init__(self, chunks: list[dict[str, Any]], gap: float) -> None:
        self._chunks = chunks
        self._gap = gap
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        for i, chunk in enumerate(self._chunks):
            if i and self._closed.wait(self._gap):
                return
            yield chunk

    def close(self) -> None:
        self._closed.set()

    def abort(self) -> None:
        self._closed.set()

    def without_waiting(self) -> bool:
        """Its waits are timed sleeps, not sockets: it stays on the request's thread."""
        return False


class DemoUpstream:
    """Answers like SambaNova would, from rules instead of a model."""

    def __init__(self, gap: float = 0.03) -> None:
        self.gap = gap

    def open_stream(self, params: dict[str, Any], *, timeout: float) -> DemoStream:
        return DemoStream(_chunks(params), self.gap)

    def complete(self, params: dict[str, Any], *, timeout: float) -> Any:
        text, call = _answer(params)
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [call]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": params["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if call else "stop",
                }
            ],
            "usage": _usage(params, text),
        }

    def close(self) -> None:
        """Nothing to release."""


def _chunks(params: dict[str, Any]) -> list[dict[str, Any]]:
    text, call = _answer(params)
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": params["model"],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    if call:
        arguments = call["function"]["arguments"]
        head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        out = [
            chunk({"role": "assistant", "tool_calls": [{"index": 0, **head}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
            chunk({}, "tool_calls"),
        ]
    else:
        words = re.findall(r"\S+\s*", text)
        out = [chunk({"role": "assistant", "content": word}) for word in words]
        out.append(chunk({"content": ""}, "stop"))
    out.append({**base, "choices": [], "usage": _usage(params, text)})
    return out


def _answer(params: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    messages = params["messages"]
    last = messages[-1]
    if last.get("role") == "tool":
        result = str(last.get("content") or "")[:120]
        return f"Thanks, the tool answered: {result}. Anything else?", None
    said = message_text(last.get("content"))
    for tool in params.get("tools") or []:
        function = tool["function"]
        if _mentions(said, function["name"]):
            arguments = {
                name: "demo"
                for name in (function.get("parameters") or {}).get("required", [])
                if isinstance(name, str)
            }
            call = {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": function["name"], "arguments": json.dumps(arguments)},
            }
            return "", call
    heard = said.strip()[:80] or "nothing yet"
    return (
        f'This is the vapi-bridge demo model. I heard: "{heard}". '
        "Store a SambaNova key with vapi-bridge configure-key to hear a real answer.",
        None,
    )


def _mentions(said: str, tool_name: str) -> bool:
    """True when every word of the tool's name (snake_case or camelCase) is in ``said``."""
    words = re.findall(r"[A-Z]?[a-z]+|[0-9]+", tool_name)
    heard = said.lower()
    return bool(words) and all(word.lower() in heard for word in words)


def _usage(params: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(message_text(m.get("content")).split()) for m in params["messages"])
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
