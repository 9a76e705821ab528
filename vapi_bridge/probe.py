"""``vapi-bridge test``: play Vapi against any Custom LLM server and judge the reply.

It sends the Vapi-shaped sample request, hands content to a callback as it streams (so the
CLI can show it live), times it, and checks every line the way Vapi's OpenAI client would
parse it (protocol.md section 2). Each broken rule is reported once with its count, so the
tool can vet any Custom LLM server, not only this bridge.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from vapi_bridge.errors import ProbeError

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_MESSAGE = "Hello! Explain what an LLM is in one sentence."


def sample_request(message: str, model: str, stream: bool) -> dict[str, Any]:
    """The seed's sample: Vapi's private ``call`` and ``metadata`` ride along on purpose."""
    return {
        "call": "chat.completions",
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
    url: str
    status: int = 0
    stream: bool = True
    ok: bool = False
    ttft_s: float | None = None
    total_s: float = 0.0
    chunks: int = 0
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def chars_per_s(self) -> float | None:
        if not self.text or self.ttft_s is None or self.total_s <= self.ttft_s:
            return None
        return len(self.text) / (self.total_s - self.ttft_s)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["chars_per_s"] = self.chars_per_s
        return data


def chat_url(url: str) -> str:
    """Accept a base URL (what Vapi is given) or a full ``/chat/completions`` URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


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
    """Send the sample request and return what came back; raises :class:`ProbeError`."""
    target = chat_url(url)
    result = ProbeResult(url=target, stream=stream)
    headers = {"Accept": "application/json"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    started = time.perf_counter()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0)) as client,
            client.stream(
                "POST", target, json=sample_request(message, model, stream), headers=headers
            ) as response,
        ):
            result.status = response.status_code
            if response.status_code >= 400:
                response.read()
                raise _status_error(response)
            if stream:
                _read_stream(response, result, started, on_text)
            else:
                _read_body(response, result, started, on_text)
    except httpx.ConnectError:
        raise ProbeError(
            f"Could not connect to {target}.",
            hint="Start the bridge with `vapi-bridge serve`, or point --url at the server.",
        ) from None
    except httpx.TimeoutException:
        raise ProbeError(
            f"No complete reply from {target} within {timeout:g}s.",
            hint="Check the server's log; raise --timeout for slow models.",
        ) from None
    except httpx.HTTPError as exc:
        raise ProbeError(
            f"The connection to {target} failed: {exc.__class__.__name__}.",
            hint="Check the server's log; it may have crashed or dropped the stream.",
        ) from None
    result.total_s = time.perf_counter() - started
    result.ok = not result.violations and bool(result.text or result.tool_calls)
    if not result.text and not result.tool_calls:
        result.violations.append("the reply has no content and no tool call (Vapi says nothing)")
    return result


def _status_error(response: httpx.Response) -> ProbeError:
    detail = ""
    try:
        error = response.json().get("error")
        detail = error.get("message", "") if isinstance(error, dict) else str(error or "")
    except (ValueError, AttributeError):
        detail = response.text[:200]
    status = response.status_code
    detail = f": {detail}" if detail else ""
    if status == 401:
        return ProbeError(
            f"The server rejected the bridge key (HTTP 401){detail}",
            hint="Pass the key `vapi-bridge serve` printed with --secret (or VAPI_BRIDGE_SECRET).",
        )
    return ProbeError(
        f"The server answered HTTP {status}{detail}",
        hint="The message above says what failed; see the server's log for more.",
    )


class _Checker:
    """Counts protocol violations by kind, in the order first seen."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, violation: str) -> None:
        self.counts[violation] += 1

    def report(self) -> list[str]:
        return [f"{v} (x{n})" if n > 1 else v for v, n in self.counts.items()]


def _read_stream(
    response: httpx.Response,
    result: ProbeResult,
    started: float,
    on_text: Callable[[str], None] | None,
) -> None:
    flag = _Checker()
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        flag(f"Content-Type is '{content_type}', not text/event-stream")
    done = False
    calls: dict[int, dict[str, Any]] = {}
    for line in response.iter_lines():
        if not line or line.startswith(":"):
            continue
        if done:
            flag("data after [DONE]")
            continue
        if line.startswith("event:"):
            flag("an `event:` line (the OpenAI client throws on it)")
            continue
        if not line.startswith("data:"):
            flag("a line that is neither `data:` nor a comment")
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            flag("a `data:` line that is not JSON")
            continue
        if result.ttft_s is None:
            result.ttft_s = time.perf_counter() - started
        result.chunks += 1
        _check_chunk(chunk, result, calls, flag, on_text)
    if not done:
        flag("the stream ended without `data: [DONE]`")
    if result.chunks and result.finish_reason is None:
        flag("no chunk carried a finish_reason")
    result.tool_calls = [calls[i] for i in sorted(calls)]
    result.violations.extend(flag.report())


def _check_chunk(
    chunk: Any,
    result: ProbeResult,
    calls: dict[int, dict[str, Any]],
    flag: _Checker,
    on_text: Callable[[str], None] | None,
) -> None:
    if not isinstance(chunk, dict):
        flag("a chunk that is not a JSON object")
        return
    if "error" in chunk:
        flag('an in-band error frame `data: {"error": ...}` (Vapi fails the turn)')
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        flag("`choices` is not a list (Vapi: 'chunk.choices is not iterable')")
        return
    if not isinstance(chunk.get("created"), int):
        flag("`created` is not an integer")
    if chunk.get("object") != "chat.completion.chunk":
        flag("`object` is not 'chat.completion.chunk'")
    result.model = result.model or chunk.get("model")
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            flag("a choice without a `delta` object")
            continue
        content = delta.get("content")
        if isinstance(content, str) and content:
            result.text += content
            if on_text is not None:
                on_text(content)
        for call in delta.get("tool_calls") or []:
            index = call.get("index") if isinstance(call, dict) else None
            if not isinstance(index, int):
                flag("a tool-call delta without `index`")
                continue
            record = calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
            record["id"] = call.get("id") or record["id"]
            function = call.get("function") or {}
            record["name"] += function.get("name") or ""
            record["arguments"] += function.get("arguments") or ""
        if "function_call" in delta:
            flag("a legacy `function_call` delta (breaks Vapi; use tool_calls)")
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


def _read_body(
    response: httpx.Response,
    result: ProbeResult,
    started: float,
    on_text: Callable[[str], None] | None,
) -> None:
    response.read()
    result.ttft_s = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        result.violations.append("the body is not JSON")
        return
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        result.violations.append("`choices` is not a non-empty list")
        return
    message = choices[0].get("message") or {}
    result.model = body.get("model")
    result.finish_reason = choices[0].get("finish_reason")
    result.text = message.get("content") or ""
    if result.text and on_text is not None:
        on_text(result.text)
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        result.tool_calls.append(
            {
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
            }
        )
    result.chunks = 1


def report(result: ProbeResult, *, as_json: bool, console: Console) -> None:
    """The summary: JSON on stdout, or a table on stderr after the live text."""
    if as_json:
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
        return
    from rich.table import Table

    if result.text:
        sys.stdout.write("\n")
    for call in result.tool_calls:
        sys.stdout.write(f"[tool call] {call['name']}({call['arguments']})\n")
    sys.stdout.flush()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Status", f"HTTP {result.status}" + ("" if result.stream else " (not streamed)"))
    if result.ttft_s is not None:
        table.add_row("First token", f"{result.ttft_s * 1000:.0f} ms")
    table.add_row("Total", f"{result.total_s * 1000:.0f} ms")
    table.add_row("Chunks", str(result.chunks))
    if result.chars_per_s is not None:
        table.add_row("Speed", f"{result.chars_per_s:.0f} chars/s")
    if result.finish_reason:
        table.add_row("Finish", result.finish_reason)
    console.print(table)
    for violation in result.violations:
        console.print(f"[bold red]Protocol violation:[/] {violation}")
    if result.ok:
        console.print("[bold green]OK[/]: the reply is what Vapi expects.")
    else:
        console.print("[bold red]FAILED[/]: Vapi would not play this reply correctly.")
