"""``configure-key`` (the Vapi key included) and ``assistants``, run as a user runs them."""

from __future__ import annotations

import copy
import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.vapi_api import GOOD_KEY, FakeVapi
from tests.helpers import cli
from tests.process import closed_port, run_cli
from tests.test_assistant import ORIGINAL_MODEL
from vapi_bridge import assistant, state
from vapi_bridge.vapi import VapiClient

WRONG_KEY = "ffffffff-1111-4222-8333-444444444444"


@pytest.fixture
def vapi() -> Iterator[FakeVapi]:
    with FakeVapi() as fake:
        yield fake


def clean_failure(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """Non-zero exit, a cause and a fix, no traceback; returns stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "->" in result.stderr, result.stderr
    return result.stderr


def stored(home: Path) -> dict[str, str]:
    path = home / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_vapi_key_is_verified_stored_privately_and_never_shown(
    vapi: FakeVapi, isolated_env: Path
) -> None:
    result = run_cli(
        "configure-key", "--vapi", "--stdin", "--vapi-base-url", vapi.base_url, stdin=GOOD_KEY
    )
    assert result.returncode == 0, result.stderr
    assert "verified with Vapi" in result.stderr and "0f1e...cba9" in result.stderr
    assert GOOD_KEY not in output(result)
    assert stored(isolated_env)["vapi_api_key"] == GOOD_KEY
    if os.name == "posix":
        assert stat.S_IMODE((isolated_env / "config.json").stat().st_mode) == 0o600
    (check,) = vapi.requests
    assert (check.method, check.path, check.query) == ("GET", "/assistant", {"limit": ["1"]})
    assert check.authorization == f"Bearer {GOOD_KEY}"


def test_vapi_key_failures_store_nothing(vapi: FakeVapi, isolated_env: Path) -> None:
    base = ["configure-key", "--vapi", "--stdin"]
    wrong = run_cli(*base, "--vapi-base-url", vapi.base_url, stdin=WRONG_KEY)
    err = clean_failure(wrong)
    assert "Vapi rejected this key (HTTP 401)" in err and "private" in err
    assert WRONG_KEY not in output(wrong)
    offline = run_cli(
        *base, stdin=GOOD_KEY, env={"VAPI_BASE_URL": f"http://127.0.0.1:{closed_port()}"}
    )
    err = clean_failure(offline, code=1)  # the network's fault, not the configuration's
    assert "Could not verify the key with Vapi" in err and "--no-verify" in err
    spaced = run_cli(*base, "--no-verify", stdin="two words here\n")
    assert "spaces" in clean_failure(spaced)
    bad_url = run_cli(*base, "--vapi-base-url", "api.vapi.ai", stdin=GOOD_KEY)
    err = clean_failure(bad_url)
    assert "--vapi-base-url 'api.vapi.ai' must be an http:// or https:// URL" in err
    assert "network" not in err
    assert "vapi_api_key" not in stored(isolated_env)
    assert len(vapi.requests) == 1, "only the wrong key reached Vapi"
    unchecked = run_cli(*base, "--no-verify", stdin=WRONG_KEY)
    assert unchecked.returncode == 0 and "verified" not in unchecked.stderr
    assert stored(isolated_env)["vapi_api_key"] == WRONG_KEY and len(vapi.requests) == 1


def test_show_lists_the_vapi_key_with_its_source_and_env_wins(isolated_env: Path) -> None:
    run_cli("configure-key", "--vapi", "--stdin", "--no-verify", stdin=GOOD_KEY)
    shown = run_cli("configure-key", "--show")
    line = next(x for x in shown.stdout.splitlines() if x.startswith("Vapi private API key"))
    assert "0f1e...cba9" in line and str(isolated_env / "config.json") in line
    from_env = run_cli("configure-key", "--show", env={"VAPI_API_KEY": WRONG_KEY})
    line = next(x for x in from_env.stdout.splitlines() if x.startswith("Vapi private API key"))
    assert "ffff...4444" in line and "environment (VAPI_API_KEY)" in line
    assert GOOD_KEY not in output(shown) and WRONG_KEY not in output(from_env)


def test_show_says_not_set_once(isolated_env: Path) -> None:
    shown = run_cli("configure-key", "--show")
    assert shown.returncode == 0
    *lines, count = shown.stdout.splitlines()
    assert len(lines) == 6, "SambaNova, ngrok, bridge, Vapi, OAuth2 client id and secret"
    for line in lines:
        assert line.count("not set") == 1 and "(not set)" not in line, line
    assert count.startswith("Bridge keys valid: none stored yet")


def test_remove_with_nothing_stored_says_so(isolated_env: Path) -> None:
    nothing = run_cli("configure-key", "--remove", "--vapi")
    assert nothing.returncode == 0
    assert "No Vapi private API key is stored; nothing to remove." in nothing.stderr
    assert "Removed" not in nothing.stderr
    run_cli("configure-key", "--vapi", "--stdin", "--no-verify", stdin=GOOD_KEY)
    removed = run_cli("configure-key", "--remove", "--vapi", env={"VAPI_API_KEY": WRONG_KEY})
    assert "Removed the stored Vapi private API key." in removed.stderr
    assert "VAPI_API_KEY is set in the environment and still applies" in removed.stderr
    assert "vapi_api_key" not in stored(isolated_env)


def test_short_ngrok_token_is_called_too_short() -> None:
    short = run_cli("configure-key", "--ngrok", "--stdin", stdin="2abc_def\n")
    err = clean_failure(short)
    assert "too short (8 characters" in err and "characters, _ and -" not in err
    odd = run_cli("configure-key", "--ngrok", "--stdin", stdin="2abcdefghijklmnop!qrstuvwxyz\n")
    assert "letters, digits, _ and - only" in clean_failure(odd)


def test_bad_sambanova_base_url_is_named_not_blamed_on_the_network() -> None:
    result = run_cli("configure-key", "--stdin", "--base-url", "not-a-url", stdin="sk-abc123456\n")
    err = clean_failure(result)
    assert "--base-url 'not-a-url' must be an http:// or https:// URL" in err
    assert "network" not in err


def test_new_bridge_key_needs_a_yes_without_a_terminal(isolated_env: Path) -> None:
    refused = run_cli("configure-key", "--new-bridge-key")
    err = clean_failure(refused)
    assert "nothing was changed" in err and "--yes" in err and refused.stdout == ""
    assert "bridge_secret" not in stored(isolated_env)
    first = run_cli("configure-key", "--new-bridge-key", "--yes")
    assert first.returncode == 0 and first.stdout.strip().startswith("vb_")
    assert stored(isolated_env)["bridge_secret"] == first.stdout.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize(("answer", "replaced"), [("n", False), ("y", True)])
def test_new_bridge_key_asks_on_a_terminal(isolated_env: Path, answer: str, replaced: bool) -> None:
    import pty

    run_cli("configure-key", "--new-bridge-key", "--yes")
    before = stored(isolated_env)["bridge_secret"]
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            cli("configure-key", "--new-bridge-key"),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        os.write(main, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(main)
    assert "Replace the bridge key?" in err
    after = stored(isolated_env)["bridge_secret"]
    if replaced:
        assert proc.returncode == 0 and out.strip() == after != before
    else:
        assert proc.returncode == 1 and out == "" and after == before
        assert "Kept the current bridge key" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--show", "--remove"], "--show and --remove cannot be used together"),
        (["--new-bridge-key", "--stdin"], "--new-bridge-key cannot be combined with --stdin"),
        (["--new-bridge-key", "--ngrok", "--yes"], "run `vapi-bridge configure-key --new-bridge"),
        (["--vapi", "--ngrok"], "--ngrok and --vapi cannot be used together"),
        (["--show", "--ngrok"], "--show cannot be combined with --ngrok"),
        (["--remove", "--no-verify"], "--remove cannot be combined with --no-verify"),
        (["--yes"], "Storing a key does not take --yes"),
        (["--vapi", "--base-url", "https://x.example"], "--base-url is SambaNova's API URL"),
        (["--vapi-base-url", "https://x.example"], "--vapi-base-url only applies with --vapi"),
    ],
)
def test_conflicting_flags_are_refused(isolated_env: Path, args: list[str], expected: str) -> None:
    result = run_cli("configure-key", *args, stdin="sk-abcdefghijk123\n")
    assert expected in clean_failure(result)
    assert not (isolated_env / "config.json").exists()


def test_assistants_without_a_key_points_at_configure_key() -> None:
    err = clean_failure(run_cli("assistants"))
    assert "No Vapi API key is configured" in err and "configure-key --vapi" in err


def test_assistants_lists_and_marks_this_bridge(vapi: FakeVapi, isolated_env: Path) -> None:
    plain = vapi.add(name="Plain", model={"provider": "openai", "model": "gpt-4o"})["id"]
    wired = vapi.add(name="Riley", model=copy.deepcopy(ORIGINAL_MODEL))["id"]
    url = "https://live-bridge.ngrok-free.app"
    with VapiClient(GOOD_KEY, vapi.base_url) as client:
        assistant.wire(
            client, wired, url=url, model="M", bridge_key="vb_" + "k" * 30, home=isolated_env
        )
    state.write(
        isolated_env,
        state.record(
            pid=os.getpid(),
            local_url="http://127.0.0.1:5000",
            public_url=url,
            secret=None,
            agent_pid=None,
        ),
    )
    env = {"VAPI_API_KEY": GOOD_KEY, "VAPI_BASE_URL": vapi.base_url}
    result = run_cli("assistants", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "MODEL", "BRIDGE"]
    riley = next(line for line in lines if line.startswith(wired))
    assert "Riley" in riley and "custom-llm/M" in riley and riley.endswith("this bridge")
    other = next(line for line in lines if line.startswith(plain))
    assert "openai/gpt-4o" in other and other.endswith("-")
    as_json = json.loads(run_cli("assistants", "--json", env=env).stdout)
    assert {row["id"]: row["bridge"] for row in as_json} == {wired: "this", plain: ""}
    assert GOOD_KEY not in output(result)
    listing = [r for r in vapi.requests if r.path == "/assistant"]
    assert listing[-1].query == {"limit": ["100"]}


def test_assistants_failures_are_clean(vapi: FakeVapi) -> None:
    wrong = run_cli("assistants", "--vapi-base-url", vapi.base_url, env={"VAPI_API_KEY": WRONG_KEY})
    err = clean_failure(wrong, code=1)
    assert "HTTP 401" in err and WRONG_KEY not in output(wrong)
    bad = run_cli("assistants", "--vapi-base-url", "nope", env={"VAPI_API_KEY": GOOD_KEY})
    assert "--vapi-base-url 'nope' must be an http:// or https:// URL" in clean_failure(bad)
    vapi.fail_next(500)
    down = run_cli("assistants", "--vapi-base-url", vapi.base_url, env={"VAPI_API_KEY": GOOD_KEY})
    assert "server error (HTTP 500)" in clean_failure(down, code=1)


def test_storing_a_key_without_a_terminal_asks_for_stdin(isolated_env: Path) -> None:
    """A script that forgot --stdin gets told how to pipe the key, not Python's warning that
    the input may be echoed, and nothing is stored."""
    err = clean_failure(run_cli("configure-key", "--ngrok", stdin="2abc_token\n"))
    assert "no terminal to type the ngrok auth token into" in err and "--stdin" in err
    assert "Warning" not in err and "echo" not in err
    assert not (isolated_env / "config.json").exists()


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="ngrok's config path on Linux")
def test_show_lists_the_token_in_ngroks_own_config(isolated_env: Path, tmp_path: Path) -> None:
    """`serve` uses the token `ngrok config add-authtoken` stored: --show says so (masked)."""
    token = "2abcDEFghiJKLmnoPQRstu_vwxyz0123456789"
    (tmp_path / "ngrok").mkdir()
    (tmp_path / "ngrok" / "ngrok.yml").write_text(f'version: "2"\nauthtoken: {token}\n')
    result = run_cli("configure-key", "--show", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("ngrok auth token")]
    assert "2abc...6789" in row and "ngrok's own config" in row and token not in result.stdout


def test_a_sambanova_key_with_spaces_is_refused_even_unverified(isolated_env: Path) -> None:
    """It would go into every request's Authorization header broken."""
    spaced = run_cli("configure-key", "--stdin", "--no-verify", stdin="sk-abc defghijklmnop\n")
    assert "spaces" in clean_failure(spaced)
    assert not (isolated_env / "config.json").exists()


@pytest.mark.skipif(os.name != "posix", reason="a closed standard input, from the shell")
def test_storing_a_key_with_standard_input_closed_is_the_same_clear_error(
    isolated_env: Path,
) -> None:
    command = " ".join(shlex.quote(part) for part in cli("configure-key", "--ngrok"))
    result = subprocess.run(
        ["sh", "-c", f"exec {command} <&-"], capture_output=True, text=True, timeout=30
    )
    assert "no terminal to type the ngrok auth token into" in clean_failure(result)
