"""Speech-safe text: markdown markup and emoji come out of the spoken reply, the words stay.

Models write for screens; a caller hears every character Vapi's voice formatter leaves, and it
leaves emoji, code fences, heading hashes and bullet markers. This stage changes exactly this
in ``delta.content`` (and in a whole reply through :func:`speakable`), nothing else:

At the start of a line, after any indentation (up to 8 spaces or tabs):
- heading hashes: ``#`` to ``######`` followed by a space or tab are removed;
- bullet markers: ``-``, ``*`` or ``+`` followed by a space or tab, and numbered markers
  (1 to 3 digits then ``.`` or ``)``, then a space or tab) are removed;
- blockquote ``>`` is removed;
- a run of 3 or more ``-`` or ``=`` (thematic break, setext underline) is removed;
- a code fence (3 or more backticks or tildes) is removed with the rest of its line (the info
  string, such as ``python``) and its line end. The code between fences is kept;
- a table row (a line starting with ``|``): pipes go, cells are joined by ``", "``, spaces
  around cells are trimmed, separator cells (only ``-``, ``:`` and spaces, e.g. ``|---|:-:|``)
  are removed, and a row left with no text loses its line end too.
The spaces after a removed marker are removed with it; markers may repeat (``> - item``).

Anywhere:
- runs of ``*`` are removed, except a single ``*`` with no letter on either side
  (``3 * 4``, ``3*4``);
- runs of ``_`` are removed, except inside a word (``snake_case`` stays);
- runs of 2 or more ``~`` (strikethrough) are removed; a single ``~`` stays;
- every backtick is removed (inline code keeps its text);
- links ``[text](target)`` become ``text``: ``[`` and ``]`` are removed, and a ``(`` right
  after ``]`` starts a target that is removed up to its matching ``)`` (a space ends it early);
- emoji are removed: U+2600 to U+27BF, U+1F000 to U+1FAFF, the emoji among U+231A to
  U+23FA and U+2B05 to U+2B55, tag characters (flag sequences), and the joiners that build
  emoji sequences (U+FE0E, U+FE0F, U+20E3, and U+200D after an emoji). Arrows, ©, ®, ™
  stay. The spaces around a removed emoji stay.

Not changed: ``#``, ``-``, ``+``, ``>`` and digits elsewhere than a line start, ``|`` outside a
table row, parentheses, HTML-like tags (Vapi removes those), ``![alt](target)`` keeps its ``!``,
and anything in tool-call arguments. Counts of what was removed go to ``trace.removed`` under
``heading``, ``bullet``, ``quote``, ``rule``, ``code``, ``table``, ``emphasis``, ``link`` and
``emoji``.

Streaming: the result is the same however the text is split into chunks. Plain text goes out
at once; what is held back is only a possible marker: a line start's indentation and marker
(a list number's up to 3 digits at most), a run of one marker character, a ``]``, and in a
table cell its trailing spaces or separator characters. Held text is given out with the
chunk that carries the finish reason, or by :meth:`SpeechFilter.flush`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from vapi_bridge.stages import Chunk, Trace, like

_EMOJI_CLASS = (
    "\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa\u2600-\u27bf"
    "\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\U0001f000-\U0001faff\U000e0020-\U000e007f"
)
_JOINERS = "\ufe0e\ufe0f\u20e3"
ZWJ = "\u200d"
_EMOJI = re.compile(f"[{_EMOJI_CLASS}{_JOINERS}]")
_SPECIAL = re.compile(f"[\\n*_~`\\[\\]{ZWJ}{_JOINERS}{_EMOJI_CLASS}]")
_SPECIAL_TABLE = re.compile(f"[\\n*_~`\\[\\]|{ZWJ}{_JOINERS}{_EMOJI_CLASS}]")
_SKIN_TONES = frozenset("\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff")
_BLANK = frozenset(" \t")
_DIGITS = frozenset("0123456789")
_SEPARATOR = frozenset("-: \t")
INDENT_MAX = 8


class SpeechScanner:
    """One choice's text, made speech-safe as it streams (see the module's rules)."""

    __slots__ = (
        "after_marker",
        "cell_hold",
        "cell_text",
        "comma",
        "line_start",
        "out",
        "pending",
        "prev",
        "removed",
        "row_text",
        "skip_line",
        "table",
        "target",
    )

    def __init__(self, removed: Counter[str]) -> None:
        self.removed = removed
        self.pending = ""
        self.out: list[str] = []
        self.prev = "\n"  # the last input character read; a stream starts like a line
        self.line_start = True
        self.after_marker = False
        self.skip_line = False
        self.target = 0  # parenthesis depth inside a link target; 0 outside one
        self.table = False
        self.cell_text = False
        self.cell_hold = ""
        self.comma = False
        self.row_text = False

    @property
    def held(self) -> str:
        """The characters held back for now."""
        return self.pending + self.cell_hold

    def scan(self, text: str, final: bool = False) -> str:
        """The speech-safe part of ``text`` that can be decided; with ``final``, all of it."""
        buf = self.pending + text if self.pending else text
        if (
            buf
            and not (self.line_start or self.table or self.skip_line or self.target)
            and _SPECIAL.search(buf) is None
        ):
            self.pending = ""
            self.prev = buf[-1]
            return buf
        self.pending = ""
        out: list[str] = []
        self.out = out
        i, n = 0, len(buf)
        while i < n:
            if self.skip_line:
                j = buf.find("\n", i)
                if j < 0:
                    self.prev = buf[-1]
                    break
                self.skip_line, self.line_start, self.prev = False, True, "\n"
                i = j + 1
            elif self.target:
                i = self._target(buf, i)
            elif self.line_start:
                after = self._line(buf, i, final)
                if after is None:
                    self.pending = buf[i:]
                    break
                i = after
            else:
                match = (_SPECIAL_TABLE if self.table else _SPECIAL).search(buf, i)
                if match is None:
                    self._text(buf[i:])
                    self.prev = buf[-1]
                    break
                j = match.start()
                if j > i:
                    self._text(buf[i:j])
                    self.prev = buf[j - 1]
                k = self._special(buf, j, final)
                if k is None:
                    self.pending = buf[j:]
                    break
                i = k
        if final and self.table:
            self._end_row()
        return "".join(out)

    def _text(self, text: str) -> None:
        if self.table:
            self._cell(text)
        else:
            self.out.append(text)

    def _special(self, buf: str, j: int, final: bool) -> int | None:
        """Handle the special character at ``j``; the index after it, or None to wait."""
        c = buf[j]
        n = len(buf)
        if c == "\n":
            if not self.table or self._end_row():
                self.out.append(c)
            self.line_start, self.prev = True, c
            return j + 1
        if c in "*_~":
            end = j + 1
            while end < n and buf[end] == c:
                end += 1
            if end == n and not final:
                return None
            nxt = buf[end] if end < n else ""
            if c == "*":
                keep = end - j == 1 and not self.prev.isalpha() and not nxt.isalpha()
            elif c == "_":
                keep = self.prev.isalnum() and nxt.isalnum()
            else:
                keep = end - j == 1
            if keep:
                self._text(buf[j:end])
            else:
                self.removed["emphasis"] += 1
            self.prev = c
            return end
        if c == "`":
            self.removed["code"] += 1
        elif c == "]":
            if j + 1 == n and not final:
                return None
            if j + 1 < n and buf[j + 1] == "(":
                self.removed["link"] += 1
                self.target, self.prev = 1, "("
                return j + 2
        elif c == "|":
            self._end_cell()
        elif c == ZWJ:
            if not _EMOJI.match(self.prev):
                self._text(c)
        elif c != "[" and c not in _JOINERS and self.prev != ZWJ and c not in _SKIN_TONES:
            self.removed["emoji"] += 1
        self.prev = c
        return j + 1

    def _line(self, buf: str, i: int, final: bool) -> int | None:
        """Read a line's start at ``i``: a marker, or plain text; None to wait for more."""
        n = len(buf)
        j = i
        while j < n and buf[j] in _BLANK:
            j += 1
            if j - i > INDENT_MAX:
                return self._plain(buf, i, j)
        if j == n:
            return self._plain(buf, i, j) if final else None
        c = buf[j]
        if c == "#" or c == "-" or c == "=" or c == "`" or c == "~":
            end = j + 1
            while end < n and buf[end] == c:
                end += 1
            run = end - j
            if c == "-" and run == 1 and end < n and buf[end] in _BLANK:
                return self._marker(end + 1, "bullet", buf)
            if end == n and not final:
                return None
            if c == "#":
                if run <= 6 and end < n and buf[end] in _BLANK:
                    return self._marker(end + 1, "heading", buf)
            elif c in "-=":
                if run >= 3:
                    return self._marker(end, "rule", buf)
            elif run >= 3:
                self.removed["code"] += 1
                self.line_start, self.after_marker, self.skip_line = False, False, True
                self.prev = c
                return end
        elif c == "*" or c == "+":
            if j + 1 == n and not final:
                return None
            if j + 1 < n and buf[j + 1] in _BLANK:
                return self._marker(j + 2, "bullet", buf)
        elif c in _DIGITS:
            end = j + 1
            while end < n and buf[end] in _DIGITS and end - j < 4:
                end += 1
            if end - j <= 3:
                if end + (end < n and buf[end] in ".)") >= n and not final:
                    return None
                if end + 1 < n and buf[end] in ".)" and buf[end + 1] in _BLANK:
                    return self._marker(end + 2, "bullet", buf)
        elif c == ">":
            return self._marker(j + 1, "quote", buf)
        elif c == "|":
            self.removed["table"] += 1
            self.line_start = self.after_marker = False
            self.table, self.row_text, self.cell_text, self.comma = True, False, False, False
            self.prev = c
            return j + 1
        return self._plain(buf, i, j)

    def _marker(self, end: int, kind: str, buf: str) -> int:
        self.removed[kind] += 1
        self.after_marker = True
        self.prev = buf[end - 1]
        return end

    def _plain(self, buf: str, i: int, j: int) -> int:
        """The line starts with text: its indentation is kept, unless it follows a marker."""
        if j > i:
            if not self.after_marker:
                self.out.append(buf[i:j])
            self.prev = buf[j - 1]
        self.line_start = self.after_marker = False
        return j

    def _target(self, buf: str, i: int) -> int:
        """Skip a link target up to its matching ``)``; whitespace ends it without a ``)``."""
        j, n = i, len(buf)
        while j < n:
            ch = buf[j]
            if ch == ")":
                self.target -= 1
                if not self.target:
                    j += 1
                    break
            elif ch == "(":
                self.target += 1
            elif ch.isspace():
                self.target = 0
                break
            j += 1
        if j > i:
            self.prev = buf[j - 1]
        return j

    def _cell(self, text: str) -> None:
        """Text inside a table cell: trimmed, separators dropped, ", " between cells."""
        out = self.out
        for ch in text:
            if not self.cell_text:
                if ch in _SEPARATOR:
                    if self.cell_hold or ch not in _BLANK:
                        self.cell_hold += ch
                    continue
                if self.comma:
                    out.append(", ")
                    self.comma = False
                out.append(self.cell_hold + ch)
                self.cell_hold, self.cell_text, self.row_text = "", True, True
            elif ch in _BLANK:
                self.cell_hold += ch
            else:
                if self.cell_hold:
                    out.append(self.cell_hold)
                    self.cell_hold = ""
                out.append(ch)

    def _end_cell(self) -> None:
        if self.cell_text:
            self.comma = True
        self.cell_hold, self.cell_text = "", False

    def _end_row(self) -> bool:
        """Leave the table row; True when it said something (so its line end stays)."""
        said = self.row_text
        self.table = self.cell_text = self.comma = self.row_text = False
        self.cell_hold = ""
        return said


class SpeechFilter:
    """The stream stage: each choice's content made speech-safe; tool calls untouched."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._scanners: dict[int, SpeechScanner] = {}
        self._last: Chunk | None = None

    @property
    def held(self) -> str:
        """Text held back for now (possible markers), all choices together."""
        return "".join(scanner.held for scanner in self._scanners.values())

    def feed(self, chunk: Chunk) -> Chunk | None:
        self._last = chunk
        says = "usage" in chunk
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content = delta.get("content")
            finishing = choice["finish_reason"] is not None
            index = choice.get("index", 0)
            scanner = self._scanners.get(index)
            if isinstance(content, str) and content:
                if scanner is None:
                    scanner = self._scanners[index] = SpeechScanner(self.trace.removed)
                content = delta["content"] = scanner.scan(content, finishing)
            elif finishing and scanner is not None:
                content = scanner.scan("", final=True)
                if content:
                    delta["content"] = content
            if content or finishing or delta.get("tool_calls"):
                says = True
        return chunk if says else None

    def flush(self) -> Chunk | None:
        """What is still held, as one last content chunk (the stream ended without a finish)."""
        choices = []
        for index, scanner in self._scanners.items():
            if scanner.pending or scanner.table:
                text = scanner.scan("", final=True)
                if text:
                    choices.append(
                        {"index": index, "delta": {"content": text}, "finish_reason": None}
                    )
        if not choices or self._last is None:
            return None
        return like(self._last, choices)


def speakable(text: str, removed: Counter[str] | None = None) -> str:
    """``text`` made speech-safe in one go (a non-streamed reply); same rules as the stage."""
    return SpeechScanner(Counter() if removed is None else removed).scan(text, final=True)


def speakable_completion(body: Any, removed: Counter[str] | None = None) -> Any:
    """A whole ``chat.completion`` with each message's content made speech-safe (a copy)."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return body
    counts = Counter[str]() if removed is None else removed
    choices = []
    for choice in body["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message = {**message, "content": speakable(message["content"], counts)}
            choice = {**choice, "message": message}
        choices.append(choice)
    return {**body, "choices": choices}
