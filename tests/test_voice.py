"""What the caller hears, end to end: reasoning never spoken, controls sent, markup removed.

Through the real bridge, the real SambaNova SDK and the fake's reasoning families, read back
by the official OpenAI client (what Vapi's JS client is modelled on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.sambanova import MODEL_IDS, REPLY, THOUGHTS, FakeSambaNova, Script, text_chunks
from tests.helpers import BridgeFactory, LogCapture, sse_events, vapi_request
from tests.process import Serve, run_cli

SPOKEN = "".join(REPLY)
SHAPES = ["gpt-oss-120b", "DeepSeek-R1-0528", "rc/DeepSeek-R1-0528", "MiniMax-M2.5"]


def spoken_and_transcript(
    start_bridge: BridgeFactory, tmp_path: Path, model: str, stream: bool
) -> tuple[str, dict[str, Any]]:
    bridge = start_bridge(transcript_dir=tmp_path / "t", reasoning="medium")
    client = openai.OpenAI(base_url=bridge.url, api_key=bridge.secret, max_retries=0)
    request = vapi_request()
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": request["messages"],
        "extra_body": {"call": request["call"]},
    }
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    bridge.stop()  # drains the transcript writer
    (path,) = (tmp_path / "t").iterdir()
    return text, json.loads(path.read_text().splitlines()[-1])


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("model", SHAPES)
def test_reasoning_is_never_spoken_and_kept_in_the_transcript(
    start_bridge: BridgeFactory, tmp_path: Path, model: str, stream: bool
) -> None:
    text, line = spoken_and_transcript(start_bridge, tmp_path, model, stream)
    assert text == SPOKEN
    assert all(thought.strip() not in text for thought in THOUGHTS)
    assert "think>" not in text
    assert THOUGHTS[0] in line["reasoning"] and line["reply"] == SPOKEN


@pytest.mark.parametrize(
    ("reasoning", "model", "sent"),
    [
        ("off", "gpt-oss-120b", {"reasoning_effort": "low", "max_tokens": 250 + 1024}),
        ("off", "DeepSeek-V3.1", {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            "high",
            "DeepSeek-V3.1",
            {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": 250 + 1024},
        ),
        ("model", "gpt-oss-120b", {}),
        ("model", "DeepSeek-V3.1", {}),
        ("off", "Meta-Llama-3.3-70B-Instruct", {}),
    ],
)
def test_reasoning_controls_reach_sambanova(
    start_bridge: BridgeFactory,
    fake: FakeSambaNova,
    reasoning: str,
    model: str,
    sent: dict[str, Any],
) -> None:
    bridge = start_bridge(reasoning=reasoning)
    assert bridge.post({**vapi_request(), "model": model, "max_tokens": 250}).status_code == 200
    body = fake.last.body
    for key in ("reasoning_effort", "chat_template_kwargs"):
        assert body.get(key) == sent.get(key)
    assert body["max_tokens"] == sent.get("max_tokens", 250)


def test_a_request_that_sets_the_controls_itself_wins(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge()
    body = {**vapi_request(), "model": "gpt-oss-120b", "reasoning_effort": "high"}
    assert bridge.post(body).status_code == 200
    assert fake.last.body["reasoning_effort"] == "high"


def test_markup_and_emoji_are_not_spoken_unless_the_filter_is_off(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    parts = ["## Your ", "options\n", "- **Tues", "day** at 3 ", "🎉\n"]
    fake.push(Script(chunks=text_chunks(parts)), Script(chunks=text_chunks(parts)))
    filtered = start_bridge().post(vapi_request())
    raw = start_bridge(speech_filter=False).post(vapi_request())

    def heard(response: Any) -> str:
        events = sse_events(response)[:-1]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in events)

    assert heard(raw) == "".join(parts)
    assert heard(filtered) == "Your options\nTuesday at 3 \n"
    logs.wait_for(lambda line: "ttfs=" in line)


def test_the_request_log_reports_thinking_time(
    start_bridge: BridgeFactory, logs: LogCapture
) -> None:
    bridge = start_bridge(reasoning="medium")
    assert bridge.post({**vapi_request(), "model": "gpt-oss-120b"}).status_code == 200
    line = logs.wait_for(lambda line: "model=gpt-oss-120b" in line)
    assert "think=" in line and "ttfs=" in line


def test_models_lists_the_upstreams_models_with_their_traits(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    result = run_cli("models", "--json", env={**env, "VAPI_BRIDGE_MODEL": "gpt-oss-120b"})
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(MODEL_IDS)
    assert rows["gpt-oss-120b"]["family"] == "gpt-oss" and rows["gpt-oss-120b"]["serving"]
    assert rows["Meta-Llama-3.3-70B-Instruct"]["default"]
    assert rows["DeepSeek-R1-0528"]["tools"] == "no"
    table = run_cli("models", env=env)
    assert "default, serve" in table.stdout and "DeepSeek-V3.1" in table.stdout
    missing = run_cli("models")
    assert missing.returncode == 2 and "configure-key" in missing.stderr


def test_serve_warns_in_the_background_about_a_model_sambanova_does_not_list(
    fake: FakeSambaNova,
) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    args = ("--no-tunnel", "--port", "0", "--model", "No-Such-Model")
    with Serve(*args, "--fallback-model", "No-Such-Fallback", env=env) as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: "does not list model 'No-Such-Model'" in line)
        serve.wait_stderr(lambda line: "does not list model 'No-Such-Fallback'" in line)
        assert serve.stop() == 0


def test_models_never_cuts_a_model_id(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    for columns in ("60", "80"):
        table = run_cli("models", env={**env, "COLUMNS": columns}).stdout
        for model in MODEL_IDS:
            assert model in table, (columns, table)
