"""Prompt control, model mapping, hooks, transcripts and JSON logs, through the real server."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import PRIVATE_VALUES, BridgeFactory, LogCapture, sse_events, vapi_request
from tests.process import Serve
from vapi_bridge.middleware import build_middleware
from vapi_bridge.settings import Settings

ORIGINAL = vapi_request()["messages"][0]["content"]


def system_sent(fake: FakeSambaNova) -> str:
    messages: list[dict[str, Any]] = fake.last.body["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("replace", "Be brief."),
        ("prepend", f"Be brief.\n\n{ORIGINAL}"),
        ("append", f"{ORIGINAL}\n\nBe brief."),
    ],
)
def test_system_prompt_modes(
    start_bridge: BridgeFactory, fake: FakeSambaNova, mode: str, expected: str
) -> None:
    bridge = start_bridge(system_prompt="Be brief.", system_prompt_mode=mode)
    assert bridge.post(vapi_request()).status_code == 200
    assert system_sent(fake) == expected


def test_system_prompt_is_inserted_when_vapi_sent_none(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(system_prompt="Be brief.", system_prompt_mode="append")
    body = {**vapi_request(), "messages": vapi_request()["messages"][1:]}
    bridge.post(body)
    assert system_sent(fake) == "Be brief."
    assert len(fake.last.body["messages"]) == 3


def test_prompt_file_edit_applies_without_restart(
    start_bridge: BridgeFactory, fake: FakeSambaNova, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Version one.\n")
    bridge = start_bridge(system_prompt_file=prompt)
    bridge.post(vapi_request())
    assert system_sent(fake) == "Version one."
    prompt.write_text("Version two, edited while serving.\n")
    bridge.post(vapi_request())
    assert system_sent(fake) == "Version two, edited while serving."
    prompt.unlink()
    bridge.post(vapi_request())
    assert system_sent(fake) == "Version two, edited while serving.", "last good text is kept"


def test_model_map_routes_vapi_names(start_bridge: BridgeFactory, fake: FakeSambaNova) -> None:
    bridge = start_bridge(model_map=(("gpt-4o", "gpt-oss-120b"),))
    bridge.post({**vapi_request(), "model": "gpt-4o"})
    assert fake.last.body["model"] == "gpt-oss-120b"
    bridge.post(vapi_request())
    assert fake.last.body["model"] == "Meta-Llama-3.3-70B-Instruct"


HOOKS = """
import threading
from vapi_bridge.hooks import HookReply, HookRequest

replies: list[HookReply] = []
replied = threading.Event()

def add_date(request: HookRequest) -> HookRequest:
    request.messages[0]["content"] += " Today is Tuesday."
    request.params["temperature"] = 0.1
    request.params["call"] = "hooks cannot smuggle fields upstream"
    return request

def in_place(request: HookRequest) -> None:
    request.model = "gpt-oss-120b"

def broken(request: HookRequest) -> HookRequest:
    raise ValueError("hook bug")

def record(reply: HookReply) -> None:
    replies.append(reply)
    replied.set()
"""


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_hooks_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HOOKS))
    monkeypatch.chdir(tmp_path)
    return name


def test_request_hooks_change_what_upstream_receives(
    start_bridge: BridgeFactory, fake: FakeSambaNova, hook_module: str
) -> None:
    bridge = start_bridge(hooks=(f"{hook_module}:add_date", f"{hook_module}:in_place"))
    assert bridge.post(vapi_request()).status_code == 200
    assert system_sent(fake) == ORIGINAL + " Today is Tuesday."
    assert fake.last.body["temperature"] == 0.1
    assert fake.last.body["model"] == "gpt-oss-120b"
    assert "call" not in fake.last.body and fake.last.body["stream"] is True


def test_failing_hook_answers_vapi_fast_and_server_keeps_serving(
    start_bridge: BridgeFactory, fake: FakeSambaNova, hook_module: str, logs: LogCapture
) -> None:
    bridge = start_bridge(hooks=(f"{hook_module}:broken",))
    response = bridge.post(vapi_request())  # an answer within the timeout, not a hang
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "hook_failed" and "ValueError" in error["message"]
    assert "hook bug" not in error["message"]
    assert not fake.requests
    logs.wait_for(lambda line: "request hook" in line and "ValueError: hook bug" in line)
    assert bridge.post(vapi_request()).status_code == 500, "still serving"


def test_reply_hook_gets_the_finished_reply(start_bridge: BridgeFactory, hook_module: str) -> None:
    bridge = start_bridge(reply_hooks=(f"{hook_module}:record",))
    bridge.post(vapi_request())
    module = sys.modules[hook_module]
    assert module.replied.wait(5)
    reply = module.replies[0]
    assert reply.text == "Sure! Let me check Tuesday for you."
    assert reply.call_id == "8f1c2a3e-0d55-4f6b-9a31-6a0e2c9b7d10"
    assert reply.ttft_ms is not None and reply.total_ms is not None
    assert reply.usage["completion_tokens"] == 41 and reply.outcome == "ok"


def test_bad_hook_spec_is_a_config_error(tmp_path: Path) -> None:
    from vapi_bridge.errors import ConfigError

    with pytest.raises(ConfigError, match="module:function"):
        build_middleware(Settings(home=tmp_path, hooks=("nocolon",)))
    with pytest.raises(ConfigError, match="Cannot import"):
        build_middleware(Settings(home=tmp_path, hooks=("no_such_module_xyz:f",)))
    with pytest.raises(ConfigError, match="'json' has no function 'nope'"):
        build_middleware(Settings(home=tmp_path, hooks=("json:nope",)))
    with pytest.raises(ConfigError, match=r"'json.__name__' is a str, not a function"):
        build_middleware(Settings(home=tmp_path, hooks=("json:__name__",)))


def test_no_middleware_means_nothing_on_the_request_path(tmp_path: Path) -> None:
    middleware = build_middleware(Settings(home=tmp_path))
    assert middleware.prepare is None and middleware.on_reply is None


def test_transcript_has_every_turn_and_no_secret(
    start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "transcripts"
    bridge = start_bridge(transcript_dir=directory)
    body = vapi_request()
    bridge.post(body)
    body["messages"] += [
        {"role": "assistant", "content": "Sure! Let me check Tuesday for you."},
        {"role": "user", "content": "Call me back on +1 415 555 0123 please."},
    ]
    bridge.post(body)
    bridge.post({**body, "stream": False})
    bridge.bridge.middleware.close()
    (path,) = list(directory.iterdir())
    assert path.name == "8f1c2a3e-0d55-4f6b-9a31-6a0e2c9b7d10.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    turns = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(turns) == 3
    assert turns[0]["caller"] == [{"role": "user", "content": body["messages"][2]["content"]}]
    assert turns[1]["caller"][0]["content"] == "Call me back on +* *** *** **23 please."
    for turn in turns:
        assert turn["reply"] == "Sure! Let me check Tuesday for you."
        assert turn["ttft_ms"] is not None and turn["usage"]["total_tokens"] > 0
    text = path.read_text()
    for value in PRIVATE_VALUES:
        assert value not in text


def test_json_log_format(start_bridge: BridgeFactory, logs: LogCapture) -> None:
    bridge = start_bridge(log_format="json")
    bridge.post(vapi_request())
    line = json.loads(logs.wait_for(lambda line: line.startswith("{")))
    assert line["status"] == 200 and line["call_id"].startswith("8f1c2a3e")
    assert line["chunks"] == 4 and line["completion_tokens"] == 41 and "ttft_ms" in line


def test_serve_panel_shows_the_model_map() -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0", "--model-map", "gpt-4o=gpt-oss-120b") as s:
        s.stdout_line()
        s.wait_stderr(lambda line: "gpt-4o -> gpt-oss-120b" in line)
        assert s.stop() == 0


def test_example_hook_adds_the_date(
    start_bridge: BridgeFactory, fake: FakeSambaNova, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent / "examples")
    bridge = start_bridge(hooks=("hooks_example:add_date",))
    bridge.post(vapi_request())
    assert "Today is " in system_sent(fake)
    events = sse_events(bridge.post(vapi_request()))
    assert events[-1] == "[DONE]"
