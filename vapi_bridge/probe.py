"""``vapi-bridge test``: play Vapi against any Custom LLM server and judge the reply.

It sends the Vapi-shaped sample request, hands content to a callback as it streams (so the
CLI can show it live), times it, and checks every line the way Vapi's OpenAI client would
parse it. Each broken rule is reported once with its count, so the tool can vet any Custom
LLM server, not only this bridge: whatever the server sends, the result names what is wrong
and nothing is raised. Text a caller would hear wrongly (reasoning, markdown, emoji) is a
warning, not a violation: Vapi plays it, but it sounds bad.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.request import getproxies

import httpx

from vapi_bridge import sse
from vapi_bridge.errors import BridgeError, ProbeError
from vapi_bridge.reply import ToolCalls

if TYPE_CHECKING:
    from rich.console import Console

# The outcome the bridge marks on a reply it made itself because every model failed.
APOLOGY = "apology"
DEFAULT_MESSAGE = "Hello! Explain what an LLM is in one sentence."
EXAMPLE_URL = "http://127.0.0.1:5000"
CONNECT_TIMEOUT = 5.0


def sample_request(message: str, model: str, stream: bool) -> dict[str, Any]:
    """A request shaped like Vapi's: its ``call`` and ``metadata`` ride along on purpose, so
    the server sees a call (logs, reply hooks, transcripts), a new one each run. Only the
    fields that say what it is: no personal data."""
    return {
        "call": {
            "id": f"vapi-bridge-test-{uuid.uuid4().hex}",
            "type": "webCall",
            "status": "in-progress",
        },
        "metadata": {"request_id": "example-123"},
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": message},
        ],
        "temperature": 0.7,
        "max_tokens": 150,
        "stream": stream,
    }


@dataclass
class ProbeResult:
    """What came back and what is wrong with it. ``error`` is set when no judgeable reply came."""

    url: str | None
    status: int = 0
    stream: bool = True
    ok: bool = False
    ttft_s: float | None = None
    ttfs_s: float | None = None
    total_s: float = 0.0
    chars_per_s: float | None = None
    chunks: int = 0
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None
    answered_by: str | None = None
    cut: str | None = None
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: BridgeError | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(replace(self, error=None))
        if self.error is not None:
            data["error"] = {
                "message": self.error.message,
                "hint": self.error.hint,
                "code": self.error.code,
            }
        return data


def failed(url: str | None, error: BridgeError) -> ProbeResult:
    """The result of a probe that could not even start (for ``--json``)."""
    return ProbeResult(url=url, error=error)


def chat_url(url: str) -> str:
    """Accept a base URL (what Vapi is given) or a full ``/chat/completions`` URL.

    The URL is checked first, so a typo is named instead of surfacing as a network error.
    """
    parsed = _checked_url(url)
    path = parsed.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return str(parsed.copy_with(path=path))


def _url_error(url: str, problem: str, hint: str = "") -> ProbeError:
    return ProbeError(
        f"The URL '{_clean_line(url)}' {problem}.",
        hint=hint or f"Pass the server's base URL with --url, for example {EXAMPLE_URL}.",
    )


def _checked_url(url: str) -> httpx.URL:
    raw = url.strip()
    if not raw:
        raise _url_error(url, "is empty")
    if "://" not in raw:
        scheme_hint = f"Add the scheme: --url http://{raw.lstrip('/')}"
        raise _url_error(raw, "has no scheme (http:// or https://)", scheme_hint)
    if raw.count("[") != raw.count("]"):
        ipv6_hint = "Write an IPv6 host in brackets, for example --url http://[::1]:5000"
        raise _url_error(raw, "has an unclosed `[` (an IPv6 host needs `[...]`)", ipv6_hint)
    try:
        parsed = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise _url_error(raw, f"cannot be parsed ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise _url_error(raw, f"uses {parsed.scheme}://; Custom LLM servers speak http(s)")
    host = parsed.host
    if not host:
        raise _url_error(raw, "has no host")
    if not _is_ip(host) and not re.fullmatch(r"[\w.-]+", host):
        raise _url_error(raw, f"has a host name with characters a host cannot have ({host})")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _url_error(raw, f"has port {parsed.port}; ports run from 1 to 65535")
    return parsed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_local(host: str) -> bool:
    """True for hosts that name this machine: requests to them never go through a proxy."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _headers(secret: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if secret:
        if not (secret.isascii() and secret.isprintable()):
            raise ProbeError(
                "The bridge key holds characters an HTTP header cannot carry.",
                hint="Pass the key exactly as `vapi-bridge serve` printed it.",
            )
        headers["Authorization"] = f"Bearer {secret}"
    return headers


def run(
    url: str,
    *,
    secret: str | None,
    message: str = DEFAULT_MESSAGE,
    model: str = "Meta-Llama-3.3-70B-Instruct",
    stream: bool = True,
    timeout: float = 30.0,
    on_text: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Send the sample request and judge what came back.

    Never raises: a failure that left nothing to judge (bad URL, no connection, HTTP error,
    timeout) is ``result.error``, a :class:`ProbeError` with a message and a hint. ``on_text``
    gets the content as it arrives, with terminal control characters removed.
    """
    result = ProbeResult(url=url, stream=stream)
    started = time.perf_counter()
    judge = _Judge(result, started, on_text)
    try:
        if not math.isfinite(timeout) or timeout <= 0:
            raise ProbeError(
                f"--timeout {timeout} is not a number of seconds.", hint="Pass e.g. --timeout 30."
            )
        target = httpx.URL(chat_url(url))
        result.url = str(target.copy_with(userinfo=b""))
        _exchange(result, judge, target, secret, sample_request(message, model, stream), timeout)
    except ProbeError as exc:
        result.error = exc
    result.total_s = time.perf_counter() - started
    judge.finish()
    return result


def _exchange(
    result: ProbeResult,
    judge: _Judge,
    url: httpx.URL,
    secret: str | None,
    body: dict[str, Any],
    timeout: float,
) -> None:
    target = str(result.url)
    local = is_local(url.host)
    late = _timeout(target, timeout)
    deadline = _Deadline(timeout)

    def in_time(lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            if deadline.passed:
                raise late
            yield line
        if deadline.cut:
            raise late  # the end of a reply cut at the deadline is no end to judge

    try:
        with (
            deadline,
            httpx.Client(
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
                trust_env=not local,
            ) as client,
            client.stream(
                "POST",
                url,
                content=json.dumps(body).encode(),
                headers=_headers(secret),
                extensions={"trace": deadline.trace},
            ) as response,
        ):
            result.status = response.status_code
            _note_fallback(result, response.headers)
            _note_outcome(result, response.headers)
            if result.stream and response.status_code < 300:
                content_type = response.headers.get("content-type", "")
                judge.stream(content_type, in_time(response.iter_lines()))
                return
            raw = response.read()
            if deadline.stop():
                raise late
            if response.status_code >= 300:
                raise _status_error(response)
            judge.body(raw)
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        # Cut at the deadline: the error is the cut's, unless still connecting (its own limit).
        if deadline.stop() and not isinstance(exc, httpx.ConnectTimeout):
            raise late from None
        raise _transport_error(exc, target, timeout, url.host if not local else None) from None


class _Deadline:
    """One deadline for the whole reply: connection, headers and body.

    httpx's timeouts bound each read, so a server that keeps sending a little could hold
    ``test`` for ever. The lines are checked against the clock as they come; a read still
    blocked when the deadline passes is woken by shutting the connection's socket down,
    found through httpx's ``trace`` extension as each stream (TCP, then TLS) opens.
    """

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._cut = False
        self._stopped = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def passed(self) -> bool:
        return self.cut or time.monotonic() >= self._at

    @property
    def cut(self) -> bool:
        """The deadline passed while the reply was still being read, and cut it."""
        with self._lock:
            return self._cut

    def stop(self) -> bool:
        """The reading is over; returns whether the deadline had cut it first."""
        with self._lock:
            self._stopped = True
            self._timer.cancel()
            return self._cut

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if not event.endswith(".complete"):
            return
        extra = getattr(info.get("return_value"), "get_extra_info", None)
        sock = extra("socket") if callable(extra) else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socket = sock
                if self._cut:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._cut = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock: socket.socket) -> None:
    """Wake a read blocked on ``sock`` (a plain close would not): it sees the end at once.
    On a TLS socket, the plain socket's shutdown leaves the TLS state to the reader."""
    with contextlib.suppress(OSError):  # closed meanwhile
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _note_fallback(result: ProbeResult, headers: httpx.Headers) -> None:
    """A bridge names the model that answered, and the one asked when that was a fallback."""
    asked = headers.get(sse.FALLBACK_HEADER)
    answered = headers.get(sse.MODEL_HEADER)
    if asked and answered:
        result.answered_by = _clean_line(answered)
        result.warnings.append(
            f"{_clean_line(asked)} did not answer; the bridge's fallback "
            f"{result.answered_by} did (its log says why)."
        )


def _note_outcome(result: ProbeResult, headers: httpx.Headers) -> None:
    """A bridge marks a reply that is not the model's answer (the apology) in a header too:
    a whole reply has no stream to carry the cut comment. Judged like that comment."""
    outcome = headers.get(sse.OUTCOME_HEADER)
    if outcome is not None and result.status < 300:
        result.cut = _clean_line(outcome) or "no reason given"


def _transport_error(exc: Exception, target: str, timeout: float, remote: str | None) -> ProbeError:
    """What went wrong on the way to the server, in words; ``remote`` is the host when it is
    not this machine."""
    if isinstance(exc, httpx.ConnectTimeout):
        return ProbeError(
            f"Could not connect to {target} within {min(timeout, CONNECT_TIMEOUT):g}s.",
            hint=_connect_hint(remote, exc),
        )
    if isinstance(exc, httpx.ConnectError):
        reason = f": {exc}" if str(exc) else ""
        return ProbeError(
            f"Could not connect to {target}{_clean_line(reason)}.", hint=_connect_hint(remote, exc)
        )
    if isinstance(exc, httpx.TimeoutException):
        return _timeout(target, timeout)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ProbeError(
            f"The server at {target} broke the connection before the reply ended "
            f"({exc.__class__.__name__}).",
            hint="Check the server's log; it may have crashed or dropped the stream.",
        )
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return ProbeError(
            f"The request to {target} failed: {exc.__class__.__name__}: {_clean_line(str(exc))}.",
            hint="Check the URL and the server's log.",
        )
    return ProbeError(
        f"The request to {target} could not be set up: {_clean_line(str(exc))}.",
        hint="Check the TLS and proxy settings in the environment (SSL_CERT_FILE, ...).",
    )


def _timeout(target: str, timeout: float) -> ProbeError:
    return ProbeError(
        f"No complete reply from {target} within {timeout:g}s.",
        hint="Check the server's log; raise --timeout for slow models.",
    )


def _connect_hint(remote: str | None, exc: Exception) -> str:
    """Only a server on this machine is one to start here; another host is to be checked."""
    if remote is None:
        return "Start the bridge with `vapi-bridge serve`, or point --url at the server."
    if any(k in getproxies() for k in ("http", "https", "all")):
        return (
            "A proxy from the environment (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) is in use: "
            "check it, or exempt the host with NO_PROXY."
        )
    host = _clean_line(remote)
    if _caused_by(exc, socket.gaierror):
        return (
            f"The host {host} was not found: check it in --url. A tunnel's address can change "
            "when the bridge restarts; `vapi-bridge test --public` finds the running one."
        )
    return f"Check the host and port in --url ({host}), and that the server there is up."


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> socket: a short chain, never a loop
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _status_error(response: httpx.Response) -> ProbeError:
    status = response.status_code
    if status < 400:
        location = _clean_line(response.headers.get("location", "(no Location header)"))
        return ProbeError(
            f"The server answered with a redirect (HTTP {status}) to {location}.",
            hint="Pass the URL that answers directly with --url, and give that one to Vapi.",
        )
    detail = ""
    try:
        error = response.json().get("error")
        detail = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
    except (ValueError, AttributeError, RecursionError):
        detail = response.text
    detail = _clean_line(detail)[:200]
    said = f": {detail}" if detail else ""
    if status == 401:
        return ProbeError(
            f"The server rejected the bridge key (HTTP 401){said}",
            hint="Pass the key `vapi-bridge serve` printed with --secret (or VAPI_BRIDGE_SECRET).",
        )
    if detail:
        hint = "The message above says what failed; see the server's log for more."
    elif status in (404, 405):
        path = _clean_line(response.request.url.path)
        hint = (
            f"Nothing there answers POST {path}: check the path in --url (pass the base URL "
            "you give Vapi; `test` adds /chat/completions)."
        )
    else:
        hint = "The server gave no reason: check the server's log."
    return ProbeError(f"The server answered HTTP {status}{said}", hint=hint)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Server text made safe for a terminal: no control sequences, no unencodable halves
    (the two halves of a pair are the one character they make)."""
    paired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub("\ufffd", _CONTROL.sub("", paired))


def _clean_line(text: str) -> str:
    return " ".join(_clean(text.replace("\t", " ").replace("\n", " ")).split())


class _Flags:
    """Counts protocol violations by kind, in the order first seen."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, violation: str) -> None:
        self.counts[violation] += 1

    def report(self) -> list[str]:
        return [f"{v} (x{n})" if n > 1 else v for v, n in self.counts.items()]


_SSE_FIELDS = frozenset({"data", "event", "id", "retry"})
_TAGS = re.compile(r"<[^<>]*>")


class _Judge:
    """Reads a reply the way Vapi's OpenAI client does and names every rule it breaks."""

    def __init__(
        self, result: ProbeResult, started: float, on_text: Callable[[str], None] | None
    ) -> None:
        self.result = result
        self.started = started
        self.on_text = on_text
        self.flag = _Flags()
        self.calls = ToolCalls()
        self.done = False
        self.reasoning_fields: set[str] = set()
        self._text_at: list[float] = []
        self._later_chars = 0
        # The first half of a surrogate pair ending one chunk waits for the second.
        self._half = ""

    # A stream ---------------------------------------------------------------------------------

    def stream(self, content_type: str, lines: Iterable[str]) -> None:
        if not content_type.startswith(sse.CONTENT_TYPE):
            self.flag(f"Content-Type is '{_clean_line(content_type)}', not {sse.CONTENT_TYPE}")
        for event in sse.events(self._fields(lines), comments=True):
            self.event(event)
        if not self.done:
            self.flag("the stream ended without `data: [DONE]`")

    def _fields(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            if line and line[0] != ":" and line.partition(":")[0] not in _SSE_FIELDS:
                self.flag("a line that is neither an SSE field nor a comment (clients drop it)")
            yield line

    def event(self, event: sse.Event) -> None:
        if event.comment is not None:
            if event.comment.startswith(sse.CUT_PREFIX):
                outcome = _clean_line(event.comment.removeprefix(sse.CUT_PREFIX))
                self.result.cut = outcome or "no reason given"
            return
        if self.done:
            self.flag("data after [DONE]")
            return
        if event.event:
            self.flag("an `event:` line (the OpenAI client then yields {event, data}, not a chunk)")
        if event.done:
            self.done = True
            return
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):
            self.flag("a `data:` line that is not JSON")
            return
        if self.result.ttft_s is None:
            self.result.ttft_s = self._now()
        self.result.chunks += 1
        self.chunk(chunk)

    def chunk(self, chunk: Any) -> None:
        flag = self.flag
        if not isinstance(chunk, dict):
            flag("a chunk that is not a JSON object")
            return
        if "error" in chunk:
            flag('an in-band error frame `data: {"error": ...}` (Vapi fails the turn)')
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            flag("`choices` is not a list (Vapi: 'chunk.choices is not iterable')")
            return
        created = chunk.get("created")
        if not isinstance(created, int) or isinstance(created, bool):
            flag("`created` is not an integer")
        if chunk.get("object") != "chat.completion.chunk":
            flag("`object` is not 'chat.completion.chunk'")
        self._model(chunk.get("model"))
        for choice in choices:
            if not isinstance(choice, dict):
                flag("a choice that is not a JSON object")
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                flag("a choice without a `delta` object")
                continue
            self._content(delta.get("content"), "`delta.content`")
            self._reasoning(delta)
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for call in tool_calls:
                    self._tool_call_delta(call)
            elif tool_calls is not None:
                flag("`delta.tool_calls` is not a list")
            if "function_call" in delta:
                flag("a legacy `function_call` delta (breaks Vapi; use tool_calls)")
            self._finish(choice.get("finish_reason"))

    def _tool_call_delta(self, call: Any) -> None:
        if not isinstance(call, dict):
            self.flag("a tool-call delta that is not a JSON object")
            return
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            self.flag("a tool-call delta without `index`")
            return
        for problem in self.calls.add(index, call):
            self.flag(problem)
        self._spoke()

    # A whole reply (--no-stream) --------------------------------------------------------------

    def body(self, raw: bytes) -> None:
        flag = self.flag
        self.result.ttft_s = self._now()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            flag("the body is not JSON")
            return
        if not isinstance(body, dict):
            flag("the body is not a JSON object")
            return
        self.result.chunks = 1
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            flag("`choices` is not a non-empty list")
            return
        choice = choices[0]
        if not isinstance(choice, dict):
            flag("`choices[0]` is not a JSON object")
            return
        self._model(body.get("model"))
        message = choice.get("message")
        if not isinstance(message, dict):
            flag("`choices[0].message` is not a JSON object")
            return
        self._content(message.get("content"), "`message.content`", self.result.ttft_s)
        self._reasoning(message)
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            for index, call in enumerate(tool_calls):
                if not isinstance(call, dict):
                    flag("a tool call that is not a JSON object")
                    continue
                for problem in self.calls.add(index, call):
                    flag(problem)
                self._spoke(self.result.ttft_s)
        elif tool_calls is not None:
            flag("`message.tool_calls` is not a list")
        self._finish(choice.get("finish_reason"))
        if self.result.finish_reason is None:
            flag("the reply has no finish_reason")

    # Shared -----------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self.started

    def _model(self, model: Any) -> None:
        if self.result.model is None and isinstance(model, str) and model:
            self.result.model = model

    def _content(self, content: Any, where: str, at: float | None = None) -> None:
        if content is None:
            return
        if not isinstance(content, str):
            self.flag(f"{where} is not a string")
            return
        if not content:
            return
        now = self._now() if at is None else at
        if self._text_at:
            self._later_chars += len(content)
        self._text_at.append(now)
        self.result.text += content
        if _TAGS.sub("", content).strip():
            self._spoke(now)
        if self.on_text is not None:
            text, self._half = self._half + content, ""
            if "\ud800" <= text[-1] <= "\udbff":
                text, self._half = text[:-1], text[-1]
            if text:
                self.on_text(_clean(text))

    def _spoke(self, at: float | None = None) -> None:
        if self.result.ttfs_s is None:
            self.result.ttfs_s = self._now() if at is None else at

    def _reasoning(self, delta: dict[str, Any]) -> None:
        for name in ("reasoning", "reasoning_content"):
            value = delta.get(name)
            if isinstance(value, str) and value:
                self.reasoning_fields.add(name)

    def _finish(self, reason: Any) -> None:
        if isinstance(reason, str) and reason:
            self.result.finish_reason = reason
        elif reason is not None and not isinstance(reason, str):
            self.flag("`finish_reason` is not a string")

    def finish(self) -> None:
        """Settle the verdict once the reply (or the failure) is in."""
        if self._half and self.on_text is not None:
            self.on_text(_clean(self._half))
        result = self.result
        result.tool_calls = [call.as_dict() for call in self.calls.complete()]
        if result.error is None:
            if result.stream and result.chunks and result.finish_reason is None:
                self.flag("no chunk carried a finish_reason")
            if not result.text.strip() and not result.tool_calls:
                self.flag("the reply has no content and no tool call (Vapi says nothing)")
        result.violations = self.flag.report()
        if result.cut == APOLOGY:
            result.ttft_s = None  # the bridge spoke it: no model sent a token
        if result.error is not None:
            result.ok = False
            return
        if result.stream and len(self._text_at) > 1 and self._text_at[-1] > self._text_at[0]:
            result.chars_per_s = self._later_chars / (self._text_at[-1] - self._text_at[0])
        result.warnings += speech_warnings(result.text)
        result.notes = [
            f"reasoning arrived in `{name}`, a field Vapi ignores: fine, the caller does not "
            "hear it (it only delays first speech)"
            for name in sorted(self.reasoning_fields)
        ]
        result.ok = not result.violations and result.cut is None


_MARKUP = (
    ("code fences", re.compile(r"```")),
    ("bold `**`", re.compile(r"\*\*")),
    ("headings `#`", re.compile(r"^[ \t]*#{1,6}[ \t]", re.M)),
    ("bullets", re.compile(r"^[ \t]*[-*+\u2022][ \t]", re.M)),
    ("table pipes `|`", re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.M)),
)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U0001f1e6-\U0001f1ff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d]"
)
_THINK = re.compile(r"</?think>", re.I)


def speech_warnings(text: str) -> list[str]:
    """What in the spoken text a caller would hear wrongly: reasoning, markup, emoji."""
    warnings = []
    if _THINK.search(text):
        warnings.append(
            "the spoken content holds reasoning (`<think>`): Vapi drops the tags but speaks "
            "the thinking between them"
        )
    found = [name for name, pattern in _MARKUP if pattern.search(text)]
    if found:
        warnings.append(
            f"the spoken content holds markdown ({', '.join(found)}): the voice reads the "
            "markers out or stumbles over them"
        )
    if _EMOJI.search(text):
        warnings.append("the spoken content holds emoji: the voice reads them out or skips them")
    return warnings


def report(result: ProbeResult, *, as_json: bool, console: Console) -> None:
    """The summary: one JSON object on stdout, or a table on stderr after the live text.

    A failed probe (``result.error``) prints only the end of the live text here; the caller
    reports the error itself.
    """
    if as_json:
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
        sys.stdout.flush()
        return
    from rich.markup import escape
    from rich.table import Table

    if result.text:
        sys.stdout.write("\n")
    for call in result.tool_calls:
        sys.stdout.write(f"[tool call] {_clean_line(call['name'])}({_clean(call['arguments'])})\n")
    sys.stdout.flush()
    if result.error is not None:
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Status", f"HTTP {result.status}" + ("" if result.stream else " (not streamed)"))
    first = "-" if result.ttft_s is None else f"{result.ttft_s * 1000:.0f} ms"
    table.add_row("First token", first)
    if result.ttfs_s is not None:
        table.add_row("First speech", f"{result.ttfs_s * 1000:.0f} ms")
    table.add_row("Total", f"{result.total_s * 1000:.0f} ms")
    table.add_row("Chunks", str(result.chunks))
    if result.chars_per_s is not None:
        table.add_row("Speed", f"{result.chars_per_s:.0f} chars/s")
    if result.finish_reason:
        table.add_row("Finish", escape(_clean_line(result.finish_reason)))
    console.print(table)
    for note in result.notes:
        console.print(f"[dim]Note:[/] {escape(note)}")
    for warning in result.warnings:
        console.print(f"[bold yellow]Warning:[/] {escape(warning)}")
    for violation in result.violations:
        console.print(f"[bold red]Protocol violation:[/] {escape(violation)}")
    if result.cut == APOLOGY:
        console.print(
            "[bold red]Apology:[/] every model failed before its first token, so the bridge "
            "spoke its apology instead (its log names the cause)."
        )
    elif result.cut is not None:
        console.print(
            f"[bold red]Cut short:[/] the server cut the reply short ({escape(result.cut)})."
        )
    if result.ok:
        console.print("[bold green]OK[/]: the reply is what Vapi expects.")
    elif result.cut == APOLOGY and not result.violations:
        console.print("[bold red]FAILED[/]: the caller would hear the apology, not an answer.")
    elif result.cut is not None and not result.violations:
        console.print("[bold red]FAILED[/]: the caller would hear only part of the reply.")
    else:
        console.print("[bold red]FAILED[/]: Vapi would not play this reply correctly.")
