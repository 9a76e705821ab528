"""The official OpenAI Python client, pointed at the bridge, parses what it streams."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, tool_chunks
from tests.helpers import BridgeFactory, RunningBridge, vapi_request


def client(bridge: RunningBridge) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.url, api_key=bridge.secret, max_retries=0)


def test_streamed_reply_parses(bridge: RunningBridge) -> None:
    request = vapi_request()
    stream = client(bridge).chat.completions.create(
        model=request["model"],
        messages=request["messages"],
        stream=True,
        extra_body={"call": request["call"], "metadata": request["metadata"]},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sure! Let me check Tuesday for you."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_tool_call_parses(bridge: RunningBridge, fake: FakeSambaNova) -> None:
    fake.push(Script(chunks=tool_chunks(with_index=False)))
    request = vapi_request()
    stream = client(bridge).chat.completions.create(
        model=request["model"], messages=request["messages"], tools=request["tools"], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += (call.function and call.function.name) or ""
                entry["arguments"] += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert calls[0]["name"] == "check_availability"
    assert json.loads(calls[0]["arguments"]) == {"date": "2026-12-01"}
    assert finish == "tool_calls"


def test_non_streamed_reply_parses(bridge: RunningBridge) -> None:
    completion = client(bridge).chat.completions.create(
        model="Meta-Llama-3.3-70B-Instruct", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Sure! Let me check Tuesday for you."


def test_errors_surface_as_openai_exceptions(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(no_apology=True)
    with pytest.raises(openai.RateLimitError) as caught:
        client(bridge).chat.completions.create(
            model="fail-429", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert "rate limit" in str(caught.value)
    bad = openai.OpenAI(base_url=bridge.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
