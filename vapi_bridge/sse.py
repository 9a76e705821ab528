"""Server-sent events: framing what the bridge sends, and parsing what it reads.

Framing is exactly what Vapi's OpenAI client parses: only ``data:`` lines carrying JSON, then
``data: [DONE]``; no ``event:`` lines and no error frames. A comment line (``: ...``) is the
one side channel every SSE client ignores; the bridge uses it to mark a reply it had to cut.
Parsing follows the SSE spec's field rules and is shared by the upstream client, ``test``,
the benchmarks and the tests, so every reader agrees on what a stream said.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
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
# A reply that is not the model's answer (the apology) says so here: a whole reply has no
# stream to carry a cut comment. Vapi ignores it; ``vapi-bridge test`` reads it.
OUTCOME_HEADER = "X-Vapi-Bridge-Outcome"

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"))


def _encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode`` for a chunk, without building a new C encoder on every call."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another interpreter): the plain encoder
        return _ENCODER.encode
    # No circular-reference markers: chunks come from json.loads and the stages, never cyclic;
    # and without them the encoder keeps no state, so threads can share it.
    try:  # the accelerator's private signature (CPython 3.11 to 3.13): another, the plain one
        encode = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            True,
        )
        encode({"a": [1, "é"]}, 0)
    except TypeError:
        return _ENCODER.encode
    return lambda chunk: "".join(encode(chunk, 0))


_encode = _encoder()


def frame(chunk: dict[str, Any]) -> bytes:
    """One SSE event holding ``chunk`` as JSON."""
    try:
        return b"data: " + _encode(chunk).encode("utf-8") + b"\n\n"
    except UnicodeEncodeError:
        # A lone surrogate (an emoji's escaped half, split across two upstream chunks) has no
        # UTF-8 form: escaped, as the upstream sent it, it is still valid JSON for the client.
        return b"data: " + _ENCODER_ASCII.encode(chunk).encode("ascii") + b"\n\n"


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


class ByteParser:
    """:class:`Parser`'s rules on raw bytes as they come off a socket, a block at a time.

    The upstream reader's hot path: one split per block instead of a string decode and a
    generator step per line. Lines end at CR, LF or CRLF (the SSE spec's only line ends; a
    U+2028 inside a JSON string is text). Events come out as ``(event name, data)`` pairs of
    bytes; comments are skipped.
    """

    __slots__ = ("_data", "_name", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []
        self._name = b""

    def feed(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The events that ``block`` completes (usually one, for one upstream chunk)."""
        if (
            block.startswith(b"data: ")
            and block.find(b"\n") == len(block) - 2
            and block.endswith(b"\n\n")
            and not (self._rest or self._data or self._name)
            and b"\r" not in block
        ):
            return [(b"", block[6:-2])]  # the usual block: exactly one one-line event
        buf = self._rest + block if self._rest else block
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF: decide with the next block.
            held = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = buf.split(b"\n")
            if held:
                lines.pop()
                lines[-1] += b"\r"
        else:
            lines = buf.split(b"\n")
        self._rest = lines.pop()
        return self._lines(lines)

    def end(self) -> list[tuple[bytes, bytes]]:
        """The stream ended: an unterminated last line counts, and what is held is dispatched."""
        rest, self._rest = self._rest, b""
        lines = [rest[:-1] if rest.endswith(b"\r") else rest] if rest else []
        return self._lines([*lines, b""])

    def _lines(self, lines: list[bytes]) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    out.append((self._name, data))
                    self._data = []
                self._name = b""
            elif line[0] != 58:  # b":" starts a comment
                field, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    self._data.append(value)
                elif field == b"event":
                    self._name = value
        return out


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
