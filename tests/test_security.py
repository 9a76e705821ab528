"""Nobody gets in without the key, nothing secret comes out, and risky setups say so loudly."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import SECRET, LogCapture, RunningBridge, vapi_request
from tests.process import Serve, write_fake_agent
from vapi_bridge import keystore

BYPASSES = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": f"Bearer {SECRET[:-1]}"},
    {"Authorization": f"Bearer {SECRET}x"},
    {"Authorization": f"Bearer x{SECRET}"},
    {"Authorization": f"Bearer {SECRET.upper()}"},
    {"Authorization": f"Bearer {SECRET[:10]} {SECRET[10:]}"},
    {"Authorization": f"Bearer\t{SECRET}"},
    {"Authorization": f"Token {SECRET}"},
    {"Authorization": f"Basic {SECRET}"},
    {"X-Api-Key": SECRET},
    {"Api-Key": SECRET},
    {"X-Vapi-Secret": SECRET},
    {"Cookie": f"key={SECRET}"},
]


@pytest.mark.parametrize("headers", BYPASSES)
@pytest.mark.parametrize("path", ["/chat/completions", "/v1/models"])
def test_auth_bypass_attempts_fail(
    bridge: RunningBridge, fake: FakeSambaNova, headers: dict[str, str], path: str
) -> None:
    method = "POST" if "chat" in path else "GET"
    response = httpx.request(method, bridge.url + path, json=vapi_request(), headers=headers)
    assert response.status_code == 401
    assert SECRET not in response.text
    assert not fake.requests


@pytest.mark.parametrize("query", ["api_key", "key", "token", "access_token"])
def test_key_in_query_string_is_not_accepted(bridge: RunningBridge, query: str) -> None:
    response = httpx.post(f"{bridge.url}/chat/completions?{query}={SECRET}", json=vapi_request())
    assert response.status_code == 401


def test_the_server_header_gives_away_no_versions(bridge: RunningBridge) -> None:
    """The tunnel makes the bridge public: its replies do not say which werkzeug and Python
    versions answer (a scanner's first question)."""
    for response in (
        httpx.get(bridge.url + "/health"),
        httpx.post(bridge.url + "/chat/completions", json=vapi_request()),
        bridge.post(vapi_request()),
    ):
        assert response.headers["server"] == "vapi-bridge", response.headers


def test_error_bodies_and_logs_echo_no_request_values(
    bridge: RunningBridge, logs: LogCapture
) -> None:
    marker = "sk-user-pasted-secret-0000"
    bodies = [
        {"messages": [{"role": "user", "content": "hi"}], "temperature": marker},
        {"messages": [{"role": marker, "content": "hi"}]},
        {"messages": marker},
        {"messages": [{"role": "user", "content": "hi"}], "tool_choice": marker},
    ]
    for body in bodies:
        response = bridge.post(body)
        assert response.status_code == 400
        assert marker not in response.text
    bridge.post(b'{"messages": "' + marker.encode() + b'"')
    logs.wait_for(lambda line: "invalid_json" in line)
    assert marker not in logs.text


def test_upstream_never_sees_the_bridge_key(bridge: RunningBridge, fake: FakeSambaNova) -> None:
    bridge.post(vapi_request())
    assert SECRET not in json.dumps(fake.last.headers) + json.dumps(fake.last.body)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_secret_files_are_private_even_over_a_loose_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    config = home / "config.json"
    config.write_text("{}")
    config.chmod(0o644)
    keystore.update(home, sambanova_api_key="sk-123")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not [p for p in home.iterdir() if p.name.startswith(".config")], "no temp left"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_home_made_for_the_run_file_alone_is_private(tmp_path: Path) -> None:
    """Keys from the environment, no config file: the home is first made as the parent of
    ``run/``, and is as private as the folder it holds."""
    home = tmp_path / "new" / "home"
    keystore.write_private(home / "run" / "123.json", "{}")
    for folder in (tmp_path / "new", home, home / "run"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_warnings_for_wide_listening_and_no_auth() -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0", "--host", "0.0.0.0", "--no-auth") as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "WARNING: listening on 0.0.0.0" in line)
        serve.wait_stderr(lambda line: "WARNING: anyone who finds this bridge" in line)
        assert serve.stop() == 0


def test_no_auth_with_a_tunnel_warns_about_the_public_internet(tmp_path: Path) -> None:
    agent = write_fake_agent(tmp_path)
    env = {"NGROK_AUTHTOKEN": "2fakeTokenForTests_abcdefghijklmnop"}
    with Serve("--demo", "--port", "0", "--no-auth", "--ngrok-path", str(agent), env=env) as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "on the public internet" in line)
        assert "none: auth is off" in serve.stderr
        assert serve.stop() == 0


def test_log_injection_through_the_path_is_neutralised(
    bridge: RunningBridge, logs: LogCapture
) -> None:
    httpx.post(bridge.url + "/x%0a12:00:00%20POST%20/chat/completions%20200%20forged")
    line = logs.wait_for(lambda line: " 404 " in line)
    assert "\n" not in line and "/x?12:00:00?POST" in line


@pytest.mark.parametrize("secret", ["", "   ", "short"])
def test_weak_secret_is_refused_at_start(secret: str) -> None:
    from tests.process import run_cli

    result = run_cli("serve", "--demo", "--no-tunnel", "--secret", secret)
    assert result.returncode == 2 and "at least 16 characters" in result.stderr
    assert "Traceback" not in result.stderr
