"""One state file per running bridge; stale ones (after ``kill -9``) found and cleared."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Serve, process_alive, run_cli, write_fake_agent
from vapi_bridge import keystore, liveness, state
from vapi_bridge.errors import ConfigError, ProbeError

TOKEN = "2fakeTokenForTests_abcdefghijklmnop"


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with the bridge (it waits on its stdin)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield proc
    proc.kill()
    proc.wait(10)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def running(home: Path) -> list[state.Record]:
    return [entry for _, entry in state.records(home) if entry.running()]


def test_identity_names_one_live_process(bystander: subprocess.Popen[bytes]) -> None:
    mine = liveness.identity(os.getpid())
    assert mine is not None and mine == liveness.identity(os.getpid())
    assert liveness.identity(bystander.pid) not in (None, mine)
    assert liveness.identity(dead_pid()) is None


def test_terminate_leaves_a_process_with_another_identity_alone(
    bystander: subprocess.Popen[bytes],
) -> None:
    assert not liveness.terminate(bystander.pid, "a process that ran before this one")
    assert bystander.poll() is None
    recorded = liveness.identity(bystander.pid)
    assert recorded is not None and liveness.terminate(bystander.pid, recorded)
    assert bystander.wait(5) is not None


def test_target_picks_the_one_running_bridge_and_refuses_to_guess(
    isolated_env: Path, bystander: subprocess.Popen[bytes]
) -> None:
    home = isolated_env
    assert state.target(None, False, None, {}, home)[0] == state.DEFAULT_URL
    state.write(
        home,
        state.record(
            pid=os.getpid(),
            local_url="http://127.0.0.1:5001",
            public_url=None,
            secret="first-key",
            agent_pid=None,
        ),
    )
    assert state.target(None, False, None, {}, home) == ("http://127.0.0.1:5001", "first-key")
    with pytest.raises(ConfigError, match="No running bridge with a tunnel"):
        state.target(None, True, None, {}, home)
    state.write(
        home,
        state.record(
            pid=bystander.pid,
            local_url="http://127.0.0.1:5002",
            public_url="https://b.example",
            secret="second-key",
            agent_pid=None,
        ),
    )
    with pytest.raises(ConfigError) as several:
        state.target(None, False, None, {}, home)
    text = several.value.cli_message()
    for expected in (
        "2 bridges are running",
        f"pid {os.getpid()}",
        f"pid {bystander.pid}",
        "http://127.0.0.1:5001",
        "https://b.example",
        "--url",
    ):
        assert expected in text
    assert state.target(None, True, None, {}, home) == ("https://b.example", "second-key")
    # A URL given: the key of the bridge at that address, never another bridge's key.
    assert state.target("http://127.0.0.1:5002/chat/completions", False, None, {}, home)[1] == (
        "second-key"
    )
    keystore.update(home, bridge_secret="stored-key")
    assert state.target("http://elsewhere.example", False, None, {}, home)[1] == "stored-key"
    assert state.target("http://[::1", False, None, {}, home) == ("http://[::1", "stored-key")
    assert state.target(None, True, "flag-key", {}, home)[1] == "flag-key"


def test_target_says_a_dead_bridge_is_not_running(isolated_env: Path) -> None:
    gone = state.Record(pid=dead_pid(), local_url="http://127.0.0.1:5003", identity="x")
    state.write(isolated_env, gone)
    for public in (False, True):
        with pytest.raises(ProbeError, match="not running") as error:
            state.target(None, public, None, {}, isolated_env)
        assert str(gone.pid) in error.value.message and "--url" in error.value.hint
    url, _ = state.target("http://127.0.0.1:5003", False, None, {}, isolated_env)
    assert url == "http://127.0.0.1:5003", "an explicit URL is tested whatever the state says"


def test_a_reused_pid_is_not_the_bridge_and_its_agent_pid_is_left_alone(
    isolated_env: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """kill -9, then the bridge's and the agent's pids went to unrelated processes."""
    stale = state.Record(
        pid=bystander.pid,
        local_url="http://127.0.0.1:5004",
        identity="the bridge that ran before",
        agent_pid=bystander.pid,
        agent_identity="the agent that ran before",
    )
    file = state.write(isolated_env, stale)
    assert not stale.running()
    notes: list[str] = []
    state.clear_stale(isolated_env, notes.append)
    assert bystander.poll() is None, "an unrelated process was signalled"
    assert not file.exists()
    (note,) = notes
    assert f"pid {bystander.pid}" in note and "stopped the ngrok agent" not in note


def test_legacy_state_file_of_a_dead_bridge_is_removed(isolated_env: Path) -> None:
    legacy = isolated_env / state.LEGACY_NAME
    keystore.write_private(
        legacy,
        f'{{"pid": {dead_pid()}, "local_url": "http://x", "public_url": null, "secret": "old"}}\n',
    )
    notes: list[str] = []
    state.clear_stale(isolated_env, notes.append)
    assert not legacy.exists() and len(notes) == 1


def test_two_bridges_keep_their_own_state(isolated_env: Path) -> None:
    with (
        Serve("--demo", "--no-tunnel", "--port", "0") as first,
        Serve("--demo", "--no-tunnel", "--port", "0") as second,
    ):
        urls = {first.stdout_line(), second.stdout_line()}
        first.wait_stderr(lambda line: "Try it" in line)
        second.wait_stderr(lambda line: "Try it" in line)
        assert {entry.local_url for entry in running(isolated_env)} == urls
        ambiguous = run_cli("test")
        assert ambiguous.returncode == 2 and "2 bridges are running" in ambiguous.stderr
        assert str(first.proc.pid) in ambiguous.stderr and "--url" in ambiguous.stderr
        assert "Traceback" not in ambiguous.stderr
        assert first.stop() == 0
        (left,) = running(isolated_env)
        assert left.pid == second.proc.pid, "stopping one bridge removed the other's state"
        result = run_cli("test")
        assert result.returncode == 0, result.stderr
        assert second.stop() == 0
    assert state.records(isolated_env) == []


@pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")
def test_after_kill_9_test_says_not_running_and_the_next_start_stops_the_agent(
    tmp_path: Path, isolated_env: Path
) -> None:
    agent = write_fake_agent(tmp_path)
    pidfile = tmp_path / "agent.pids"
    env = {"NGROK_AUTHTOKEN": TOKEN, "FAKE_NGROK_PIDFILE": str(pidfile)}
    args = ("--demo", "--port", "0", "--ngrok-path", str(agent))
    try:
        with Serve(*args, env=env) as killed:
            killed.stdout_line()
            killed.wait_stderr(lambda line: "Try it" in line)
            killed.proc.kill()
            killed.proc.wait(10)
        (old_agent,) = [int(pid) for pid in pidfile.read_text().split()]
        assert process_alive(old_agent), "precondition: kill -9 leaves the agent running"
        (file, stale), *_ = state.records(isolated_env)
        assert stale.pid == killed.proc.pid and stale.agent_pid == old_agent
        for extra in ((), ("--public",)):
            result = run_cli("test", *extra)
            assert result.returncode == 1 and "not running" in result.stderr, result.stderr
            assert "Could not connect" not in result.stderr and "Traceback" not in result.stderr
        with Serve(*args, env=env) as again:
            again.stdout_line()
            note = again.wait_stderr(lambda line: "stopped without cleaning up" in line)
            assert f"pid {killed.proc.pid}" in note and f"(pid {old_agent})" in note
            assert not process_alive(old_agent) and not file.exists()
            assert [entry.pid for entry in running(isolated_env)] == [again.proc.pid]
            assert again.stop() == 0
    finally:
        for pid in [int(pid) for pid in pidfile.read_text().split()] if pidfile.exists() else []:
            if process_alive(pid):
                os.kill(pid, 9)
