"""The CLI as a user runs it: subprocesses, exit codes, stdout versus stderr."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.fakes.sambanova import MODEL_IDS, FakeSambaNova
from tests.helpers import SECRET, cli
from tests.process import Serve, bridge_state, closed_port, run_cli, state_file


def assert_clean_failure(result: object, code: int = 1) -> str:
    """Non-zero exit, a cause and a fix, no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    err: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err and "->" in err
    return err


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("vapi-bridge 0.")
    out = run_cli("--help").stdout
    for command in ("serve", "test", "configure-key"):
        assert command in out


def test_serve_without_key_is_a_clear_error() -> None:
    err = assert_clean_failure(run_cli("serve", "--no-tunnel"), code=2)
    assert "No SambaNova API key" in err and "--demo" in err


def test_serve_demo_then_test_streams_live(isolated_env: Path) -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0") as serve:
        url = serve.stdout_line()
        assert url.startswith("http://127.0.0.1:")
        serve.wait_stderr(lambda line: "Try it" in line)
        state = state_file(isolated_env, serve)
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        result = run_cli("test")
        assert result.returncode == 0, result.stderr
        assert "vapi-bridge demo model" in result.stdout
        assert "First token" in result.stderr and "OK" in result.stderr
        assert serve.stop("SIGTERM") == 0
    assert not state.exists()
    assert "vapi-bridge stopped" in serve.stderr


def test_serve_with_fake_sambanova_and_test_json(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    with Serve("--no-tunnel", "--port", "0", "--secret", SECRET, env=env) as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        result = run_cli("test", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["text"] == "Sure! Let me check Tuesday for you."
        assert report["chunks"] == 4 and report["violations"] == []
        assert report["ttft_s"] > 0 and report["total_s"] >= report["ttft_s"]
        no_stream = json.loads(run_cli("test", "--json", "--no-stream").stdout)
        assert no_stream["ok"] and not no_stream["stream"]
        assert fake.last.body["max_tokens"] == 150 and "metadata" not in fake.last.body
        wrong = run_cli("test", "--secret", "wrong")
        assert "rejected the bridge key (HTTP 401)" in assert_clean_failure(wrong)
        failing = run_cli("test", "--model", "fail-503")
        assert failing.returncode == 1 and "Traceback" not in failing.stderr
        assert "the bridge spoke its apology" in " ".join(failing.stderr.split())
        assert serve.stop("SIGINT") == 0
        request_lines = [line for line in serve.err_lines if "POST /chat/completions" in line]
        assert len(request_lines) == 4
    assert SECRET not in serve.stderr, "stderr is not a terminal here: the key is masked"
    assert "test-key" not in serve.stderr


def test_serve_refuses_a_busy_port() -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0") as first:
        port = first.stdout_line().rsplit(":", 1)[1]
        result = run_cli("serve", "--demo", "--no-tunnel", "--port", port)
        assert "Cannot listen" in assert_clean_failure(result, code=2)


def test_configure_key_stores_privately(isolated_env: Path) -> None:
    result = run_cli("configure-key", "--stdin", "--no-verify", stdin="sk-abcdefghijklmnop1234\n")
    assert result.returncode == 0, result.stderr
    config = isolated_env / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(isolated_env.stat().st_mode) == 0o700
    assert json.loads(config.read_text())["sambanova_api_key"] == "sk-abcdefghijklmnop1234"
    assert "sk-abcdefghijklmnop1234" not in result.stdout + result.stderr
    assert "sk-a...1234" in result.stderr


def test_configure_key_verifies_against_sambanova(isolated_env: Path, fake: FakeSambaNova) -> None:
    base = ["configure-key", "--stdin", "--base-url", fake.base_url]
    good = run_cli(*base, stdin="test-key\n")
    assert good.returncode == 0 and f"{len(MODEL_IDS)} models available" in good.stderr
    bad = run_cli(*base, stdin="wrong-key-123456\n")
    assert "rejected this key (HTTP 401)" in assert_clean_failure(bad, code=2)
    unpaid = run_cli(*base, stdin="no-card-key\n")
    assert "payment method (HTTP 402)" in assert_clean_failure(unpaid, code=2)
    offline = run_cli(
        "configure-key",
        "--stdin",
        "--base-url",
        f"http://127.0.0.1:{closed_port()}/v1",
        stdin="test-key\n",
    )
    # The network's fault, not the configuration's: exit 1, as `models` and `assistants`.
    assert "--no-verify" in assert_clean_failure(offline, code=1)
    stored = json.loads((isolated_env / "config.json").read_text())
    assert stored["sambanova_api_key"] == "test-key", "failed checks stored nothing"


def test_configure_key_show_remove_and_precedence(isolated_env: Path) -> None:
    run_cli("configure-key", "--stdin", "--no-verify", stdin="stored-key-abcdefgh\n")
    token = "2abcdefghijklmnopqrstuvwxyz_0123456789"
    assert run_cli("configure-key", "--ngrok", "--stdin", stdin=token + "\n").returncode == 0
    shown = run_cli("configure-key", "--show").stdout
    assert "stor...efgh" in shown and "2abc...6789" in shown and token not in shown
    from_env = run_cli("configure-key", "--show", env={"SAMBANOVA_API_KEY": "env-key-0000000000"})
    assert "env-...0000" in from_env.stdout and "SAMBANOVA_API_KEY" in from_env.stdout
    assert run_cli("configure-key", "--remove").returncode == 0
    assert "sambanova_api_key" not in json.loads((isolated_env / "config.json").read_text())
    bad_token = run_cli("configure-key", "--ngrok", "--stdin", stdin="not a token\n")
    assert "ngrok auth token" in assert_clean_failure(bad_token, code=2)
    empty = run_cli("configure-key", "--stdin", "--no-verify", stdin="\n")
    assert "No SambaNova API key given" in assert_clean_failure(empty, code=2)


def test_new_bridge_key_rotates(isolated_env: Path) -> None:
    first = run_cli("configure-key", "--new-bridge-key", "--yes").stdout.strip()
    second = run_cli("configure-key", "--new-bridge-key", "--yes").stdout.strip()
    assert first.startswith("vb_") and second.startswith("vb_") and first != second
    assert json.loads((isolated_env / "config.json").read_text())["bridge_secret"] == second


def test_bridge_key_is_generated_once_and_reused(isolated_env: Path) -> None:
    keys = []
    for _ in range(2):
        with Serve("--demo", "--no-tunnel", "--port", "0") as serve:
            url = serve.stdout_line()
            serve.wait_stderr(lambda line: "Try it" in line)
            keys.append(bridge_state(isolated_env, serve)["secret"])
            response = httpx.post(
                url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            )
            assert response.status_code == 401
            serve.stop()
    assert keys[0] == keys[1] and len(keys[0]) > 40


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_corrupt_config_is_a_clear_error(isolated_env: Path) -> None:
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.json").write_text("{oops")
    result = run_cli("serve", "--demo", "--no-tunnel")
    assert "Cannot read the stored config" in assert_clean_failure(result, code=2)


def test_barge_in_prints_no_traceback(fake: FakeSambaNova) -> None:
    """A caller interrupting is normal life: one log line, nothing alarming on the terminal."""
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    with Serve("--no-tunnel", "--port", "0", "--secret", SECRET, env=env) as serve:
        url = serve.stdout_line()
        for _ in range(5):
            with httpx.stream(
                "POST",
                url + "/chat/completions",
                json={
                    "model": "long",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"Authorization": f"Bearer {SECRET}"},
            ) as response:
                next(response.iter_lines())
        assert fake.wait_no_open_streams(10)
        serve.wait_stderr(lambda line: line.count("outcome=client_closed") == 1)
        assert serve.stop() == 0
    assert serve.stderr.count("outcome=client_closed") == 5
    assert "Traceback" not in serve.stderr and "Exception occurred" not in serve.stderr


def test_output_into_a_closed_pipe_ends_quietly(isolated_env: Path) -> None:
    """`vapi-bridge configure-key --show | head -0`: the reader is gone before the first line,
    so the write fails; that is the reader's choice, not a crash to report."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            cli("configure-key", "--show"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={**os.environ, "SAMBANOVA_API_KEY": "sk-test-0123456789abcdef"},
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == "", done.stderr


def test_test_refuses_an_empty_message(isolated_env: Path) -> None:
    """An empty --message was quietly replaced by the sample question."""
    result = run_cli("test", "--message", " ", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "--message is empty" in result.stderr
    assert "->" in result.stderr and "Traceback" not in result.stderr
