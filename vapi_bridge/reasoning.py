"""Keep the model's reasoning out of what the caller hears.

Vapi speaks ``delta.content`` and its voice formatter removes tags but not the text between
them, so reasoning that reaches Vapi is read aloud. Reasoning comes in three shapes (the
``sambanova`` SDK's ``types/chat/chat_completion_stream_response``; SambaNova's reasoning guide,
https://docs.sambanova.ai/docs/en/build/reasoning; vLLM's ``reasoning_content``), and this
stage removes all of them whatever the model:

- ``delta.reasoning`` (gpt-oss) and ``delta.reasoning_content`` (vLLM, DeepSeek's own API);
- ``delta.channel``: gpt-oss content in a channel other than ``final`` is reasoning. The
  channel applies to the delta that carries it;
- inline ``<think>…</think>`` in ``delta.content`` (DeepSeek R1 and hybrid V3.x with thinking
  on, MiniMax, Qwen3), with tags split across chunks at any character. A block still open when
  the stream ends is reasoning to its end. A ``</think>`` with no ``<think>`` before it (a
  template that opens the block in the prompt) is removed; text before it was already spoken,
  which the trace counts as ``removed["unopened_think"]`` so ``test`` can warn.

The words after the reasoning go out unchanged and at once: only a possible tag prefix at the
end of a chunk (``<``, ``<thi``…, at most 7 characters) is held until the next chunk decides
it. Whitespace right after ``</think>`` is dropped. The removed text goes to
``trace.reasoning`` for transcripts and hooks; ``trace.think_ms`` is the time from the start of
the turn to the first spoken character (or tool call) after reasoning.

Tool-call deltas are never touched. A chunk left with nothing to say is dropped; one with a
finish reason, tool calls or usage always passes.
"""

from __future__ import annotations

import time
from typing import Any

from vapi_bridge.stages import Chunk, Trace, like

OPEN = "<think>"
CLOSE = "</think>"
REASONING_FIELDS = ("reasoning", "reasoning_content")
HOLD_MAX = len(CLOSE) - 1


class ThinkScanner:
    """Splits one choice's content into spoken text and inline ``<think>`` reasoning.

    Deterministic in what it has read, so any split of the same text gives the same result;
    it holds back only a tail that could still become a tag.
    """

    __slots__ = ("inside", "opened", "pending", "strip", "unopened")

    def __init__(self) -> None:
        self.inside = False
        self.opened = False
        self.pending = ""
        self.strip = False
        self.unopened = 0

    @property
    def idle(self) -> bool:
        return not (self.inside or self.pending or self.strip)

    def scan(self, text: str, final: bool = False) -> tuple[str, str]:
        """(spoken, reasoning) for ``text``; with ``final`` nothing is held back."""
        buf = self.pending + text if self.pending else text
        self.pending = ""
        spoken: list[str] = []
        thought: list[str] = []
        i, n = 0, len(buf)
        while i < n:
            if self.inside:
                j = buf.find(CLOSE, i)
                if j < 0:
                    keep = 0 if final else _tag_tail(buf, i, CLOSE)
                    thought.append(buf[i : n - keep])
                    self.pending = buf[n - keep :]
                    break
                thought.append(buf[i:j])
                i = j + len(CLOSE)
                self.inside, self.strip = False, True
                continue
            if self.strip:
                while i < n and buf[i].isspace():
                    i += 1
                if i == n:
                    break
                self.strip = False
            j = buf.find("<", i)
            if j < 0:
                spoken.append(buf[i:])
                break
            spoken.append(buf[i:j])
            if buf.startswith(OPEN, j):
                i = j + len(OPEN)
                self.inside = self.opened = True
            elif buf.startswith(CLOSE, j):
                i = j + len(CLOSE)
                self.strip = True
                if not self.opened:
                    self.unopened += 1
            elif not final and (OPEN.startswith(buf[j:]) or CLOSE.startswith(buf[j:])):
                self.pending = buf[j:]
                break
            else:
                spoken.append("<")
                i = j + 1
        return "".join(spoken), "".join(thought)


def _tag_tail(buf: str, start: int, tag: str) -> int:
    """Length of the longest end of ``buf[start:]`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(buf) - start), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


class ReasoningFilter:
    """The stream stage: reasoning out of every delta, into the trace."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._scanners: dict[int, ThinkScanner] = {}
        self._reasoned = False
        self._last: Chunk | None = None

    @property
    def held(self) -> str:
        """Text held back for now (a possible tag prefix), all choices together."""
        return "".join(scanner.pending for scanner in self._scanners.values())

    def feed(self, chunk: Chunk) -> Chunk | None:
        self._last = chunk
        says = "usage" in chunk
        for choice in chunk["choices"]:
            if self._choice(choice):
                says = True
        return chunk if says else None

    def flush(self) -> Chunk | None:
        """Close what is still open: a held tag prefix is spoken, an open block is reasoning."""
        choices = []
        for index, scanner in self._scanners.items():
            if scanner.idle:
                continue
            spoken = self._scan(scanner, "", final=True)
            if spoken:
                choices.append(
                    {"index": index, "delta": {"content": spoken}, "finish_reason": None}
                )
        if not choices or self._last is None:
            return None
        return like(self._last, choices)

    def _choice(self, choice: dict[str, Any]) -> bool:
        """Clean one choice in place; True when it still has something to say."""
        delta = choice["delta"]
        for name in REASONING_FIELDS:
            value = delta.pop(name, None)
            if isinstance(value, str) and value:
                self._think(value)
        channel = delta.pop("channel", None)
        finishing = choice["finish_reason"] is not None
        content = delta.get("content")
        calls = delta.get("tool_calls")
        if isinstance(content, str) and content:
            if channel is not None and channel != "final":
                self._think(content)
                content = delta["content"] = ""
            else:
                index = choice.get("index", 0)
                scanner = self._scanners.get(index)
                if scanner is not None or "<" in content:  # plain text costs one search
                    if scanner is None:
                        scanner = self._scanners[index] = ThinkScanner()
                    content = delta["content"] = self._scan(scanner, content, finishing)
        elif finishing:
            scanner = self._scanners.get(choice.get("index", 0))
            if scanner is not None and not scanner.idle:
                content = self._scan(scanner, "", final=True)
                if content:
                    delta["content"] = content
        spoken = isinstance(content, str) and content != ""
        started = calls or (spoken and not content.isspace())
        if started and self._reasoned and self.trace.think_ms is None:
            self.trace.think_ms = (time.perf_counter() - self.trace.started) * 1000
        return spoken or bool(calls) or finishing

    def _scan(self, scanner: ThinkScanner, text: str, final: bool) -> str:
        unopened = scanner.unopened
        spoken, thought = scanner.scan(text, final)
        if thought:
            self._think(thought)
        if scanner.opened:
            self._reasoned = True
        if scanner.unopened != unopened:
            self.trace.removed["unopened_think"] += scanner.unopened - unopened
        if final and scanner.inside:
            self.trace.removed["unclosed_think"] += 1
            scanner.inside = False
        return spoken

    def _think(self, text: str) -> None:
        self._reasoned = True
        self.trace.reasoning.append(text)


def strip_reasoning(body: Any) -> tuple[Any, str]:
    """A whole ``chat.completion`` without reasoning, and the reasoning text it held.

    Removes ``message.reasoning``, ``message.reasoning_content`` and ``message.channel``, and
    inline ``<think>`` blocks from ``message.content`` (a block never closed is reasoning to the
    end). The body is copied where it changes; anything not shaped like a completion is
    returned as it is.
    """
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return body, ""
    thoughts: list[str] = []
    choices = []
    for choice in body["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            choices.append(choice)
            continue
        message = dict(message)
        for name in REASONING_FIELDS:
            value = message.pop(name, None)
            if isinstance(value, str) and value:
                thoughts.append(value)
        channel = message.pop("channel", None)
        content = message.get("content")
        if isinstance(content, str) and content:
            if channel is not None and channel != "final":
                thoughts.append(content)
                message["content"] = ""
            elif "<" in content:
                spoken, thought = ThinkScanner().scan(content, final=True)
                message["content"] = spoken
                if thought:
                    thoughts.append(thought)
        choices.append({**choice, "message": message})
    return {**body, "choices": choices}, "".join(thoughts)
