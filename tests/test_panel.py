"""The start-up panel: what to paste into Vapi copies whole, and keys stay out of logs."""

from __future__ import annotations

import errno
import re
import socket
from pathlib import Path

import pytest

from tests.process import Serve, bridge_state, run_cli, state_file, write_fake_agent
from vapi_bridge import runner

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A terminal 56 columns wide, as rich detects it (stderr itself is a pipe in tests).
NARROW_TERMINAL = {"COLUMNS": "56", "TTY_COMPATIBLE": "1"}


def screen(serve: Serve) -> list[str]:
    return [ANSI.sub("", line) for line in serve.err_lines]


def test_key_copies_whole_from_a_narrow_terminal(isolated_env: Path) -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0", env=NARROW_TERMINAL) as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        key = bridge_state(isolated_env, serve)["secret"]
        assert len(key) > 40
        assert serve.stop() == 0
    lines = screen(serve)
    assert [line for line in lines if key in line] == [key], "the key alone on one line"
    assert not any(key[:12] in line and "│" in line for line in lines), "key inside the panel"
    assert all(len(line) <= 56 for line in lines if "│" in line or "╭" in line)


def test_public_url_copies_whole_and_try_it_suggests_the_public_test(
    tmp_path: Path, isolated_env: Path
) -> None:
    agent = write_fake_agent(tmp_path)
    env = {**NARROW_TERMINAL, "NGROK_AUTHTOKEN": "2fakeTokenForTests_abcdefghijklmnop"}
    with Serve("--demo", "--port", "0", "--ngrok-path", str(agent), env=env) as serve:
        public = serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        assert serve.stop() == 0
    lines = screen(serve)
    assert public in lines, "the URL to paste into Vapi, alone on its line"
    assert any("Vapi appends /chat/completions" in line for line in lines)
    assert "Try it: vapi-bridge test --public" in serve.stderr


def test_key_is_masked_when_stderr_is_not_a_terminal(isolated_env: Path) -> None:
    """A log collector never gets the key; the line says where to read it."""
    with Serve("--demo", "--no-tunnel", "--port", "0") as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        key = bridge_state(isolated_env, serve)["secret"]
        where = str(state_file(isolated_env, serve))
        assert run_cli("test").returncode == 0, "test still finds the key"
        assert serve.stop() == 0
    assert key not in serve.stderr
    (masked,) = [line for line in serve.err_lines if f"{key[:4]}...{key[-4:]}" in line]
    assert "masked" in masked and where in serve.stderr
    assert "Try it: vapi-bridge test " in serve.stderr and "--public" not in serve.stderr


@pytest.mark.parametrize(
    ("platform", "port", "airplay"),
    [("darwin", 5000, True), ("darwin", 5050, False), ("linux", 5000, False)],
)
def test_port_hint_mentions_airplay_only_where_it_holds_the_port(
    platform: str, port: int, airplay: bool
) -> None:
    hint = runner.listen_hint(port, platform)
    assert ("AirPlay" in hint) is airplay and "--port" in hint


def test_busy_port_hint_on_this_machine() -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0") as first:
        port = first.stdout_line().rsplit(":", 1)[1]
        result = run_cli("serve", "--demo", "--no-tunnel", "--port", port)
    assert result.returncode == 2 and "Cannot listen" in result.stderr
    assert "AirPlay" not in result.stderr and "Traceback" not in result.stderr


def test_a_host_that_is_not_this_machine_gets_a_host_hint() -> None:
    """192.0.2.1 (reserved for documentation) is no interface of this machine: the host is
    at fault, not a busy port."""
    result = run_cli("serve", "--demo", "--no-tunnel", "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 2 and "Cannot listen on 192.0.2.1" in result.stderr
    assert "--host must be an address of this machine" in result.stderr
    assert "Pick another port" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("error", "says"),
    [
        # A name that does not resolve (not tried for real: that would ask a DNS server), as
        # the resolver raises it and as socket.create_server re-raises it.
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "--host must be"),
        (
            OSError(socket.EAI_NONAME, "Name or service not known (while attempting to bind"),
            "--host must be",
        ),
        (OSError(errno.EACCES, "Permission denied"), "administrator rights"),
        (OSError(errno.EADDRINUSE, "Address already in use"), "Pick another port"),
    ],
)
def test_the_listen_hint_follows_the_error(error: OSError, says: str) -> None:
    assert says in runner.listen_hint(8080, "linux", exc=error)


def test_older_keys_from_the_environment_are_not_called_stored(isolated_env: Path) -> None:
    keys = "vb_new_key_0123456789abcdef,vb_old_key_0123456789abcdef"
    with Serve("--demo", "--no-tunnel", "--port", "0", env={"VAPI_BRIDGE_SECRET": keys}) as serve:
        serve.stdout_line()
        line = serve.wait_stderr(lambda text: "Also accepted" in text)
        assert serve.stop() == 0
    assert "1 older key(s)" in line and "VAPI_BRIDGE_SECRET" in line
