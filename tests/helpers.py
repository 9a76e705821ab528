"""Helpers the tests share: the recorded Vapi request, a running bridge, log capture, SSE.

Test modules import these from here (never from each other or from conftest); conftest.py
holds only fixtures.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.fakes.sambanova import FakeSambaNova, Script, chunk
from vapi_bridge import sse
from vapi_bridge.app import Bridge, bridge_of, create_app
from vapi_bridge.server import BridgeServer
from vapi_bridge.settings import Settings, overlay
from vapi_bridge.upstream import Upstream

if TYPE_CHECKING:
    from tests.process import Serve

DATA = Path(__file__).resolve().parent / "data"
SECRET = "vb_test_secret_0123456789abcdef"
# Values inside the recorded request that are secrets or personal data.
PRIVATE_VALUES = (
    "whsec_do_not_log_me_7Yc2",
    "twilio_secret_do_not_log_9Qx4",
    "+14155550123",
    "+14155550199",
    "Jordan Lee",
    "AC00000000000000000000000000000000",
)


def vapi_request() -> dict[str, Any]:
    """A request as Vapi sends it on a phone call, secrets and personal data included."""
    data: dict[str, Any] = json.loads((DATA / "vapi_request.json").read_text())
    return data


class LogCapture(logging.Handler):
    """Collects the bridge's log lines and lets a test wait for one (no sleeps)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        with self._changed:
            self.records.append(record)
            self.lines.append(text)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        with self._changed:
            found: list[str] = []

            def match() -> bool:
                found[:] = [line for line in self.lines if predicate(line)]
                return bool(found)

            assert self._changed.wait_for(match, timeout), f"no such log line in {self.lines}"
            return found[-1]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class RunningBridge:
    url: str
    secret: str | None
    server: BridgeServer
    bridge: Bridge

    def headers(self, secret: str | None = "default") -> dict[str, str]:
        key = self.secret if secret == "default" else secret
        return {"Authorization": f"Bearer {key}"} if key else {}

    def post(
        self, body: Any, path: str = "/chat/completions", timeout: float = 10, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        if isinstance(body, bytes | str):
            kwargs["content"] = body
        else:
            kwargs["json"] = body
        return httpx.post(self.url + path, headers=headers, timeout=timeout, **kwargs)

    def stop(self, grace: float = 0.5) -> None:
        self.server.stop(grace=grace)
        self.bridge.close(grace)


BridgeFactory = Callable[..., RunningBridge]


def bridge_settings(home: Path, base_url: str, **overrides: Any) -> Settings:
    """Settings for a bridge in front of the fake SambaNova at ``base_url``: auth on, no tunnel."""
    base = Settings(
        home=home, port=0, secret=(SECRET,), tunnel=False, api_key="test-key", base_url=base_url
    )
    return overlay(base, overrides, "test settings")


def run_bridge(settings: Settings, upstream: Upstream | None = None) -> RunningBridge:
    """A bridge built by the same factory as ``serve``, on an ephemeral loopback port."""
    app = create_app(settings, upstream=upstream)
    bridge = bridge_of(app)
    server = BridgeServer(app, "127.0.0.1", 0, bridge.end_live_turns)
    server.start()
    return RunningBridge(f"http://127.0.0.1:{server.port}", settings.bridge_key, server, bridge)


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body strictly: ``data:`` events, JSON or [DONE]; the one comment allowed
    is the bridge's mark on a reply it cut short (see :func:`sse_cut`)."""
    events: list[Any] = []
    for event in sse.events(response.text.split("\n"), comments=True):
        if event.comment is not None:
            assert event.comment.startswith(sse.CUT_PREFIX), event
            continue
        assert event.event == "", event
        events.append("[DONE]" if event.done else json.loads(event.data))
    return events


def text_of(chunks: list[Any]) -> str:
    """The text a stream's chunks carry (chunks without choices carry none)."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def sse_cut(response: httpx.Response) -> str | None:
    """Why the bridge cut this reply short, from its SSE comment; ``None`` for a whole reply."""
    for event in sse.events(response.text.split("\n"), comments=True):
        if event.comment is not None and event.comment.startswith(sse.CUT_PREFIX):
            return event.comment[len(sse.CUT_PREFIX) :]
    return None


@dataclass
class Listener:
    """A long stream read line by line in a thread, for shutdown tests."""

    url: str
    started: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)
    error: str | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.url + "/chat/completions",
                json={**vapi_request(), "model": "long"},
                headers={"Authorization": f"Bearer {SECRET}"},
                timeout=20,
            ) as response:
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except httpx.HTTPError as exc:
            self.error = exc.__class__.__name__
        finally:
            self.started.set()


def stop_during_streams(
    serve: Serve, urls: list[str], sig: str, group: bool = False
) -> list[Listener]:
    """Open a long stream to each URL, stop ``serve`` once all are flowing, collect them.

    With ``group``, the signal goes to the bridge's whole process group, as from a terminal.
    """
    listeners = [Listener(url) for url in urls]
    threads = [threading.Thread(target=li.run, daemon=True) for li in listeners]
    for thread in threads:
        thread.start()
    for listener in listeners:
        assert listener.started.wait(10) and listener.lines, listener.error
    assert serve.stop(sig, timeout=20, group=group) == 0
    for thread in threads:
        thread.join(10)
    return listeners


def assert_ended_cleanly_by_the_stop(listeners: list[Listener]) -> None:
    """Each stream ended with a finish chunk and [DONE], marked as cut by the shutdown."""
    for listener in listeners:
        assert listener.error is None, listener.error
        # The listener kept the non-blank lines; each event was one line and a blank.
        events = list(sse.events([p for line in listener.lines for p in (line, "")], comments=True))
        assert events[-1].done, "stream did not end cleanly"
        comments = [event.comment for event in events if event.comment is not None]
        assert comments == [f"{sse.CUT_PREFIX}shutdown"], comments
        chunks = [json.loads(e.data) for e in events if e.comment is None and not e.done]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert len(chunks) < 400, "the stream was cut short by the shutdown, not finished"


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """Everything up to and including ``end`` (and what came with it); each block is
    searched once, with the end of the one before it, however much has come."""
    received = bytearray()
    while True:
        block = sock.recv(65536)
        assert block, f"closed before {end!r}: {bytes(received[-200:])!r}"
        start = max(0, len(received) - len(end))
        received += block
        if received.find(end, start) != -1:
            return bytes(received)


def big_chunks(count: int, size: int) -> list[object]:
    return [
        chunk({"content": f"{i:04d}" + "a" * (size - 4), "role": "assistant"}) for i in range(count)
    ]


def stuck_client(
    url: str, secret: str | None, fake: FakeSambaNova, chunks: int, version: str = "HTTP/1.1"
) -> tuple[socket.socket, bytes]:
    """A client with a small receive buffer that asks the bridge at ``url`` for a reply of
    ``chunks`` chunks of 64 KiB, reads its head and then nothing: the socket and the head."""
    fake.push(Script(chunks=[*big_chunks(chunks, 64 * 1024), chunk({"content": ""}, "stop")]))
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(vapi_request()).encode()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.settimeout(30)
    stuck.connect((host, int(port)))
    stuck.sendall(
        f"POST /chat/completions {version}\r\nHost: bridge\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + (f"Authorization: Bearer {secret}\r\n".encode() if secret else b"")
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = read_until(stuck, b"\r\n\r\n")
    assert head.startswith(f"{version} 200".encode()), head[:100]
    return stuck, head


def read_to_end(sock: socket.socket) -> bytes:
    """What the socket still gives until the other end closes (or resets) it."""
    received = bytearray()
    try:
        while block := sock.recv(65536):
            received += block
    except ConnectionResetError:
        pass
    return bytes(received)


def stop_under_a_stuck_client(serve: Serve, fake: FakeSambaNova, version: str = "HTTP/1.1") -> None:
    """Stop a bridge (SIGTERM, grace past) while a client reads nothing of a long reply: the
    reply is cut (no ``[DONE]``), its turn logged as a shutdown, and no traceback printed."""
    stuck, _ = stuck_client(serve.stdout_line(), SECRET, fake, 64, version)
    with stuck:
        assert serve.stop("SIGTERM") == 0
        rest = read_to_end(stuck)
    assert sse.DONE not in rest, "the reply was cut, not finished"
    assert "outcome=shutdown" in serve.wait_stderr(lambda line: "POST /chat/completions" in line)
    assert "Traceback" not in serve.stderr


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition nothing can notify us of (another process's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cli(*args: str) -> list[str]:
    """The command line to run the CLI the way a user would, in a subprocess."""
    return [sys.executable, "-m", "vapi_bridge", *args]
