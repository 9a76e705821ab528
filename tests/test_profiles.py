"""Profiles: one bridge, many assistants; a request picks one with a header Vapi sends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.fakes.vapi_api import GOOD_KEY, FakeVapi
from tests.helpers import SECRET, BridgeFactory, LogCapture, vapi_request
from tests.process import Serve, run_cli

PROFILES = """
[profiles.sales]
model = "gpt-oss-120b"
system_prompt = "You sell calendars."
fallback_models = ["Meta-Llama-3.3-70B-Instruct"]

[profiles.support]
system_prompt_file = "support.txt"
system_prompt_mode = "prepend"
speech_filter = false
"""


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    (tmp_path / "support.txt").write_text("You fix calendars.")
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    return path


def post_as(bridge: object, profile: str | None) -> int:
    headers = {"X-Vapi-Bridge-Profile": profile} if profile else {}
    return int(bridge.post(vapi_request(), headers=headers).status_code)  # type: ignore[attr-defined]


def test_each_profile_changes_what_sambanova_receives(
    start_bridge: BridgeFactory, fake: FakeSambaNova, profiles_file: Path
) -> None:
    bridge = start_bridge(profiles=profiles_file)
    assert post_as(bridge, "sales") == 200
    sales = fake.last.body
    assert sales["model"] == "gpt-oss-120b" and sales["reasoning_effort"] == "low"
    assert sales["messages"][0]["content"] == "You sell calendars."
    assert post_as(bridge, "support") == 200
    support = fake.last.body
    assert support["model"] == vapi_request()["model"]
    assert support["messages"][0]["content"].startswith("You fix calendars.\n\n")
    assert post_as(bridge, None) == 200
    assert fake.last.body["messages"][0] == vapi_request()["messages"][0], "no profile: as sent"


def test_an_unknown_profile_is_a_clear_400(
    start_bridge: BridgeFactory, profiles_file: Path
) -> None:
    bridge = start_bridge(profiles=profiles_file)
    response = bridge.post(vapi_request(), headers={"X-Vapi-Bridge-Profile": "billing"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_profile" and "sales, support" in error["message"]
    plain = start_bridge().post(vapi_request(), headers={"X-Vapi-Bridge-Profile": "sales"})
    assert plain.status_code == 400 and "--profiles" in plain.json()["error"]["message"]


def test_a_changed_file_is_re_read_and_a_broken_one_keeps_the_last_good(
    start_bridge: BridgeFactory, fake: FakeSambaNova, profiles_file: Path, logs: LogCapture
) -> None:
    bridge = start_bridge(profiles=profiles_file)
    assert post_as(bridge, "sales") == 200
    profiles_file.write_text(PROFILES.replace("You sell calendars.", "You sell clocks."))
    os.utime(profiles_file, ns=(1, 1))  # a new stamp even within one clock tick
    assert post_as(bridge, "sales") == 200
    assert fake.last.body["messages"][0]["content"] == "You sell clocks."
    profiles_file.write_text("[profiles.sales\nbroken")
    assert post_as(bridge, "sales") == 200
    assert fake.last.body["messages"][0]["content"] == "You sell clocks."
    logs.wait_for(lambda line: "keeping the last good version" in line)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[profiles.a]\nport = 80\n", "cannot set port"),
        ('[profiles.a]\nreasoning = "lots"\n', "reasoning 'lots' must be one of"),
        ('[profiles.a]\nreasoning = "lots"\n', "Fix it in profiles.toml"),
        ("[profiles.a]\nhedge_after = 200\n", "--hedge-after needs --fallback-model"),
        ('[profiles.a]\nno_apology = true\napology = "hi"\n', "contradict"),
        ("[other]\n", "no [profiles.NAME] tables"),
        (
            '[profiles.calm]\nsystem_prompt_file = "nope.txt"\n',
            "profiles.toml: profile 'calm': Cannot read the system prompt file",
        ),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_a_bad_profiles_file_stops_serve_with_one_line(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    result = run_cli("serve", "--demo", "--no-tunnel", "--port", "0", "--profiles", str(path))
    assert result.returncode == 2 and says in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_assistant_profile_writes_the_header_and_the_panel_lists_profiles(
    fake: FakeSambaNova, profiles_file: Path
) -> None:
    with FakeVapi() as vapi:
        riley = vapi.add(name="Riley", model={"provider": "openai", "model": "gpt-4o"})["id"]
        env = {
            "SAMBANOVA_API_KEY": "test-key",
            "SAMBANOVA_BASE_URL": fake.base_url,
            "VAPI_API_KEY": GOOD_KEY,
            "VAPI_BASE_URL": vapi.base_url,
        }
        args = ["--port", "0", "--secret", SECRET, "--public-url", "https://calls.example.com"]
        args += ["--profiles", str(profiles_file), "--assistant", riley, "--profile", "sales"]
        with Serve(*args, env=env) as serve:
            serve.stdout_line()
            serve.wait_stderr(lambda line: "now uses this bridge" in line)
            wired = vapi.get(riley)["model"]
            assert wired["headers"]["X-Vapi-Bridge-Profile"] == "sales"
            assert wired["model"] == "gpt-oss-120b", "the profile's model, not the base one"
            assert "sales, support" in serve.stderr
            assert serve.stop() == 0
    wrong = run_cli(
        "serve",
        "--demo",
        "--port",
        "0",
        "--public-url",
        "https://x.example.com",
        "--profiles",
        str(profiles_file),
        "--assistant",
        "a1",
        "--profile",
        "billing",
        env={"VAPI_API_KEY": GOOD_KEY},
    )
    assert wrong.returncode == 2 and "--profile 'billing' is not in" in wrong.stderr


def test_a_broken_profiles_file_is_said_once_not_per_request(
    start_bridge: BridgeFactory, profiles_file: Path, logs: LogCapture
) -> None:
    bridge = start_bridge(profiles=profiles_file)
    profiles_file.write_text("[profiles.sales\nbroken")
    for _ in range(3):
        assert post_as(bridge, "sales") == 200
    warnings = [line for line in logs.lines if "keeping the last good version" in line]
    assert len(warnings) == 1, warnings
