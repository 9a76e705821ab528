"""Custom LLM servers that get Vapi's protocol wrong, for ``vapi-bridge test`` to catch.

:class:`ScriptedServer` answers every POST with bytes a test chose (any status, content type
and body, however malformed) and records each request line, so a test can also play a proxy.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BROKEN_STREAM = (
    "event: message\n"
    'data: {"id":"x","object":"chat.completion.chunk","created":1.5,"model":"m",'
    '"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":null}\n\n'
    "data: not json\n\n"
    'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c","function":{"name":"f"}}]},'
    '"finish_reason":null}]}\n\n'
    'data: {"error": {"message": "boom"}}\n\n'
)


def chunk(delta: Any, finish: Any = None, **extra: Any) -> dict[str, Any]:
    """A well-formed ``chat.completion.chunk`` around ``delta``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1771518114,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def completion(message: Any, finish: Any = "stop") -> dict[str, Any]:
    """A well-formed non-streamed ``chat.completion`` around ``message``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1771518114,
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def sse_body(*events: Any, done: bool = True) -> bytes:
    """A stream: a ``str`` is written as raw lines, anything else as one ``data:`` event."""
    parts = [e if isinstance(e, str) else "data: " + json.dumps(e) for e in events]
    if done:
        parts.append("data: [DONE]")
    return "".join(part + "\n\n" for part in parts).encode()


@dataclass
class Answer:
    """What the server sends back to every POST; ``gap`` paces the body's SSE events."""

    body: bytes = b""
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    gap: float = 0.0


class ScriptedServer:
    """Answers each POST with :attr:`answer`; :attr:`requests` holds each request target."""

    def __init__(self, answer: Answer | None = None, host: str = "127.0.0.1") -> None:
        self.answer = answer or Answer()
        self.requests: list[str] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self._server = server_class((host, 0), self._handler())
        self._server.daemon_threads = True
        name = f"[{host}]" if ":" in host else host
        self.url = f"http://{name}:{self._server.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                scripted.requests.append(self.path)
                answer = scripted.answer
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not answer.gap:
                    self.wfile.write(answer.body)
                    return
                for i, event in enumerate(answer.body.split(b"\n\n")[:-1]):
                    if i:
                        time.sleep(answer.gap)
                    self.wfile.write(event + b"\n\n")

        return Handler

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def broken_server() -> Iterator[str]:
    """A server whose stream breaks most rules; yields its base URL."""
    answer = Answer(BROKEN_STREAM.encode(), content_type="application/json")
    with ScriptedServer(answer) as server:
        yield server.url


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
