"""Fixtures: an isolated environment, the fake SambaNova, and bridges on real sockets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import BridgeFactory, LogCapture, RunningBridge, bridge_settings, run_bridge
from vapi_bridge.upstream import Upstream

PRIVATE_PREFIXES = (
    "SAMBANOVA_",
    "SAMBA_NOVA_",
    "NGROK_",
    "VAPI_BRIDGE_",
    "VAPI_",
    "PYNGROK_",
    "FAKE_NGROK_",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the developer's keys, config or ngrok setup."""
    for name in list(os.environ):
        if name.startswith(PRIVATE_PREFIXES):
            monkeypatch.delenv(name)
    # PaaS conventions serve honours: a developer's own values must not move the tests' bridges.
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
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


@pytest.fixture
def start_bridge(tmp_path: Path, fake: FakeSambaNova) -> Iterator[BridgeFactory]:
    """Start bridges in this process on an ephemeral port, stopped after the test."""
    running: list[RunningBridge] = []

    def start(upstream: Upstream | None = None, **overrides: Any) -> RunningBridge:
        settings = bridge_settings(tmp_path / "bridge-home", fake.base_url, **overrides)
        bridge = run_bridge(settings, upstream)
        running.append(bridge)
        return bridge

    yield start
    for bridge in running:
        bridge.stop()


@pytest.fixture
def bridge(start_bridge: BridgeFactory) -> RunningBridge:
    return start_bridge()
