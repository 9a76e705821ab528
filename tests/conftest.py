"""Shared fixtures: an isolated environment, the fake SambaNova, and a bridge on real sockets."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova
from vapi_bridge.app import create_app
from vapi_bridge.middleware import Middleware, build_middleware
from vapi_bridge.server import BridgeServer
from vapi_bridge.settings import Settings
from vapi_bridge.upstream import SambaNovaUpstream, Upstream

DATA = Path(__file__).resolve().parent / "data"
SECRET = "vb_test_secret_0123456789abcdef"
PRIVATE_PREFIXES = (
    "SAMBANOVA_",
    "SAMBA_NOVA_",
    "NGROK_",
    "VAPI_BRIDGE_",
    "PYNGROK_",
    "FAKE_NGROK_",
)


def vapi_request() -> dict[str, Any]:
    """A request as Vapi sends it on a phone call, secrets and personal data included."""
    data: dict[str, Any] = json.loads((DATA / "vapi_request.json").read_text())
    return data


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the developer's keys, config or ngrok setup."""
    for name in list(os.environ):
        if name.startswith(PRIVATE_PREFIXES):
            monkeypatch.delenv(name)
    home = tmp_path / "bridge-home"
    monkeypatch.setenv("VAPI_BRIDGE_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user" / ".config"))
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeSambaNova]:
    with FakeSambaNova() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeSambaNova) -> Iterator[FakeSambaNova]:
    fake_server.reset()
    yield fake_server
    fake_server.release.set()


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


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    logger = logging.getLogger("vapi_bridge")
    logger.addHandler(capture)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(old)


@dataclass
class RunningBridge:
    url: str
    secret: str | None
    server: BridgeServer
    upstream: Upstream
    middleware: Middleware

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


BridgeFactory = Callable[..., RunningBridge]


@pytest.fixture
def start_bridge(tmp_path: Path, fake: FakeSambaNova) -> Iterator[BridgeFactory]:
    """Start bridges in this process on an ephemeral port, stopped after the test."""
    running: list[RunningBridge] = []

    def start(upstream: Upstream | None = None, **overrides: Any) -> RunningBridge:
        settings = replace(
            Settings(home=tmp_path / "bridge-home", port=0, secret=SECRET, tunnel=False),
            **overrides,
        )
        if upstream is None:
            upstream = SambaNovaUpstream(
                api_key="test-key",
                base_url=fake.base_url,
                first_token_timeout=settings.upstream_timeout,
            )
        middleware = build_middleware(settings)
        app = create_app(
            settings, upstream, prepare=middleware.prepare, on_reply=middleware.on_reply
        )
        server = BridgeServer(app, "127.0.0.1", 0)
        server.start()
        url = f"http://127.0.0.1:{server.port}"
        bridge = RunningBridge(url, settings.secret, server, upstream, middleware)
        running.append(bridge)
        return bridge

    yield start
    for bridge in running:
        bridge.server.stop(grace=0.5)
        bridge.upstream.close()
        bridge.middleware.close()


@pytest.fixture
def bridge(start_bridge: BridgeFactory) -> RunningBridge:
    return start_bridge()


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body strictly: only ``data:`` lines, JSON or [DONE]."""
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[6:]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def cli(*args: str) -> list[str]:
    """The command line to run the CLI the way a user would, in a subprocess."""
    return [sys.executable, "-m", "vapi_bridge", *args]
