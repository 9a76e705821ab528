"""Several bridge keys at once, rotated without a rejected call; OAuth2 client credentials."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import (
    SECRET,
    BridgeFactory,
    LogCapture,
    RunningBridge,
    sse_events,
    vapi_request,
)
from tests.process import Serve, run_cli
from vapi_bridge import keystore
from vapi_bridge.auth import TOKEN_PREFIX, OAuthClient

OTHER_KEY = "vb_other_key_0123456789abcdef"
CLIENT_ID = "vbc_test_client"
CLIENT_SECRET = "vbs_test_client_secret_0123456789"
ORIGINAL_SECRET = "vbs_original_secret_0123456789"


def chat(url: str, key: str | None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        url + "/chat/completions", json={**vapi_request(), **body}, headers=headers, timeout=10
    )


def stored(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "config.json").read_text())
    return data


# --- several keys, rotation -------------------------------------------------------------------


def test_every_key_given_is_accepted_and_no_other(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(secret=[SECRET, OTHER_KEY])
    assert chat(bridge.url, SECRET, stream=False).status_code == 200
    assert chat(bridge.url, OTHER_KEY, stream=False).status_code == 200
    wrong = chat(bridge.url, OTHER_KEY[:-1] + "x", stream=False)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert SECRET not in wrong.text and OTHER_KEY not in wrong.text


def test_rotation_rejects_no_request_and_retiring_locks_the_old_key_out(
    isolated_env: Path,
) -> None:
    """A caller keeps using the old key while a new one is made and Vapi moves to it; the old
    key is refused only once retired, and the running bridge follows without a restart."""
    first = run_cli("configure-key", "--new-bridge-key", "--yes")
    old = first.stdout.strip()
    assert first.returncode == 0 and old.startswith("vb_")
    with Serve("--demo", "--no-tunnel", "--port", "0") as serve:
        url = serve.stdout_line()
        statuses: list[int] = []
        stop = threading.Event()
        sent = threading.Condition()

        def caller() -> None:
            with httpx.Client(timeout=10) as client:
                for _ in range(400):  # bounded: about a request every few ms at most
                    if stop.is_set():
                        return
                    response = client.post(
                        url + "/chat/completions",
                        json={**vapi_request(), "stream": False},
                        headers={"Authorization": f"Bearer {old}"},
                    )
                    with sent:
                        statuses.append(response.status_code)
                        sent.notify_all()

        thread = threading.Thread(target=caller, daemon=True)
        thread.start()
        with sent:
            assert sent.wait_for(lambda: len(statuses) >= 3, 10)
        rotated = run_cli("configure-key", "--new-bridge-key", "--yes")
        new = rotated.stdout.strip()
        assert rotated.returncode == 0 and new.startswith("vb_") and new != old
        assert "stays valid until" in rotated.stderr
        assert chat(url, new, stream=False).status_code == 200, "the new key works at once"
        with sent:
            after = len(statuses)
            assert sent.wait_for(lambda: len(statuses) >= after + 3, 10)
        stop.set()
        thread.join(10)
        assert statuses and set(statuses) == {200}, "no request was rejected while rotating"
        shown = run_cli("configure-key", "--show").stdout
        assert "Bridge keys valid: 2" in shown
        retired = run_cli("configure-key", "--retire-old-keys", "--yes")
        assert retired.returncode == 0 and "Retired 1 older bridge key" in retired.stderr
        refused = chat(url, old, stream=False)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert chat(url, new, stream=False).status_code == 200
        assert "Bridge keys valid: 1." in run_cli("configure-key", "--show").stdout
        assert serve.stop() == 0
    assert old not in serve.stderr and new not in serve.stderr
    assert "bridge keys reloaded from the stored config: 2 valid" in serve.stderr


def test_a_bridge_started_with_its_own_key_ignores_the_stored_set(
    start_bridge: BridgeFactory, isolated_env: Path
) -> None:
    keystore.update(isolated_env, bridge_secret=OTHER_KEY)
    bridge = start_bridge(secret=[SECRET])
    assert chat(bridge.url, OTHER_KEY, stream=False).status_code == 401
    keystore.update(isolated_env, bridge_secret=OTHER_KEY + "2", bridge_secrets_retiring=[SECRET])
    assert chat(bridge.url, OTHER_KEY + "2", stream=False).status_code == 401


def test_a_broken_stored_config_keeps_the_keys_in_use(
    isolated_env: Path, start_bridge: BridgeFactory, logs: LogCapture
) -> None:
    keystore.update(isolated_env, bridge_secret=SECRET)
    bridge = start_bridge(secret=[SECRET])
    (isolated_env / "config.json").write_text("{not json")
    assert chat(bridge.url, SECRET, stream=False).status_code == 200
    logs.wait_for(lambda line: "bridge keys not reloaded" in line)
    keystore.save(isolated_env, {"bridge_secret": "short"})
    assert chat(bridge.url, SECRET, stream=False).status_code == 200
    assert "short" not in logs.text


def test_retire_and_rotate_need_a_yes_without_a_terminal(isolated_env: Path) -> None:
    run_cli("configure-key", "--new-bridge-key", "--yes")
    run_cli("configure-key", "--new-bridge-key", "--yes")
    before = stored(isolated_env)
    refused = run_cli("configure-key", "--retire-old-keys")
    assert refused.returncode == 2 and "nothing was changed" in refused.stderr
    assert "Traceback" not in refused.stderr and stored(isolated_env) == before
    assert len(before[keystore.RETIRING]) == 1
    nothing = run_cli("configure-key", "--retire-old-keys", "--yes")
    assert nothing.returncode == 0
    again = run_cli("configure-key", "--retire-old-keys", "--yes")
    assert "nothing to retire" in again.stderr


def test_env_keys_are_counted_from_the_environment(isolated_env: Path) -> None:
    shown = run_cli("configure-key", "--show", env={"VAPI_BRIDGE_SECRET": f"{SECRET},{OTHER_KEY}"})
    assert "Bridge keys valid: 2, from the environment (VAPI_BRIDGE_SECRET)." in shown.stdout
    assert SECRET not in shown.stdout and OTHER_KEY not in shown.stdout


# --- OAuth2 client credentials ----------------------------------------------------------------


@pytest.fixture
def oauth_bridge(start_bridge: BridgeFactory) -> RunningBridge:
    return start_bridge(oauth=True, oauth_client_id=CLIENT_ID, oauth_client_secret=CLIENT_SECRET)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def fetch_token(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + "/oauth/token", timeout=10, **kwargs)


@pytest.mark.parametrize(
    "how",
    [
        {"headers": basic(CLIENT_ID, CLIENT_SECRET), "data": {"grant_type": "client_credentials"}},
        {
            "data": {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scope": "chat",
            }
        },
        {
            "json": {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        },
        {"headers": basic(CLIENT_ID, CLIENT_SECRET), "json": {"grant_type": "client_credentials"}},
    ],
    ids=["basic-form", "body-form", "body-json", "basic-json"],
)
def test_a_token_from_the_token_endpoint_opens_the_chat_routes(
    oauth_bridge: RunningBridge, how: dict[str, Any]
) -> None:
    answer = fetch_token(oauth_bridge.url, **how)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert set(body) == {"access_token", "token_type", "expires_in"}
    token = body["access_token"]
    assert CLIENT_SECRET not in token
    streamed = chat(oauth_bridge.url, token)
    assert streamed.status_code == 200 and sse_events(streamed)[-1] == "[DONE]"
    models = httpx.get(
        oauth_bridge.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}
    )
    assert models.status_code == 200
    assert chat(oauth_bridge.url, SECRET, stream=False).status_code == 200, "the key still works"


def test_another_replica_with_the_same_client_accepts_the_token(
    oauth_bridge: RunningBridge, start_bridge: BridgeFactory
) -> None:
    replica = start_bridge(oauth=True, oauth_client_id=CLIENT_ID, oauth_client_secret=CLIENT_SECRET)
    token = fetch_token(
        oauth_bridge.url,
        headers=basic(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "client_credentials"},
    ).json()["access_token"]
    assert chat(replica.url, token, stream=False).status_code == 200


def forged_tokens() -> dict[str, str]:
    now = time.time()
    ours = OAuthClient(CLIENT_ID, CLIENT_SECRET)
    good = ours.issue(now)
    expiry, signature = good[len(TOKEN_PREFIX) :].split(".")
    return {
        "other-secret": OAuthClient(CLIENT_ID, ORIGINAL_SECRET).issue(now),
        "other-client": OAuthClient("vbc_other", CLIENT_SECRET).issue(now),
        "longer-expiry": f"{TOKEN_PREFIX}{int(expiry) + 86400}.{signature}",
        "no-signature": f"{TOKEN_PREFIX}{expiry}.",
        "bad-base64": f"{TOKEN_PREFIX}{expiry}.!!!!",
        "not-a-number": f"{TOKEN_PREFIX}soon.{signature}",
        "bare-prefix": TOKEN_PREFIX,
        "truncated": good[:-3],
    }


@pytest.mark.parametrize("name", sorted(forged_tokens()))
def test_forged_or_malformed_tokens_are_refused(
    oauth_bridge: RunningBridge, fake: FakeSambaNova, name: str
) -> None:
    refused = chat(oauth_bridge.url, forged_tokens()[name])
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] in ("invalid_token", "invalid_api_key")
    assert error["type"] == "invalid_request_error" and error["message"]
    assert not fake.requests


def test_an_expired_token_is_refused_with_a_clear_error(
    oauth_bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    expired = OAuthClient(CLIENT_ID, CLIENT_SECRET).issue(time.time() - 3601)
    refused = chat(oauth_bridge.url, expired)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_expired"
    assert "expired" in refused.json()["error"]["message"]
    assert not fake.requests


@pytest.mark.parametrize(
    ("how", "status", "error"),
    [
        (
            {"headers": basic(CLIENT_ID, "wrong-secret-0123456789"), "data": {"grant_type": "x"}},
            401,
            "invalid_client",
        ),
        ({"data": {"grant_type": "client_credentials"}}, 401, "invalid_client"),
        (
            {
                "data": {
                    "grant_type": "client_credentials",
                    "client_id": "vbc_nobody",
                    "client_secret": CLIENT_SECRET,
                }
            },
            401,
            "invalid_client",
        ),
        ({"headers": basic(CLIENT_ID, CLIENT_SECRET), "data": {}}, 400, "invalid_request"),
        (
            {"headers": basic(CLIENT_ID, CLIENT_SECRET), "data": {"grant_type": "password"}},
            400,
            "unsupported_grant_type",
        ),
        (
            {
                "headers": basic(CLIENT_ID, CLIENT_SECRET),
                "data": {"grant_type": "client_credentials", "client_id": CLIENT_ID},
            },
            400,
            "invalid_request",
        ),
        (
            {
                "headers": basic(CLIENT_ID, CLIENT_SECRET),
                "content": "grant_type=client_credentials&grant_type=client_credentials",
            },
            400,
            "invalid_request",
        ),
        (
            {
                "headers": {**basic(CLIENT_ID, CLIENT_SECRET), "Content-Type": "text/plain"},
                "content": "grant_type=client_credentials",
            },
            400,
            "invalid_request",
        ),
        ({"headers": {"Authorization": "Basic !!!"}, "data": {}}, 401, "invalid_client"),
    ],
    ids=[
        "wrong-secret",
        "no-credentials",
        "unknown-client",
        "no-grant",
        "other-grant",
        "two-ways",
        "repeated",
        "wrong-type",
        "broken-basic",
    ],
)
def test_token_endpoint_errors_follow_rfc_6749(
    oauth_bridge: RunningBridge, logs: LogCapture, how: dict[str, Any], status: int, error: str
) -> None:
    answer = fetch_token(oauth_bridge.url, **how)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error and body["error_description"]
    assert answer.headers["Cache-Control"] == "no-store"
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert CLIENT_SECRET not in answer.text and CLIENT_SECRET not in logs.text
    logs.wait_for(lambda line: f"POST /oauth/token {status}" in line)


def test_without_oauth_there_is_no_token_endpoint(bridge: RunningBridge) -> None:
    answer = fetch_token(bridge.url, data={"grant_type": "client_credentials"})
    assert answer.status_code == 404
    token = OAuthClient(CLIENT_ID, CLIENT_SECRET).issue()
    assert chat(bridge.url, token, stream=False).status_code == 401


def test_configure_key_oauth_creates_a_private_client(isolated_env: Path) -> None:
    created = run_cli("configure-key", "--oauth")
    assert created.returncode == 0, created.stderr
    client_id, client_secret = created.stdout.split()
    data = stored(isolated_env)
    assert (data["oauth_client_id"], data["oauth_client_secret"]) == (client_id, client_secret)
    if os.name == "posix":
        assert stat.S_IMODE((isolated_env / "config.json").stat().st_mode) == 0o600
    shown = run_cli("configure-key", "--show").stdout
    assert client_id in shown and client_secret not in shown
    kept = run_cli("configure-key", "--oauth")
    assert kept.returncode == 2 and "--yes" in kept.stderr and kept.stdout == ""
    assert stored(isolated_env)["oauth_client_secret"] == client_secret
    replaced = run_cli("configure-key", "--oauth", "--yes")
    assert replaced.returncode == 0 and replaced.stdout.split()[1] != client_secret
    removed = run_cli("configure-key", "--remove", "--oauth")
    assert "Removed the stored OAuth2 client" in removed.stderr
    assert "oauth_client_secret" not in stored(isolated_env)
    mixed = run_cli("configure-key", "--oauth", "--stdin")
    assert mixed.returncode == 2 and "does not take --stdin" in mixed.stderr


def test_serve_oauth_prints_what_vapi_asks_for_and_issues_tokens(isolated_env: Path) -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0", "--oauth") as serve:
        url = serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        data = stored(isolated_env)
        client_id, client_secret = data["oauth_client_id"], data["oauth_client_secret"]
        answer = fetch_token(
            url, headers=basic(client_id, client_secret), data={"grant_type": "client_credentials"}
        )
        assert answer.status_code == 200
        assert chat(url, answer.json()["access_token"], stream=False).status_code == 200
        assert serve.stop() == 0
    lines = serve.err_lines
    assert lines[lines.index("Token URL") + 1] == url + "/oauth/token"
    assert lines[lines.index("Client ID") + 1] == client_id
    masked = lines[lines.index("Client secret") + 1]
    assert masked.startswith(keystore.mask(client_secret) + "  (masked")
    assert client_secret not in serve.stderr


def test_serve_oauth_shows_the_secret_whole_on_a_terminal_and_takes_env_values(
    isolated_env: Path,
) -> None:
    env = {
        "TTY_COMPATIBLE": "1",
        "VAPI_BRIDGE_OAUTH_CLIENT_ID": CLIENT_ID,
        "VAPI_BRIDGE_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
    }
    with Serve("--demo", "--no-tunnel", "--port", "0", "--oauth", env=env) as serve:
        url = serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        answer = fetch_token(
            url, headers=basic(CLIENT_ID, CLIENT_SECRET), data={"grant_type": "client_credentials"}
        )
        assert answer.status_code == 200
        assert serve.stop() == 0
    lines = [line.strip() for line in serve.err_lines]
    assert CLIENT_SECRET in lines, "the secret alone on its line, to copy whole"
    assert "oauth_client_id" not in stored(isolated_env), "values from the environment stay there"


def test_oauth_and_no_auth_contradict_each_other() -> None:
    result = run_cli("serve", "--demo", "--no-tunnel", "--oauth", "--no-auth")
    assert result.returncode == 2 and "contradict" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_non_ascii_digit_in_a_token_is_a_401_not_a_crash(
    oauth_bridge: RunningBridge, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """'²' passes str.isdigit() but not int(): a client must not be able to cause a 500."""
    token = TOKEN_PREFIX.encode() + b"\xb2.x"
    refused = httpx.post(
        oauth_bridge.url + "/chat/completions",
        json=vapi_request(),
        headers={b"Authorization": b"Bearer " + token},
    )
    assert refused.status_code == 401
    assert "Traceback" not in logs.text and not fake.requests
