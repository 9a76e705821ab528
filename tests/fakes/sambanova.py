"""A fake SambaNova Cloud API on loopback, for the real ``sambanova`` SDK to talk to.

It speaks HTTP/1.1 with chunked streaming like the real service and replays the shapes it
was seen to send (values invented): ``role`` in every delta, ``logprobs: null``, an
empty-content finish chunk, a usage-only chunk with ``choices: []``, a float ``created`` in a
whole reply. Tests script the next answers (:meth:`FakeSambaNova.push`) or pick a
behaviour by model name (``fail-503``, ``slow``...) for concurrent runs, and then inspect what
arrived (:attr:`FakeSambaNova.requests`) and which streams the client abandoned.

Reasoning models are imitated by name (:func:`reasoning_script`), obeying the controls the way
the real ones do: ``gpt-oss*`` streams ``delta.reasoning`` with ``channel`` ("analysis", then
"final") and reasons as much as ``reasoning_effort`` asks (default medium); ``DeepSeek-R1*``,
``MiniMax-M*`` and ``QwQ*`` always think inline (``<think>…</think>`` at the start of the
content, split at awkward places); ``DeepSeek-V3.1``/``V3.2`` think only with
``chat_template_kwargs.enable_thinking: true`` and ``Qwen3*`` unless it is false. An ``rc/``
prefix (``rc/DeepSeek-R1``) moves the reasoning to ``delta.reasoning_content`` (vLLM's shape).
Words count as tokens: a reply that reaches ``max_tokens`` stops with ``finish_reason:
"length"``, mid-thought if the thinking took the whole budget.
"""

from __future__ import annotations

import collections
import json
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1771518114
REPLY = ["Sure", "! Let me check", " Tuesday for you."]
USAGE = {
    "prompt_tokens": 21,
    "completion_tokens": 41,
    "total_tokens": 62,
    "time_to_first_token": 0.0915,
    "completion_tokens_per_sec": 244.02,
}
GOOD_KEYS = {"test-key", "sk-test"}
MODEL_IDS = [
    "Meta-Llama-3.3-70B-Instruct",
    "gpt-oss-120b",
    "DeepSeek-R1-0528",
    "DeepSeek-V3.1",
    "MiniMax-M2.5",
    "Qwen3-32B",
]


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A SambaNova-shaped chunk: role in every delta, float-free here, logprobs null."""
    return {
        "choices": [{"delta": delta, "finish_reason": finish, "index": 0, "logprobs": None}],
        "created": CREATED,
        "id": "283ffbf5-591e-4187-9361-391602be5586",
        "model": "Meta-Llama-3.3-70B-Instruct",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fastcoe",
        **extra,
    }


def text_chunks(parts: list[str] = REPLY) -> list[Any]:
    out: list[Any] = [chunk({"content": p, "role": "assistant"}) for p in parts]
    out.append(chunk({"content": ""}, "stop"))
    out.append({**chunk({}), "choices": [], "usage": USAGE})
    return out


def tool_chunks(with_index: bool = True) -> list[Any]:
    """A streamed tool call; SambaNova has been seen to omit ``index``, so that is optional."""

    def call(**fields: Any) -> dict[str, Any]:
        return {"index": 0, **fields} if with_index else fields

    return [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    call(
                        id="call_abc",
                        type="function",
                        function={"name": "check_availability", "arguments": ""},
                    )
                ],
            }
        ),
        chunk({"tool_calls": [call(function={"arguments": '{"date": '})]}),
        chunk({"tool_calls": [call(function={"arguments": '"2026-12-01"}'})]}),
        chunk({"content": ""}, "tool_calls"),
    ]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that reset or hang up are part of the tests, not errors to print."""


@dataclass
class Script:
    """One scripted answer. ``kind``: stream, status, json, reset, hang."""

    kind: str = "stream"
    chunks: list[Any] = field(default_factory=text_chunks)
    gap: float = 0.0
    ttft: float = 0.0
    # After the headers, before the first chunk; the fake notices a client that leaves then.
    first_wait: float = 0.0
    end: str = "done"  # done | drop | stall | eof (no [DONE])
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class FakeSambaNova:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: collections.deque[Script] = collections.deque()
        self.abandoned = 0
        self.abandoned_event = threading.Event()
        self.open_streams = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._streams_changed = threading.Condition(self._lock)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> FakeSambaNova:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSambaNova:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def reset(self) -> None:
        self.requests.clear()
        self.scripts.clear()
        self.abandoned = 0
        self.abandoned_event.clear()
        self.release.clear()

    def wait_no_open_streams(self, timeout: float = 5.0) -> bool:
        """True once every stream the fake was sending has ended (finished or abandoned)."""
        with self._lock:
            return self._streams_changed.wait_for(lambda: self.open_streams == 0, timeout)

    @property
    def last(self) -> Received:
        return self.requests[-1]

    def _next_script(self, body: Any) -> Script:
        if self.scripts:
            return self.scripts.popleft()
        model = body.get("model", "") if isinstance(body, dict) else ""
        return script_for_model(
            str(model),
            stream=bool(isinstance(body, dict) and body.get("stream")),
            body=body if isinstance(body, dict) else None,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the default access log."""

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if self.path == "/stats":
                    with fake._lock:
                        stats = {
                            "open_streams": fake.open_streams,
                            "abandoned": fake.abandoned,
                            "requests": len(fake.requests),
                        }
                    self._json(200, stats)
                elif self.path.rstrip("/") != "/v1/models":
                    self._json(404, {"error": {"message": "not found", "code": "not_found"}})
                elif key == "no-card-key":
                    self._json(
                        402,
                        {
                            "error": {
                                "message": "Payment method required",
                                "code": "PAYMENT_METHOD_REQUIRED",
                            }
                        },
                    )
                elif key not in GOOD_KEYS:
                    self._json(
                        401,
                        {"error": {"message": "Invalid API key", "code": "invalid_authentication"}},
                    )
                else:
                    models = [{"id": m, "object": "model", "owned_by": "fake"} for m in MODEL_IDS]
                    self._json(200, {"object": "list", "data": models})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with fake._lock:
                    fake.requests.append(Received(self.path, dict(self.headers), body))
                    script = fake._next_script(body)
                self._answer(script)

            def _answer(self, script: Script) -> None:
                if script.kind == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                if script.kind == "hang":
                    fake.release.wait(10)
                    self.close_connection = True
                    return
                if script.kind in ("status", "json"):
                    body = script.body
                    if body is None:
                        body = json.loads(FIXTURE_RESPONSE)
                    self._json(script.status, body, script.headers)
                    return
                self._stream(script)

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, script: Script) -> None:
                time.sleep(script.ttft)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                for name, value in script.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.flush()
                with fake._lock:
                    fake.open_streams += 1
                try:
                    if script.first_wait and self._client_left(script.first_wait):
                        raise ConnectionResetError("the client left before the first token")
                    for i, item in enumerate(script.chunks):
                        if i and script.gap:
                            time.sleep(script.gap)
                        line = item if isinstance(item, str) else "data: " + json.dumps(item)
                        self._chunk((line + "\n\n").encode())
                    if script.end == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if script.end == "stall":
                        fake.release.wait(10)
                        self.close_connection = True
                        return
                    if script.end == "done":
                        self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    with fake._lock:
                        fake.abandoned += 1
                    fake.abandoned_event.set()
                    self.close_connection = True
                finally:
                    with fake._lock:
                        fake.open_streams -= 1
                        fake._streams_changed.notify_all()

            def _client_left(self, timeout: float) -> bool:
                """Wait up to ``timeout`` s; True as soon as the client closes the connection."""
                readable, _, _ = select.select([self.connection], [], [], timeout)
                if not readable:
                    return False
                try:
                    return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
                except OSError:
                    return True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler


def script_for_model(model: str, stream: bool, body: dict[str, Any] | None = None) -> Script:
    """Behaviour chosen by model name, so concurrent clients can each ask for their own."""
    if model.startswith("fail-"):
        status = int(model.removeprefix("fail-"))
        return Script(
            kind="status",
            status=status,
            body={"error": {"message": f"fake failure {status}", "code": "fake"}},
        )
    if model == "long":
        return Script(chunks=text_chunks(["word "] * 400), gap=0.02)
    if model.startswith("paced-"):
        # paced-<chunks>-<gap ms>[-<ttft ms>]: a fixed reply at a fixed rate, for load tests.
        count, gap_ms, *ttft_ms = model.split("-")[1:]
        ttft = int(ttft_ms[0]) / 1000 if ttft_ms else 0.0
        return Script(chunks=text_chunks(["tok "] * int(count)), gap=int(gap_ms) / 1000, ttft=ttft)
    if model == "drop":
        return Script(chunks=text_chunks()[:2], end="drop")
    if model.startswith("rl-"):
        # rl-<seconds>: a 429 asking to wait that long.
        return Script(
            kind="status",
            status=429,
            headers={"Retry-After": model.removeprefix("rl-")},
            body={"error": {"message": "rate limit", "code": "rate_limit_exceeded"}},
        )
    if model.startswith("slowfirst-"):
        # slowfirst-<ms>: headers at once, the first token only after <ms>.
        return Script(first_wait=int(model.removeprefix("slowfirst-")) / 1000)
    if model == "reset":
        return Script(kind="reset")
    if model.startswith("mix-"):
        # mix-<% 429>-<% stall>-<ttft ms>: a primary model under pressure, for bench/fallback.py.
        limited, stalled, delay = (int(part) for part in model.split("-")[1:])
        roll = random.uniform(0, 100)
        if roll < limited:
            return script_for_model("rl-1", stream)
        if roll < limited + stalled:
            return Script(first_wait=30)
        return Script(chunks=text_chunks(["tok "] * 40), gap=0.02, ttft=delay / 1000)
    if model.startswith("remaining-"):
        # remaining-<n>: a normal reply whose rate-limit headers say n requests remain.
        left = model.removeprefix("remaining-")
        headers = {"x-ratelimit-remaining-requests": left, "x-ratelimit-reset-requests": "30s"}
        return Script(headers=headers)
    if reasoning_family(model) is not None:
        return reasoning_script(model, body or {}, stream)
    if not stream:
        return Script(kind="json")
    return Script()


# --- reasoning models -------------------------------------------------------------------------

THOUGHTS = [
    "The caller asks about Tuesday.",
    " Check the calendar tool? No tool needed.",
    " Answer briefly, one sentence.",
]
LONG_THOUGHT = " Weigh option {} against the caller's constraints again."
EFFORT_STEPS = {"low": 1, "medium": len(THOUGHTS), "high": 48}
AWKWARD = (3, 5, 2, 11, 7, 1, 13, 4)  # chunk sizes that cut tags and words at odd places
REASONING_TOKENS_KEY = "completion_tokens_details"


def reasoning_family(model: str) -> str | None:
    """How the named model reasons: gpt-oss, always, hybrid-off, hybrid-on, or None."""
    name = model.removeprefix("rc/").lower()
    if name.startswith("gpt-oss"):
        return "gpt-oss"
    if name.startswith(("deepseek-r1", "minimax-m", "qwq")):
        return "always"
    if name.startswith(("deepseek-v3.1", "deepseek-v3.2")):
        return "hybrid-off"  # SambaNova and others document thinking as off by default
    if name.startswith("qwen3"):
        return "hybrid-on"  # Qwen3's template thinks unless enable_thinking is false
    return None


def thoughts_for(model: str, body: dict[str, Any]) -> list[str]:
    """The reasoning the model would produce for this request (empty when it would not think)."""
    family = reasoning_family(model)
    kwargs = body.get("chat_template_kwargs")
    thinking = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    if family == "gpt-oss":
        steps = EFFORT_STEPS.get(str(body.get("reasoning_effort") or "medium"), len(THOUGHTS))
        extra = [LONG_THOUGHT.format(i) for i in range(max(0, steps - len(THOUGHTS)))]
        return (THOUGHTS + extra)[:steps]
    if family == "always" or (family == "hybrid-off" and thinking is True):
        return list(THOUGHTS)
    if family == "hybrid-on" and thinking is not False:
        return list(THOUGHTS)
    return []


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def split_awkwardly(text: str, sizes: tuple[int, ...] = AWKWARD) -> list[str]:
    """``text`` cut into pieces of the given sizes, cycling: tags and words split anywhere."""
    pieces, i, k = [], 0, 0
    while i < len(text):
        pieces.append(text[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return pieces


def reasoning_script(model: str, body: dict[str, Any], stream: bool) -> Script:
    """The answer of a reasoning model, shaped like its family's, obeying its controls."""
    thoughts = thoughts_for(model, body)
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 1_000_000
    said: list[str] = []
    spent = 0
    finish = "stop"
    for kind, text in [("r", t) for t in thoughts] + [("c", t) for t in REPLY]:
        spent += _tokens(text)
        if spent > limit:
            finish = "length"
            break
        said.append(kind + text)
    reasoning = [t[1:] for t in said if t[0] == "r"]
    reply = [t[1:] for t in said if t[0] == "c"]
    thought_tokens = sum(_tokens(t) for t in reasoning)
    usage = {
        **USAGE,
        "completion_tokens": sum(_tokens(t[1:]) for t in said),
        REASONING_TOKENS_KEY: {"reasoning_tokens": thought_tokens},
    }
    family = reasoning_family(model)
    if model.startswith("rc/"):
        shape = "reasoning_content"
    elif family == "gpt-oss":
        shape = "reasoning"
    else:
        shape = "think"
    if shape == "think":
        text = "".join(reply)
        if thoughts:
            # A block cut by max_tokens is never closed, as with a real model.
            close = "\n</think>\n\n" if len(reasoning) == len(thoughts) else ""
            text = "<think>\n" + "".join(reasoning) + close + text
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply)}
        if shape == "think":
            message["content"] = text
        elif reasoning:
            message[shape] = "".join(reasoning)
        return Script(kind="json", body=_completion(model, message, finish, usage))
    if shape == "think":
        deltas = [{"role": "assistant", "content": piece} for piece in split_awkwardly(text)]
    else:
        channel = {"channel": "analysis"} if shape == "reasoning" else {}
        deltas = [{"role": "assistant", "content": "", shape: t, **channel} for t in reasoning]
        channel = {"channel": "final"} if shape == "reasoning" else {}
        deltas += [{"role": "assistant", "content": t, **channel} for t in reply]
    chunks: list[Any] = [chunk(d, model=model) for d in deltas]
    chunks.append(chunk({"content": ""}, finish, model=model))
    chunks.append({**chunk({}, model=model), "choices": [], "usage": usage})
    return Script(chunks=chunks)


def _completion(
    model: str, message: dict[str, Any], finish: str, usage: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(FIXTURE_RESPONSE)
    body["model"] = model
    body["choices"][0]["message"] = message
    body["choices"][0]["finish_reason"] = finish
    body["usage"] = usage
    return body


FIXTURE_RESPONSE = json.dumps(
    {
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": "Sure! Let me check Tuesday for you.", "role": "assistant"},
            }
        ],
        "created": 1737583288.6076705,
        "id": "83a7809d-e18f-44f9-9ab7-2bc494c6c661",
        "model": "Meta-Llama-3.3-70B-Instruct",
        "object": "chat.completion",
        "system_fingerprint": "fastcoe",
        "usage": {
            "completion_tokens": 9,
            "prompt_tokens": 43,
            "total_tokens": 52,
            "time_to_first_token": 0.131,
        },
    }
)


def main() -> None:
    """Run the fake on its own (benchmarks): prints its base URL, serves until killed."""
    import signal
    import sys

    fake = FakeSambaNova().start()
    sys.stdout.write(fake.base_url + "\n")
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    fake.stop()


if __name__ == "__main__":
    main()
