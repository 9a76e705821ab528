"""SIGTERM with streams in flight: every stream ends cleanly, the process exits, no agent left."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, vapi_request
from tests.fakes.sambanova import FakeSambaNova
from tests.process import Serve, bridge_state, process_alive, write_fake_agent


@dataclass
class Listener:
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
    for listener in listeners:
        assert listener.error is None, listener.error
        assert listener.lines[-1] == "data: [DONE]", "stream did not end cleanly"
        chunks = [json.loads(line[6:]) for line in listener.lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert len(chunks) < 400, "the stream was cut short by the shutdown, not finished"


def tunnel_env(fake: FakeSambaNova, tmp_path: Path) -> tuple[dict[str, str], list[str], Path]:
    """Environment and ``serve`` arguments for a bridge on the fake SambaNova behind the fake
    ngrok agent, and the file where the agent records its pid."""
    agent = write_fake_agent(tmp_path)
    pidfile = tmp_path / "pids"
    env = {
        "SAMBANOVA_API_KEY": "test-key",
        "SAMBANOVA_BASE_URL": fake.base_url,
        "NGROK_AUTHTOKEN": "2fakeTokenForTests_abcdefghijklmnop",
        "FAKE_NGROK_PIDFILE": str(pidfile),
    }
    args = ["--port", "0", "--secret", SECRET, "--ngrok-path", str(agent)]
    return env, [*args, "--shutdown-grace", "0.5"], pidfile


def agents_left(pidfile: Path) -> list[int]:
    pids = [int(pid) for pid in pidfile.read_text().split()] if pidfile.exists() else []
    return [pid for pid in pids if process_alive(pid)]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_under_load_ends_every_stream_cleanly(
    fake: FakeSambaNova, tmp_path: Path, isolated_env: Path, sig: str
) -> None:
    env, args, pidfile = tunnel_env(fake, tmp_path)
    with Serve(*args, env=env) as serve:
        public = serve.stdout_line()
        local = bridge_state(isolated_env, serve)["local_url"]
        listeners = stop_during_streams(serve, [public] * 3 + [local] * 3, sig)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert agents_left(pidfile) == []
    assert fake.wait_no_open_streams(5), "an upstream stream outlived the bridge"
    assert fake.abandoned >= 6


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_ctrl_c_to_the_process_group_keeps_the_tunnel_for_the_grace_period(
    fake: FakeSambaNova, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C signals every process of the foreground job, the agent included
    unless it runs in its own session; the agent must outlive the grace period."""
    env, args, pidfile = tunnel_env(fake, tmp_path)
    with Serve(*args, env=env, own_group=True) as serve:
        public = serve.stdout_line()
        listeners = stop_during_streams(serve, [public] * 6, "SIGINT", group=True)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert agents_left(pidfile) == [], "the ngrok agent outlived the bridge"
    assert "Traceback" not in serve.stderr
