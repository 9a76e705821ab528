"""``serve`` with a tunnel: real pyngrok drives a fake ngrok agent executable on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.process import (
    Serve,
    bridge_state,
    closed_port,
    free_port,
    process_alive,
    run_cli,
    state_file,
    write_fake_agent,
)

TOKEN = "2fakeTokenForTests_abcdefghijklmnop"


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    return write_fake_agent(tmp_path)


@pytest.fixture
def pidfile(tmp_path: Path) -> Path:
    return tmp_path / "agent.pids"


def agent_pids(pidfile: Path) -> list[int]:
    return [int(line) for line in pidfile.read_text().split()] if pidfile.exists() else []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_public_url_reaches_the_bridge_and_stop_leaves_no_agent(
    agent: Path, pidfile: Path, isolated_env: Path, sig: str
) -> None:
    env = {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_PIDFILE": str(pidfile)}
    with Serve("--demo", "--port", "0", "--ngrok-path", str(agent), env=env) as serve:
        public = serve.stdout_line()
        assert public.startswith("http://127.0.0.1:")
        serve.wait_stderr(lambda line: "Custom LLM URL" in line)
        assert "Vapi appends /chat/completions" in serve.stderr
        state = bridge_state(isolated_env, serve)
        assert state["public_url"] == public and public != state["local_url"]
        assert state["agent_pid"] == agent_pids(pidfile)[0]
        result = run_cli("test", "--public", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["url"] == public + "/chat/completions"
        assert httpx.get(public + "/health").json()["status"] == "ok"
        (pid,) = agent_pids(pidfile)
        assert process_alive(pid)
        assert serve.stop(sig) == 0
    assert not process_alive(pid), "the ngrok agent outlived the bridge"
    assert not state_file(isolated_env, serve).exists()
    assert TOKEN not in serve.stderr


def test_token_is_not_on_the_agent_command_line(agent: Path, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    wrapper = tmp_path / "ngrok-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {argv_file}\nexec {agent} "$@"\n')
    wrapper.chmod(0o755)
    with Serve(
        "--demo", "--port", "0", "--ngrok-path", str(wrapper), env={"NGROK_AUTHTOKEN": TOKEN}
    ) as serve:
        serve.stdout_line()
        assert serve.stop() == 0
    argv = argv_file.read_text()
    assert argv.startswith("start --none --log stdout") and TOKEN not in argv


def test_stored_token_and_domain_are_used(agent: Path, isolated_env: Path) -> None:
    assert run_cli("configure-key", "--ngrok", "--stdin", stdin=TOKEN + "\n").returncode == 0
    with Serve(
        "--demo", "--port", "0", "--ngrok-path", str(agent), "--domain", "bridge.example.ngrok.app"
    ) as serve:
        public = serve.stdout_line()
        assert httpx.get(public + "/health").status_code == 200
        assert serve.stop() == 0


FAILURES = [
    ({}, [], "ERR_NGROK_4018", "configure-key --ngrok"),
    ({"NGROK_AUTHTOKEN": "bad-token"}, [], "ERR_NGROK_105", "configure-key --ngrok"),
    (
        {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_MODE": "session_limit"},
        [],
        "ERR_NGROK_108",
        "Stop the other ngrok agent",
    ),
    (
        {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_MODE": "url_online"},
        ["--domain", "taken.ngrok.app"],
        "ERR_NGROK_334",
        "drop --domain",
    ),
    (
        {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_MODE": "hang"},
        ["--tunnel-timeout", "1"],
        "not ready within 1s",
        "--no-tunnel",
    ),
]


@pytest.mark.parametrize(("env", "args", "cause", "fix"), FAILURES)
def test_tunnel_failure_is_explained_and_local_serving_goes_on(
    agent: Path, pidfile: Path, env: dict[str, str], args: list[str], cause: str, fix: str
) -> None:
    port = free_port()
    env = {**env, "FAKE_NGROK_PIDFILE": str(pidfile)}
    with Serve("--demo", "--port", str(port), "--ngrok-path", str(agent), *args, env=env) as serve:
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line)
        assert cause in line
        serve.wait_stderr(lambda line: "Still serving locally" in line)
        assert fix in serve.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert run_cli("test", "--url", f"http://127.0.0.1:{port}").returncode == 0
        assert serve.stop() == 0
    assert "Traceback" not in serve.stderr
    assert not any(process_alive(pid) for pid in agent_pids(pidfile))


def test_missing_agent_path_is_explained(tmp_path: Path) -> None:
    port = free_port()
    with Serve("--demo", "--port", str(port), "--ngrok-path", str(tmp_path / "nope")) as serve:
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line)
        assert "No ngrok agent at" in line
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert serve.stop() == 0


def test_no_agent_and_no_network_still_serves_locally(tmp_path: Path) -> None:
    """No ngrok anywhere and downloads fail: pyngrok's install is refused on loopback."""
    port = free_port()
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {
        "PATH": os.path.dirname(os.__file__),
        "https_proxy": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "HTTP_PROXY": proxy,
        "NGROK_AUTHTOKEN": TOKEN,
    }
    with Serve("--demo", "--port", str(port), env=env) as serve:
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line, timeout=30)
        assert "not installed and could not be downloaded" in line
        assert "--ngrok-path" in serve.stderr and "Downloading the ngrok agent" in serve.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert serve.stop() == 0
    assert serve.out.empty(), "stdout carries only the URL, and there is none"


def test_pyngrok_wrapper_on_path_is_not_taken_for_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vapi_bridge.tunnel import find_agent

    wrappers, real = tmp_path / "wrappers", tmp_path / "real"
    wrappers.mkdir()
    real.mkdir()
    wrapper = wrappers / "ngrok"
    wrapper.write_text("#!/usr/bin/python3\nfrom pyngrok.ngrok import main\nmain()\n")
    wrapper.chmod(0o755)
    agent = write_fake_agent(real)
    monkeypatch.setenv("PATH", str(wrappers))
    assert find_agent(None) is None
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{real}")
    assert find_agent(None) == str(agent)
