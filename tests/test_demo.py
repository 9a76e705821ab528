"""The offline demo model through the real app: text, a tool call on request, tool results."""

from __future__ import annotations

import json

from tests.helpers import BridgeFactory, sse_events, vapi_request
from vapi_bridge.demo import DemoUpstream


def stream(start_bridge: BridgeFactory, body: dict[str, object]) -> list[dict[str, object]]:
    bridge = start_bridge(upstream=DemoUpstream(gap=0), demo=True)
    events = sse_events(bridge.post(body))
    assert events[-1] == "[DONE]"
    return events[:-1]


def test_demo_streams_text(start_bridge: BridgeFactory) -> None:
    chunks = stream(start_bridge, vapi_request())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)  # type: ignore[index]
    assert "vapi-bridge demo model" in text and "next Tuesday" in text


def test_demo_calls_a_tool_the_caller_names(start_bridge: BridgeFactory) -> None:
    body = vapi_request()
    body["messages"].append({"role": "user", "content": "Can you check availability for me?"})
    chunks = stream(start_bridge, body)
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]  # type: ignore[index]
    assert calls[0]["function"]["name"] == "check_availability" and calls[0]["index"] == 0
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"date": "demo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]


def test_demo_answers_a_tool_result(start_bridge: BridgeFactory) -> None:
    body = vapi_request()
    body["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "check_availability", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3pm is free"},
    ]
    chunks = stream(start_bridge, body)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)  # type: ignore[index]
    assert "3pm is free" in text


def test_demo_without_streaming(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(upstream=DemoUpstream(gap=0), demo=True)
    body = bridge.post({**vapi_request(), "stream": False}).json()
    assert body["object"] == "chat.completion"
    assert "demo model" in body["choices"][0]["message"]["content"]
