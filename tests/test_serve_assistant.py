"""`serve --assistant`: the fake Vapi's assistant points at the tunnel while the bridge runs,
and is put back when it stops; Vapi failures are one line and the bridge keeps serving."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.sambanova import FakeSambaNova
from tests.fakes.vapi_api import GOOD_KEY, FakeVapi
from tests.helpers import SECRET, vapi_request
from tests.process import Serve, run_cli, tunnel_env

MODEL: dict[str, Any] = {
    "provider": "openai",
    "model": "gpt-4o",
    "messages": [{"role": "system", "content": "You are Riley."}],
    "tools": [{"type": "function", "function": {"name": "book", "parameters": {}}}],
    "maxTokens": 180,
}


def vapi_env(vapi: FakeVapi) -> dict[str, str]:
    return {"VAPI_API_KEY": GOOD_KEY, "VAPI_BASE_URL": vapi.base_url}


HOST = "riley-test.ngrok-free.app"


@contextlib.contextmanager
def serve_wired(
    fake: FakeSambaNova, tmp_path: Path, vapi: FakeVapi, *extra: str, **env_extra: str
) -> Iterator[tuple[Serve, str, str]]:
    """``serve --assistant`` for a new assistant Riley, once wired: the bridge, Riley's id,
    and the public URL (the fake host does not resolve: see :func:`tunnel_side`)."""
    riley = vapi.add(name="Riley", model=copy.deepcopy(MODEL))["id"]
    env, args, _ = tunnel_env(fake, tmp_path)
    env = {**env, **vapi_env(vapi), "FAKE_NGROK_HOST": HOST, **env_extra}
    with Serve(*args, "--assistant", riley, *extra, env=env) as serve:
        public = serve.stdout_line()
        serve.wait_stderr(lambda line: "now uses this bridge" in line)
        yield serve, riley, public


def tunnel_side(public: str) -> str:
    """The public URL through the tunnel's loopback side, as Vapi would reach it."""
    return public.replace(HOST, "127.0.0.1")


def chat_through_tunnel(public: str, bearer: str) -> int:
    """The status of a turn sent as Vapi sends it, with this credential."""
    reply = httpx.post(
        tunnel_side(public) + "/chat/completions",
        json=vapi_request(),
        headers={"Authorization": f"Bearer {bearer}"},
    )
    return reply.status_code


def assert_restored(vapi: FakeVapi, riley: str) -> None:
    restored = vapi.get(riley)
    assert restored["model"] == MODEL
    assert not any(c.get("provider") == "custom-llm" for c in restored.get("credentials", []))


def test_serve_wires_the_assistant_to_the_tunnel_and_ctrl_c_puts_it_back(
    fake: FakeSambaNova, tmp_path: Path
) -> None:
    with FakeVapi() as vapi:
        with serve_wired(fake, tmp_path, vapi) as (serve, riley, public):
            assert public.startswith(f"http://{HOST}:")
            wired = vapi.get(riley)
            assert wired["model"]["provider"] == "custom-llm"
            assert wired["model"]["url"] == public
            assert wired["model"]["messages"] == MODEL["messages"]
            assert wired["model"]["tools"] == MODEL["tools"]
            assert wired["model"]["maxTokens"] == 180
            credential = next(c for c in wired["credentials"] if c["provider"] == "custom-llm")
            assert credential["apiKey"] == SECRET
            # The credential Vapi will send is accepted (the fake host does not resolve, so
            # through the tunnel's loopback side).
            assert chat_through_tunnel(public, credential["apiKey"]) == 200
            assert serve.stop("SIGINT") == 0
        assert_restored(vapi, riley)
        assert GOOD_KEY not in serve.stderr + "".join(serve.err_lines)


def test_a_vapi_failure_is_one_line_and_the_bridge_keeps_serving(fake: FakeSambaNova) -> None:
    with FakeVapi() as vapi:
        env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
        args = ["--port", "0", "--secret", SECRET, "--public-url", "https://bridge.example.com"]
        with Serve(*args, "--assistant", "no-such-assistant", env={**env, **vapi_env(vapi)}) as s:
            assert s.stdout_line() == "https://bridge.example.com"
            line = s.wait_stderr(lambda line: "Assistant not wired" in line)
            assert "404" in line or "not found" in line.lower()
            assert run_cli("test", "--json").returncode == 0, "still serving"
            assert s.stop() == 0
        assert "Traceback" not in s.stderr and GOOD_KEY not in s.stderr


def test_assistant_flags_need_their_key_and_each_other() -> None:
    no_key = run_cli("serve", "--demo", "--no-tunnel", "--assistant", "abc")
    assert no_key.returncode == 2 and "configure-key --vapi" in no_key.stderr
    alone = run_cli("serve", "--demo", "--no-tunnel", "--keep-assistant")
    assert alone.returncode == 2 and "--keep-assistant needs --assistant" in alone.stderr


def test_serve_oauth_wires_the_oauth2_credential_vapi_then_uses(
    fake: FakeSambaNova, tmp_path: Path
) -> None:
    client_id, client_secret = "vb_client_test", "vb_oauth_secret_0123456789abcdef"
    oauth_env = {
        "VAPI_BRIDGE_OAUTH_CLIENT_ID": client_id,
        "VAPI_BRIDGE_OAUTH_CLIENT_SECRET": client_secret,
    }
    with FakeVapi() as vapi:
        with serve_wired(fake, tmp_path, vapi, "--oauth", **oauth_env) as (serve, riley, public):
            wired = vapi.get(riley)
            (credential,) = [c for c in wired["credentials"] if c["provider"] == "custom-llm"]
            plan = credential["authenticationPlan"]
            assert plan == {
                "type": "oauth2",
                "url": public + "/oauth/token",
                "clientId": client_id,
                "clientSecret": client_secret,
            }
            # What Vapi does with the plan: a token from the token URL, then the chat with it.
            token = httpx.post(
                tunnel_side(plan["url"]),
                data={"grant_type": "client_credentials"},
                auth=(plan["clientId"], plan["clientSecret"]),
            ).json()["access_token"]
            assert chat_through_tunnel(public, token) == 200
            assert serve.stop("SIGINT") == 0
        assert_restored(vapi, riley)
        assert client_secret not in serve.stderr + "".join(serve.err_lines)
