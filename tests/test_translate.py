"""Translation rules that do not need a server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import vapi_request
from vapi_bridge.errors import InvalidRequest
from vapi_bridge.translate import FORWARDED_PARAMS, translate

DEFAULT = "Meta-Llama-3.3-70B-Instruct"


def params(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return translate(body, default_model=DEFAULT, **kwargs).params


def test_fixture_keeps_chat_fields_and_drops_vapi_fields() -> None:
    request = translate(vapi_request(), default_model=DEFAULT)
    assert set(request.params) <= FORWARDED_PARAMS
    assert request.call_id == "8f1c2a3e-0d55-4f6b-9a31-6a0e2c9b7d10"
    assert request.metadata == {"campaign": "winter-reminders"}
    assert request.stream and not request.include_usage
    assert request.params["stream_options"] == {"include_usage": True}


def test_unknown_message_keys_are_dropped() -> None:
    body = {"messages": [{"role": "user", "content": "hi", "time": 1, "secret": "x"}]}
    assert params(body)["messages"] == [{"role": "user", "content": "hi"}]


def test_assistant_tool_calls_with_object_arguments_are_serialised() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    body = {
        "messages": [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    }
    sent = params(body)["messages"]
    assert sent[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert sent[0]["content"] is None
    assert sent[1] == {"role": "tool", "tool_call_id": "c1", "content": "ok"}


def test_model_map_and_forced_model() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert params(body, model_map={"gpt-4o": "gpt-oss-120b"})["model"] == "gpt-oss-120b"
    assert params(body, forced_model="X", model_map={"gpt-4o": "Y"})["model"] == "X"
    assert params(body)["model"] == "gpt-4o"


def test_null_optional_fields_are_treated_as_absent() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": None, "tools": None}
    assert params(body) == {"model": DEFAULT, "messages": body["messages"], "stream": False}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": True},
        {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "sometimes"},
        {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "function", "content": "x"}]},
    ],
)
def test_invalid_bodies_raise_with_param(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate(body, default_model=DEFAULT)
    assert caught.value.status == 400 and "`" in caught.value.message
