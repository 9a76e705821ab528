"""Wiring a Vapi assistant to the bridge and back, against the fake Vapi API over HTTP."""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.broken_llm import silent_server
from tests.fakes.vapi_api import GOOD_KEY, FakeVapi
from tests.process import closed_port
from vapi_bridge import assistant
from vapi_bridge.errors import VapiError
from vapi_bridge.vapi import VapiClient

BRIDGE_KEY = "vb_bridge_key_for_tests_0123456789abcdef"
URL = "https://abc123.ngrok-free.app"
PROMPT = [{"role": "system", "content": "You are Riley, a scheduling assistant."}]
TOOLS = [{"type": "function", "function": {"name": "check_availability", "parameters": {}}}]
ORIGINAL_MODEL = {
    "provider": "openai",
    "model": "gpt-4o",
    "messages": PROMPT,
    "tools": TOOLS,
    "toolIds": ["tool-1234"],
    "temperature": 0.4,
    "maxTokens": 180,
    "emotionRecognitionEnabled": True,
    "fallbackModels": ["gpt-4o-mini"],
}
ORIGINAL_CREDENTIALS = [
    {"provider": "11labs", "apiKey": "el_secret_do_not_touch"},
    {"provider": "custom-llm", "apiKey": "an-older-custom-llm-key"},
]


@pytest.fixture
def vapi() -> Iterator[FakeVapi]:
    with FakeVapi() as fake:
        yield fake


@pytest.fixture
def client(vapi: FakeVapi) -> Iterator[VapiClient]:
    with VapiClient(GOOD_KEY, vapi.base_url) as c:
        yield c


@pytest.fixture
def riley(vapi: FakeVapi) -> str:
    created = vapi.add(
        name="Riley",
        model=copy.deepcopy(ORIGINAL_MODEL),
        credentials=copy.deepcopy(ORIGINAL_CREDENTIALS),
        firstMessage="Hi, this is Riley.",
    )
    return str(created["id"])


def wire(client: VapiClient, assistant_id: str, home: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "url": URL,
        "model": "Meta-Llama-3.3-70B-Instruct",
        "bridge_key": BRIDGE_KEY,
        "home": home,
    }
    return assistant.wire(client, assistant_id, **{**options, **kwargs})


def test_wire_keeps_prompt_tools_and_settings(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wired = wire(
        client,
        riley,
        isolated_env,
        url=URL + "/chat/completions",
        headers={"X-Vapi-Bridge-Profile": "riley"},
    )
    model = vapi.get(riley)["model"]
    assert model["provider"] == "custom-llm"
    assert model["url"] == URL, "the base URL: Vapi appends /chat/completions itself"
    assert model["model"] == "Meta-Llama-3.3-70B-Instruct"
    for name in ("messages", "tools", "toolIds", "temperature", "maxTokens"):
        assert model[name] == ORIGINAL_MODEL[name], name
    assert model["emotionRecognitionEnabled"] is True
    assert model["headers"]["X-Vapi-Bridge-Profile"] == "riley"
    assert "fallbackModels" not in model and wired.dropped == ("fallbackModels",)
    credentials = vapi.get(riley)["credentials"]
    assert credentials[0] == ORIGINAL_CREDENTIALS[0], "other providers' credentials are kept"
    custom = [c for c in credentials if c["provider"] == "custom-llm"]
    assert len(custom) == 1 and custom[0]["apiKey"] == BRIDGE_KEY
    assert vapi.get(riley)["firstMessage"] == "Hi, this is Riley.", "PATCH sent model only"
    assert set(vapi.patches()[0].body) == {"model", "credentials"}
    assert wired.original == "saved" and wired.name == "Riley" and riley in wired.describe()
    saved = assistant.saved_path(isolated_env, riley)
    if os.name == "posix":
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["original"]["model"] == ORIGINAL_MODEL


def test_custom_llm_settings_survive_rewiring(
    vapi: FakeVapi, client: VapiClient, isolated_env: Path
) -> None:
    own = {
        "provider": "custom-llm",
        "url": "https://my-own-llm.example.com/v1",
        "model": "mine",
        "metadataSendMode": "destructured",
        "timeoutSeconds": 15,
        "headers": {"X-Team": "blue"},
        "messages": PROMPT,
    }
    created = vapi.add(name="Own", model=copy.deepcopy(own))
    wired = wire(client, created["id"], isolated_env)
    model = vapi.get(created["id"])["model"]
    assert model["metadataSendMode"] == "destructured" and model["timeoutSeconds"] == 15
    assert "X-Team" not in model["headers"] and wired.dropped == ("headers",)
    assert wired.original == "saved"


def test_restore_puts_back_the_exact_original(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env)
    line = assistant.restore(client, riley, isolated_env)
    restored = vapi.get(riley)
    assert restored["model"] == ORIGINAL_MODEL
    assert restored["credentials"] == ORIGINAL_CREDENTIALS
    assert "back on its own model (openai/gpt-4o)" in line and "Edits" not in line
    assert not assistant.saved_path(isolated_env, riley).exists()
    patches = len(vapi.patches())
    again = assistant.restore(client, riley, isolated_env)
    assert "nothing to restore" in again and len(vapi.patches()) == patches


def test_crash_then_new_start_then_restore_gives_the_true_original(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env, url="https://first-run.ngrok-free.app")
    # The bridge was killed: no restore. The next start has a new tunnel URL.
    second = wire(client, riley, isolated_env, url="https://second-run.ngrok-free.app")
    assert second.original == "kept" and "earlier run" in second.describe()
    assert vapi.get(riley)["model"]["url"] == "https://second-run.ngrok-free.app"
    assistant.restore(client, riley, isolated_env)
    assert vapi.get(riley)["model"] == ORIGINAL_MODEL
    assert vapi.get(riley)["credentials"] == ORIGINAL_CREDENTIALS


def test_an_original_put_back_by_hand_replaces_the_stale_saved_one(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env)
    # The bridge died; the user switched the assistant to another model by hand.
    by_hand = {"provider": "openai", "model": "gpt-4o-mini", "messages": PROMPT}
    vapi.edit(riley, model=by_hand, credentials=[])
    assert wire(client, riley, isolated_env).original == "saved"
    assistant.restore(client, riley, isolated_env)
    assert vapi.get(riley)["model"] == by_hand and vapi.get(riley)["credentials"] == []


def test_a_bridge_configuration_is_never_saved_as_the_original(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path, tmp_path: Path
) -> None:
    wire(client, riley, isolated_env)
    bridged = vapi.get(riley)
    other_home = tmp_path / "other-home"  # the saved file is not there (another home, lost)
    for key in (BRIDGE_KEY, "vb_another_bridge_key_000000000000"):
        wired = wire(client, riley, other_home, url="https://other.example.com", bridge_key=key)
        assert wired.original == "none" and "no original" in wired.describe()
        assert not assistant.saved_path(other_home, riley).exists()
    assert "nothing to restore" in assistant.restore(client, riley, other_home)
    # The first home still holds the true original; the assistant now points at the other
    # bridge, so restoring leaves it alone and keeps the original saved.
    line = assistant.restore(client, riley, isolated_env)
    assert "another bridge" in line and assistant.saved_path(isolated_env, riley).exists()
    assert vapi.get(riley)["model"]["url"] == "https://other.example.com"
    assert bridged["model"]["url"] == URL


def test_restore_keeps_prompt_edits_made_while_wired(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env)
    edited = {**vapi.get(riley)["model"], "messages": [{"role": "system", "content": "New."}]}
    vapi.edit(riley, model=edited)
    line = assistant.restore(client, riley, isolated_env)
    model = vapi.get(riley)["model"]
    assert model == {**ORIGINAL_MODEL, "messages": [{"role": "system", "content": "New."}]}
    assert "Edits made meanwhile are kept: messages" in line


def test_restore_leaves_an_assistant_switched_away_alone(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env)
    vapi.edit(riley, model={"provider": "anthropic", "model": "claude-sonnet-4"})
    patches = len(vapi.patches())
    line = assistant.restore(client, riley, isolated_env)
    assert "no longer uses this bridge" in line and len(vapi.patches()) == patches
    assert vapi.get(riley)["model"]["provider"] == "anthropic"
    assert not assistant.saved_path(isolated_env, riley).exists()


def test_no_bridge_key_removes_the_custom_llm_credential(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    wire(client, riley, isolated_env, bridge_key=None)
    assert vapi.get(riley)["credentials"] == ORIGINAL_CREDENTIALS[:1]


def assert_one_clear_line(error: VapiError, *expected: str) -> None:
    assert "\n" not in error.message and error.hint, error.cli_message()
    text = error.cli_message()
    for part in expected:
        assert part in text, text
    for secret in (GOOD_KEY, BRIDGE_KEY, "el_secret_do_not_touch"):
        assert secret not in text


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [
        (401, "GET", ("rejected the Vapi API key (HTTP 401)", "private", "configure-key --vapi")),
        (500, "GET", ("server error (HTTP 500)",)),
        (500, "PATCH", ("server error (HTTP 500)",)),
        (400, "PATCH", ('(HTTP 400): "model.toolIds must be an array"', "Nothing was changed")),
    ],
)
def test_vapi_failures_are_one_clear_line_and_change_nothing(
    vapi: FakeVapi,
    client: VapiClient,
    riley: str,
    isolated_env: Path,
    status: int,
    method: str,
    expected: tuple[str, ...],
) -> None:
    message = ["model.toolIds must be an array"] if status == 400 else None
    vapi.fail_next(status, message, method=method)
    with pytest.raises(VapiError) as caught:
        wire(client, riley, isolated_env)
    assert caught.value.vapi_status == status
    assert_one_clear_line(caught.value, *expected)
    assert vapi.get(riley)["model"] == ORIGINAL_MODEL
    assert not assistant.saved_path(isolated_env, riley).exists(), "Vapi said no: nothing saved"


def test_unknown_assistant_and_wrong_key(vapi: FakeVapi, isolated_env: Path) -> None:
    with VapiClient(GOOD_KEY, vapi.base_url) as client, pytest.raises(VapiError) as caught:
        wire(client, "no-such-assistant", isolated_env)
    assert_one_clear_line(caught.value, "no assistant no-such-assistant", "vapi-bridge assistants")
    wrong = "ffffffff-0000-4000-8000-000000000000"
    with VapiClient(wrong, vapi.base_url) as client, pytest.raises(VapiError) as caught:
        client.list_assistants()
    assert_one_clear_line(caught.value, "HTTP 401")
    assert wrong not in caught.value.cli_message() and wrong not in repr(client)


def test_vapi_unreachable_or_silent(isolated_env: Path) -> None:
    closed = f"http://127.0.0.1:{closed_port()}"
    with VapiClient(GOOD_KEY, closed) as client, pytest.raises(VapiError) as caught:
        wire(client, "a1", isolated_env)
    assert caught.value.vapi_status is None
    assert_one_clear_line(caught.value, "Could not reach Vapi", "network")
    with (
        silent_server() as url,
        VapiClient(GOOD_KEY, url, timeout=0.5) as client,
        pytest.raises(VapiError) as caught,
    ):
        client.get_assistant("a1")
    assert_one_clear_line(caught.value, "did not answer", "within 0.5 s")


def test_lost_patch_answer_keeps_the_saved_original(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    vapi.fail_next(None, method="PATCH")  # the connection drops: did Vapi apply it or not?
    with pytest.raises(VapiError) as caught:
        wire(client, riley, isolated_env)
    assert_one_clear_line(caught.value, "Could not reach Vapi")
    saved = json.loads(assistant.saved_path(isolated_env, riley).read_text())
    assert saved["original"]["model"] == ORIGINAL_MODEL


def test_bad_input_is_refused_before_calling_vapi(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"headers": {"authorization": "Bearer x"}}, "headers set Authorization"),
        ({"url": "http://127.0.0.1:5000"}, "cannot reach"),
        ({"url": "not a url"}, "not a URL Vapi can call"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(VapiError) as caught:
            wire(client, riley, isolated_env, **kwargs)
        assert_one_clear_line(caught.value, expected)
    with pytest.raises(VapiError) as caught:
        wire(client, "../config", isolated_env)
    assert_one_clear_line(caught.value, "not a Vapi assistant ID")
    assert not vapi.requests
    with pytest.raises(VapiError) as caught:
        VapiClient("has a space in it", vapi.base_url)
    assert_one_clear_line(caught.value, "private key")
    with pytest.raises(VapiError) as caught:
        VapiClient(GOOD_KEY, "api.vapi.ai")
    assert_one_clear_line(caught.value, "not a valid Vapi API URL")


def test_the_fake_enforces_vapi_shapes(vapi: FakeVapi, client: VapiClient, riley: str) -> None:
    """The bridge's own checks aside, Vapi's 400 for a bad model is quoted to the user."""
    model = {"provider": "custom-llm", "url": URL, "model": "m", "headers": {"Authorization": "x"}}
    with pytest.raises(VapiError) as caught:
        client.update_assistant(riley, {"model": model})
    assert_one_clear_line(caught.value, "HTTP 400", "cannot set Authorization")
    with pytest.raises(VapiError) as caught:
        client.update_assistant(riley, {"model": {"provider": "custom-llm", "model": "m"}})
    assert_one_clear_line(caught.value, "model.url must be a URL address")
    assert vapi.get(riley)["model"] == ORIGINAL_MODEL


def test_the_keys_are_cut_out_of_anything_vapi_quotes(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    eleven = ORIGINAL_CREDENTIALS[0]["apiKey"]
    quoted = f"credential {GOOD_KEY}, {BRIDGE_KEY} and {eleven} are invalid"
    vapi.fail_next(400, quoted, method="PATCH")
    with pytest.raises(VapiError) as caught:
        wire(client, riley, isolated_env)
    assert_one_clear_line(caught.value, "credential ***, *** and *** are invalid")
    wire(client, riley, isolated_env)
    vapi.fail_next(400, quoted, method="PATCH")
    with pytest.raises(VapiError) as caught:
        assistant.restore(client, riley, isolated_env)
    assert_one_clear_line(caught.value, "credential ***, ")
    assert assistant.saved_path(isolated_env, riley).exists(), "kept for the next try"


def test_listing_marks_this_bridge_and_others(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path, tmp_path: Path
) -> None:
    plain = vapi.add(name="Plain", model={"provider": "openai", "model": "gpt-4o"})["id"]
    wire(client, riley, isolated_env)
    other = vapi.add(name="Other", model={"provider": "openai", "model": "gpt-4o"})["id"]
    wire(client, other, tmp_path / "h2", url="https://elsewhere.example.com", bridge_key="k" * 20)
    rows = {
        r.id: r for r in assistant.listing(client.list_assistants(), urls=[URL + "/v1"], keys=[])
    }
    assert rows[riley].bridge == "this" and rows[riley].model.startswith("custom-llm/")
    assert rows[other].bridge == "other" and rows[plain].bridge == ""
    by_key = assistant.listing([vapi.get(riley)], urls=[], keys=[BRIDGE_KEY])
    assert by_key[0].bridge == "this"
    table = assistant.table(list(rows.values()))
    assert table.splitlines()[0].split() == ["ID", "NAME", "MODEL", "BRIDGE"]
    assert BRIDGE_KEY not in table


def test_an_oauth_plan_secret_is_cut_out_of_anything_vapi_quotes(
    vapi: FakeVapi, client: VapiClient, riley: str, isolated_env: Path
) -> None:
    old = assistant.OAuthPlan("vb_client", "oauth_secret_before_rotation")
    wire(client, riley, isolated_env, oauth=old)
    new = assistant.OAuthPlan("vb_client", "oauth_secret_after_rotation")
    vapi.fail_next(400, f"{old.client_secret} and {new.client_secret} clash", method="PATCH")
    with pytest.raises(VapiError) as caught:
        wire(client, riley, isolated_env, oauth=new)
    assert_one_clear_line(caught.value, "*** and *** clash")


def test_the_oauth_token_url_is_at_the_server_root() -> None:
    plan = assistant.OAuthPlan("vb_client", "oauth_secret_0123")
    assert plan.plan("https://bridge.example.com/v1")["url"] == (
        "https://bridge.example.com/oauth/token"
    )
    assert (
        plan.plan("https://bridge.example.com")["url"] == "https://bridge.example.com/oauth/token"
    )
    assert "oauth_secret_0123" not in repr(plan)
