"""Generated bad input: the bridge never answers 5xx for a client's mistake, never hangs,
always answers with a well-formed OpenAI-style error, and never forwards a field outside its
whitelist or a value from Vapi's private fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import SECRET, RunningBridge, bridge_settings, run_bridge, vapi_request
from vapi_bridge.translate import FORWARDED_PARAMS, MESSAGE_KEYS

CANARY = "CANARY-do-not-forward-7731"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_bridge(
    fake_server: FakeSambaNova, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningBridge]:
    """One bridge for all examples; the model is forced so no name selects a fake failure."""
    home = tmp_path_factory.mktemp("fuzz")
    config = bridge_settings(
        Path(home),
        fake_server.base_url,
        model="Meta-Llama-3.3-70B-Instruct",
        max_body=256 * 1024,
    )
    running = run_bridge(config)
    yield running
    running.stop()


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just(CANARY),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(
    ["system", "user", "assistant", "tool", "function", "developer", "robot", "", None]
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": json_values | st.text(max_size=30),
            "name": json_values,
            "tool_calls": json_values,
            "tool_call_id": json_values,
            "function_call": json_values,
            CANARY: json_values,
        },
    ),
    max_size=5,
)
tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web", 3])},
        optional={
            "function": json_values
            | st.fixed_dictionaries(
                {"name": st.text(max_size=10)},
                optional={"parameters": json_values, "description": json_values},
            )
        },
    ),
    max_size=3,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        "model": json_values,
        "stream": json_values | st.booleans(),
        "temperature": json_values,
        "max_tokens": json_values,
        "top_p": json_values,
        "stop": json_values,
        "tools": tools | json_values,
        "tool_choice": json_values,
        "functions": json_values,
        "function_call": json_values,
        "stream_options": json_values,
        "n": json_values,
        "call": st.just({"id": "call-1", "serverUrlSecret": CANARY}) | json_values,
        "phoneNumber": st.just({"twilioAuthToken": CANARY}),
        "metadata": json_values,
        "customer": json_values,
        "assistant": json_values,
        "credentials": json_values,
        CANARY: json_values,
    },
)


def assert_openai_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    assert CANARY not in error["message"]


def post(
    bridge: RunningBridge, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        bridge.url + "/chat/completions",
        content=content,
        headers={**bridge.headers(), **(headers or {})},
        timeout=10,
    )


@FUZZ
@given(body=chat_bodies)
def test_generated_chat_bodies(
    fuzz_bridge: RunningBridge, fake_server: FakeSambaNova, body: dict[str, Any]
) -> None:
    seen = len(fake_server.requests)
    response = post(fuzz_bridge, json.dumps(body).encode())
    if response.status_code != 200:
        assert_openai_error(response)
        assert len(fake_server.requests) == seen, "a rejected request reached upstream"
        return
    sent = fake_server.requests[-1].body
    assert set(sent) <= FORWARDED_PARAMS
    assert all(set(m) <= set(MESSAGE_KEYS) for m in sent["messages"])
    assert CANARY not in json.dumps({k: v for k, v in sent.items() if k != "messages"}) or (
        CANARY in json.dumps(body.get("tools"))
        or CANARY in json.dumps(body.get("functions"))
        or CANARY in json.dumps(body.get("stop"))
    )
    for message in sent["messages"]:
        assert CANARY not in json.dumps({k: v for k, v in message.items() if k != "content"}) or (
            CANARY in json.dumps(body["messages"])
        )
    if sent["stream"]:
        assert response.text.endswith("data: [DONE]\n\n")
    else:
        assert response.json()["object"] == "chat.completion"


@FUZZ
@given(value=json_values)
def test_any_json_value(fuzz_bridge: RunningBridge, value: Any) -> None:
    response = post(fuzz_bridge, json.dumps(value).encode())
    assert_openai_error(response)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes(fuzz_bridge: RunningBridge, raw: bytes) -> None:
    response = post(fuzz_bridge, raw)
    assert_openai_error(response)


@FUZZ
@given(
    content_type=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
)
def test_any_content_type_with_a_good_body(fuzz_bridge: RunningBridge, content_type: str) -> None:
    body = json.dumps({**vapi_request(), "stream": False}).encode()
    response = post(fuzz_bridge, body, {"Content-Type": content_type})
    assert response.status_code == 200


@FUZZ
@given(
    value=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60
    )
)
def test_only_the_exact_key_gets_in(
    fuzz_bridge: RunningBridge, fake_server: FakeSambaNova, value: str
) -> None:
    for header in (value, f"Bearer {value}"):
        if value == SECRET:
            continue
        seen = len(fake_server.requests)
        response = httpx.post(
            fuzz_bridge.url + "/chat/completions",
            json=vapi_request(),
            headers={"Authorization": header},
            timeout=10,
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert len(fake_server.requests) == seen


@FUZZ
@given(
    segments=st.lists(st.text(max_size=12), min_size=1, max_size=4),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
)
def test_any_path_and_method(fuzz_bridge: RunningBridge, segments: list[str], method: str) -> None:
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    response = httpx.request(
        method, fuzz_bridge.url + path, headers=fuzz_bridge.headers(), content=b"{}", timeout=10
    )
    assert response.status_code < 500
    if response.status_code >= 400:
        assert_openai_error(response)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_rejected(fuzz_bridge: RunningBridge, constant: bytes) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + constant + b"}"
    response = post(fuzz_bridge, body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
