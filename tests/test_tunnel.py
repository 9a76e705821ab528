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
    assert (isolated_env / "ngrok.yml").exists(), "the agent's config is in the bridge's home"
    assert not (isolated_env.parent / "user" / ".config" / "ngrok").exists()


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
    ({"NGROK_AUTHTOKEN": "bad-token"}, [], "ERR_NGROK_105", "configure-key --ngrok"),
    (
        {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_MODE": "session_limit"},
        [],
        "ERR_NGROK_108",
        "Stop the other ngrok agent",
    ),
    (
        # The agent exits before pyngrok reads its error line; the bridge reads it after.
        {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_MODE": "session_limit_read_late"},
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
        assert serve.stdout_line() == f"http://127.0.0.1:{port}", "stdout: the URL that works"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert run_cli("test", "--url", f"http://127.0.0.1:{port}").returncode == 0
        assert serve.stop() == 0
    assert "Traceback" not in serve.stderr
    assert not any(process_alive(pid) for pid in agent_pids(pidfile))


def test_missing_agent_path_is_explained(tmp_path: Path) -> None:
    port = free_port()
    args = ("--demo", "--port", str(port), "--ngrok-path", str(tmp_path / "nope"))
    with Serve(*args, env={"NGROK_AUTHTOKEN": TOKEN}) as serve:
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line)
        assert "No ngrok agent at" in line
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert serve.stop() == 0


def offline_env(**extra: str) -> dict[str, str]:
    """No ngrok on PATH, and every download refused on loopback (never the real network)."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {"PATH": os.path.dirname(os.__file__), "NO_PROXY": "", "no_proxy": ""}
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env[name] = proxy
    return {**env, **extra}


def test_no_agent_and_no_network_still_serves_locally(tmp_path: Path, isolated_env: Path) -> None:
    """No ngrok anywhere and downloads fail: pyngrok's install is refused on loopback."""
    port = free_port()
    with Serve("--demo", "--port", str(port), env=offline_env(NGROK_AUTHTOKEN=TOKEN)) as serve:
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line, timeout=30)
        assert "not installed and could not be downloaded" in line
        # The fix is the next line of the same message: wait for it, it may not be read yet.
        serve.wait_stderr(lambda line: "--ngrok-path" in line)
        download = serve.wait_stderr(lambda line: "Downloading the ngrok agent" in line)
        assert str(isolated_env) in download, "the agent is downloaded into the bridge's home"
        assert serve.stdout_line() == f"http://127.0.0.1:{port}", "stdout: the URL that works"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert serve.stop() == 0
    assert not (tmp_path / "user" / ".config" / "ngrok").exists(), "wrote to the user's ngrok dir"


@pytest.mark.parametrize("agent_args", [False, True])
def test_no_token_means_no_agent_and_no_download(
    agent: Path, pidfile: Path, tmp_path: Path, agent_args: bool
) -> None:
    """`serve --demo` stays offline: without a token the agent could only fail (ERR_NGROK_4018)."""
    port = free_port()
    args = ["--ngrok-path", str(agent)] if agent_args else []
    env = offline_env(FAKE_NGROK_PIDFILE=str(pidfile))
    with Serve("--demo", "--port", str(port), *args, env=env) as serve:
        assert serve.stdout_line() == f"http://127.0.0.1:{port}"
        line = serve.wait_stderr(lambda line: "Tunnel not opened" in line)
        assert "needs an ngrok auth token" in line
        serve.wait_stderr(lambda line: "Still serving locally" in line)
        assert "dashboard.ngrok.com" in serve.stderr and "configure-key --ngrok" in serve.stderr
        assert serve.stop() == 0
    assert "Downloading" not in serve.stderr and "Traceback" not in serve.stderr
    assert agent_pids(pidfile) == [], "the agent was started without a token"
    assert not (tmp_path / "user" / ".config" / "ngrok").exists(), "wrote to the user's ngrok dir"


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
