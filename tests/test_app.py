"""The HTTP app end to end: real server, real SambaNova SDK, fake SambaNova on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, chunk, tool_chunks
from tests.helpers import (
    PRIVATE_VALUES,
    SECRET,
    BridgeFactory,
    LogCapture,
    RunningBridge,
    sse_events,
    text_of,
    vapi_request,
)
from vapi_bridge.translate import FORWARDED_PARAMS


def chunks_of(events: list[Any]) -> list[dict[str, Any]]:
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk"
        assert isinstance(event["choices"], list)
        assert isinstance(event["created"], int)
        assert isinstance(event["id"], str) and event["model"]
    return events[:-1]


@pytest.mark.parametrize(
    "path", ["/chat/completions", "/v1/chat/completions", "/chat/completions/chat/completions"]
)
def test_streams_vapi_request_on_every_chat_path(bridge: RunningBridge, path: str) -> None:
    response = bridge.post(vapi_request(), path=path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    chunks = chunks_of(sse_events(response))
    assert text_of(chunks) == "Sure! Let me check Tuesday for you."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in chunks), "usage-only chunk was not asked for"


def test_usage_chunk_forwarded_only_when_asked(bridge: RunningBridge) -> None:
    body = {**vapi_request(), "stream_options": {"include_usage": True}}
    chunks = chunks_of(sse_events(bridge.post(body)))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 41


def test_vapi_fields_and_secrets_never_reach_upstream(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    request = vapi_request()
    assert bridge.post(request).status_code == 200
    sent = fake.last.body
    assert set(sent) <= FORWARDED_PARAMS
    assert not {"call", "customer", "phoneNumber", "metadata"} & set(sent)
    raw = json.dumps(sent)
    for value in PRIVATE_VALUES:
        assert value not in raw
    assert sent["messages"] == request["messages"]
    assert sent["tools"] == request["tools"]
    assert sent["max_tokens"] == 250 and sent["temperature"] == 0.5
    assert sent["stream"] is True
    headers = {k.lower(): v for k, v in fake.last.headers.items()}
    assert headers["authorization"] == "Bearer test-key"
    assert headers["x-api-key"] == "test-key"
    assert SECRET not in json.dumps(headers)


def test_non_streaming_returns_chat_completion(bridge: RunningBridge) -> None:
    response = bridge.post({**vapi_request(), "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["created"] == 1737583288
    assert body["choices"][0]["message"]["content"] == "Sure! Let me check Tuesday for you."


@pytest.mark.parametrize("stream", [True, False])
def test_an_apology_is_marked_in_a_header(bridge: RunningBridge, stream: bool) -> None:
    """A whole reply has no SSE comment to carry the mark; `vapi-bridge test` reads this one."""
    apology = bridge.post({**vapi_request(), "model": "fail-503", "stream": stream})
    assert apology.status_code == 200
    assert apology.headers["X-Vapi-Bridge-Outcome"] == "apology"
    answer = bridge.post({**vapi_request(), "stream": stream})
    assert answer.status_code == 200 and "X-Vapi-Bridge-Outcome" not in answer.headers


@pytest.mark.parametrize("with_index", [True, False])
def test_tool_call_deltas_always_carry_index(
    bridge: RunningBridge, fake: FakeSambaNova, with_index: bool
) -> None:
    fake.push(Script(chunks=tool_chunks(with_index=with_index)))
    chunks = chunks_of(sse_events(bridge.post(vapi_request())))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls and all(call["index"] == 0 for call in calls)
    assert calls[0]["id"] == "call_abc" and calls[0]["type"] == "function"
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    assert json.loads(arguments) == {"date": "2026-12-01"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_second_parallel_tool_call_without_index_gets_its_own(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    first = {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}}
    second = {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}
    fake.push(
        Script(
            chunks=[
                chunk({"tool_calls": [first]}),
                chunk({"tool_calls": [second]}),
                chunk({}, "tool_calls"),
            ]
        )
    )
    chunks = chunks_of(sse_events(bridge.post(vapi_request())))
    indexes = [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in chunks[:2]]
    assert indexes == [0, 1]


def test_float_created_and_missing_choices_are_repaired(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    broken = {**chunk({"content": "Hi"}), "created": 1771518114.75}
    fake.push(Script(chunks=[broken, {**chunk({}), "choices": None}, chunk({}, "stop")]))
    chunks = chunks_of(sse_events(bridge.post(vapi_request())))
    assert chunks[0]["created"] == 1771518114
    assert text_of(chunks) == "Hi"


def test_forced_model_overrides_vapi_model(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(model="gpt-oss-120b")
    assert bridge.post({**vapi_request(), "model": "gpt-4o"}).status_code == 200
    assert fake.last.body["model"] == "gpt-oss-120b"


def test_missing_model_uses_default(bridge: RunningBridge, fake: FakeSambaNova) -> None:
    body = vapi_request()
    del body["model"]
    assert bridge.post(body).status_code == 200
    assert fake.last.body["model"] == "Meta-Llama-3.3-70B-Instruct"


def test_legacy_functions_are_converted_to_tools(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    body: dict[str, Any] = {
        "model": "Meta-Llama-3.3-70B-Instruct",
        "stream": True,
        "functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}],
        "function_call": "auto",
        "messages": [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "lookup", "arguments": "{}"},
            },
            {"role": "function", "name": "lookup", "content": "42"},
        ],
    }
    assert bridge.post(body).status_code == 200
    sent = fake.last.body
    assert sent["tools"] == [{"type": "function", "function": body["functions"][0]}]
    assert sent["tool_choice"] == "auto"
    call = sent["messages"][1]["tool_calls"][0]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call["id"], "content": "42"}
    assert "functions" not in sent and "function_call" not in sent


def test_rejected_sambanova_key_does_not_read_like_a_vapi_credential(
    bridge: RunningBridge,
) -> None:
    response = bridge.post({**vapi_request(), "model": "fail-401"})
    message = response.json()["error"]["message"]
    assert response.status_code != 401
    assert "not about the Vapi credential" in message and "configure-key" in message


def test_rate_limit_passes_retry_after(start_bridge: BridgeFactory, fake: FakeSambaNova) -> None:
    bridge = start_bridge(no_apology=True)
    limited = Script(
        kind="status",
        status=429,
        headers={"Retry-After": "30"},
        body={"error": {"message": "slow down", "code": "rate_limit"}},
    )
    fake.push(limited)
    response = bridge.post(vapi_request())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert len(fake.requests) == 1, "a Retry-After beyond the deadline is not waited for"


def test_transient_upstream_failure_is_retried_before_first_byte(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    fake.push(Script(kind="status", status=503, body={"error": {"message": "busy"}}))
    response = bridge.post(vapi_request())
    assert response.status_code == 200
    assert len(fake.requests) == 2


def test_client_hangup_closes_upstream_stream(
    bridge: RunningBridge, fake: FakeSambaNova, logs: LogCapture
) -> None:
    with httpx.stream(
        "POST",
        bridge.url + "/chat/completions",
        headers=bridge.headers(),
        json={**vapi_request(), "model": "long"},
        timeout=10,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    assert fake.abandoned_event.wait(5), "upstream stream was not closed after the client left"
    assert fake.wait_no_open_streams(5)
    logs.wait_for(lambda line: "outcome=client_closed" in line)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {SECRET}"},
        {"X-Api-Key": SECRET},
    ],
)
def test_requests_without_the_bridge_key_are_refused(
    bridge: RunningBridge, fake: FakeSambaNova, headers: dict[str, str]
) -> None:
    response = httpx.post(bridge.url + "/chat/completions", json=vapi_request(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert not fake.requests


@pytest.mark.parametrize("value", [f"Bearer {SECRET}", SECRET, f"bearer  {SECRET}"])
def test_bearer_or_bare_key_is_accepted(bridge: RunningBridge, value: str) -> None:
    response = httpx.post(
        bridge.url + "/chat/completions", json=vapi_request(), headers={"Authorization": value}
    )
    assert response.status_code == 200


def test_no_auth_accepts_requests_without_a_key(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(secret=None, no_auth=True)
    response = httpx.post(bridge.url + "/chat/completions", json=vapi_request())
    assert response.status_code == 200


def test_health_needs_no_auth_and_no_upstream(bridge: RunningBridge, fake: FakeSambaNova) -> None:
    response = httpx.get(bridge.url + "/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert not fake.requests


@pytest.mark.parametrize("path", ["/models", "/v1/models"])
def test_models_lists_in_openai_shape(start_bridge: BridgeFactory, path: str) -> None:
    bridge = start_bridge(model_map=(("gpt-4o", "gpt-oss-120b"),))
    body = httpx.get(bridge.url + path, headers=bridge.headers()).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["Meta-Llama-3.3-70B-Instruct", "gpt-4o"]
    assert httpx.get(bridge.url + path).status_code == 401


BAD_REQUESTS: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "invalid_json"),
    (b"\xff\xfe\x00garbage", 400, "invalid_json"),
    ([1, 2], 400, "invalid_body"),
    ({"model": "m"}, 400, "invalid_parameter"),
    ({"messages": []}, 400, "invalid_parameter"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_parameter"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_parameter"),
    (
        {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        400,
        "invalid_parameter",
    ),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "invalid_parameter"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "invalid_parameter"),
    (
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web"}]},
        400,
        "invalid_parameter",
    ),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_REQUESTS)
def test_bad_input_gets_openai_style_4xx(
    bridge: RunningBridge, fake: FakeSambaNova, body: Any, status: int, code: str
) -> None:
    response = bridge.post(body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert not fake.requests
    assert bridge.post(vapi_request()).status_code == 200, "the server keeps serving"


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413(start_bridge: BridgeFactory, chunked: bool) -> None:
    """Declared too long, or sent chunked (no declared length) and going on past the limit."""
    bridge = start_bridge(max_body=4096)
    raw = json.dumps({"messages": [{"role": "user", "content": "x" * 10_000}]}).encode()
    body = (raw[i : i + 1024] for i in range(0, len(raw), 1024)) if chunked else raw
    response = httpx.post(
        bridge.url + "/chat/completions", content=body, headers=bridge.headers(), timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert bridge.post(vapi_request()).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/v2/chat", 404),
        ("GET", "/chat/completions", 405),
        ("DELETE", "/v1/chat/completions", 405),
    ],
)
def test_unknown_routes_and_methods(
    bridge: RunningBridge, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, bridge.url + path, headers=bridge.headers())
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_logs_hold_call_id_timings_and_no_secrets(bridge: RunningBridge, logs: LogCapture) -> None:
    bridge.post(vapi_request())
    bridge.post({**vapi_request(), "model": "fail-401"})
    bridge.post(b"{broken", headers={"Authorization": "Bearer not-the-key-123"})
    line = logs.wait_for(lambda line: "call=8f1c2a3e" in line and " 200 " in line)
    assert "ttft=" in line and "total=" in line and "chunks=" in line and "tokens=21/41" in line
    logs.wait_for(lambda line: " 401 " in line and "invalid_api_key" in line)
    for secret in (*PRIVATE_VALUES, SECRET, "test-key", "not-the-key-123"):
        assert secret not in logs.text
    assert "Riley" not in logs.text, "no message content in logs"


def test_log_injection_through_call_id_is_neutralised(
    bridge: RunningBridge, logs: LogCapture
) -> None:
    body = {**vapi_request(), "call": {"id": "abc\n12:00:00 POST /fake 200 forged"}}
    bridge.post(body)
    line = logs.wait_for(lambda line: "call=" in line)
    assert "\n" not in line and "call=abc12:00:00POSTfake200forged" in line


def test_a_model_name_cannot_forge_a_log_line(bridge: RunningBridge, logs: LogCapture) -> None:
    forged = "m\n12:00:00 POST /admin 200 call=forged"
    response = bridge.post({**vapi_request(), "model": forged})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"
    logs.wait_for(lambda line: " 400 " in line)
    assert not any(line.startswith("12:00:00 POST /admin") for line in logs.text.splitlines())
    assert bridge.post(vapi_request()).status_code == 200
