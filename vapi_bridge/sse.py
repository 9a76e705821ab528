"""Server-sent events: framing what the bridge sends, and parsing what it reads.

Framing is exactly what Vapi's OpenAI client parses: only ``data:`` lines carrying JSON, then
``data: [DONE]``; no ``event:`` lines and no error frames. A comment line (``: ...``) is the
one side channel every SSE client ignores; the bridge uses it to mark a reply it had to cut.
Parsing follows the SSE spec's field rules and is shared by the upstream client, ``test``,
the benchmarks and the tests, so every reader agrees on what a stream said.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"
CUT_PREFIX = "vapi-bridge cut="

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
CONTENT_TYPE = "text/event-stream"
# The bridge names the model that answered (a fallback, maybe) in this response header.
MODEL_HEADER = "X-Vapi-Bridge-Model"
# ... and, when that was a fallback, the model the request asked for in this one.
FALLBACK_HEADER = "X-Vapi-Bridge-Fallback-From"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def frame(chunk: dict[str, Any]) -> bytes:
    """One SSE event holding ``chunk`` as JSON."""
    return b"data: " + _encode(chunk).encode("utf-8") + b"\n\n"


def cut_comment(outcome: str) -> bytes:
    """A comment saying the reply was ended early and why; clients skip it, ``test`` reads it."""
    return f": {CUT_PREFIX}{outcome}\n\n".encode()


@dataclass(frozen=True)
class Event:
    """One dispatched SSE event, or one comment line (``comment`` set, ``data`` empty)."""

    data: str = ""
    event: str = ""
    comment: str | None = None

    @property
    def done(self) -> bool:
        return self.comment is None and self.data.startswith("[DONE]")


class Parser:
    """Turns SSE lines (without their line ends) into events, one line at a time.

    ``data:`` lines accumulate until a blank line dispatches them; ``event:`` names the next
    event; other fields are ignored, as the spec says. With ``comments`` each comment line is
    an event too (for readers that judge a stream, not only consume it).
    """

    def __init__(self, *, comments: bool = False) -> None:
        self.comments = comments
        self._data: list[str] = []
        self._name = ""

    def feed(self, line: str) -> Event | None:
        if not line:
            event = Event("\n".join(self._data), self._name) if self._data else None
            self._data, self._name = [], ""
            return event
        if line[0] == ":":
            return Event(comment=line[1:].strip()) if self.comments else None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None

    def end(self) -> Event | None:
        """A stream that ends without the last blank line still dispatches what it held."""
        return self.feed("")


def events(lines: Iterable[str], *, comments: bool = False) -> Iterator[Event]:
    """Parse SSE lines into events (see :class:`Parser`)."""
    parser = Parser(comments=comments)
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
    last = parser.end()
    if last is not None:
        yield last
