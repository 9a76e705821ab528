"""Every upstream fault SambaNova (or the network) can produce, and what Vapi then receives.

Each row: what the fake upstream does; the status (and error code) Vapi gets, or, when the
200 was already sent, the text Vapi heard before the stream ended cleanly; and what the
bridge's log line says. docs/faults.md is this table in prose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, chunk, text_chunks
from tests.helpers import BridgeFactory, LogCapture, sse_cut, sse_events, vapi_request
from tests.process import closed_port
from vapi_bridge.upstream import SambaNovaUpstream

FULL = "Sure! Let me check Tuesday for you."


@dataclass
class Fault:
    name: str
    status: int
    code: str | None = None
    heard: str | None = None
    log: str = ""
    model: str = "Meta-Llama-3.3-70B-Instruct"
    scripts: list[Script] = field(default_factory=list)
    cut: str | None = None
    # Short limits only where the row is about them: a 0.5 s first-token deadline for every
    # row made "the bridge keeps serving" fail on a loaded machine, and cut retries short.
    limits: dict[str, float] = field(default_factory=dict)


def status_fault(upstream: int, status: int, code: str) -> Fault:
    return Fault(f"HTTP {upstream}", status, code, log=f'error="{code}:', model=f"fail-{upstream}")


ERROR_FRAME = 'data: {"error": {"message": "queue is full", "code": "queue_full"}}'

FAULTS = [
    status_fault(400, 400, "upstream_bad_request"),
    status_fault(401, 502, "upstream_authentication_failed"),
    status_fault(402, 502, "upstream_payment_required"),
    status_fault(403, 403, "upstream_permission_denied"),
    status_fault(404, 404, "model_not_found"),
    status_fault(408, 504, "upstream_timeout"),
    status_fault(410, 404, "model_not_found"),
    status_fault(422, 400, "upstream_bad_request"),
    status_fault(429, 429, "rate_limit_exceeded"),
    status_fault(500, 502, "upstream_server_error"),
    status_fault(502, 502, "upstream_server_error"),
    status_fault(503, 503, "upstream_overloaded"),
    status_fault(504, 504, "upstream_timeout"),
    Fault(
        "reset before headers",
        502,
        "upstream_unreachable",
        log="Could not reach SambaNova",
        scripts=[Script(kind="reset")] * 3,
    ),
    Fault(
        "headers never come",
        504,
        "upstream_timeout",
        log="did not start answering",
        scripts=[Script(kind="hang")],
        limits={"upstream_timeout": 2.0},
    ),
    Fault(
        "error frame before any chunk",
        502,
        "upstream_error",
        log="queue is full",
        scripts=[Script(chunks=[ERROR_FRAME])] * 3,
    ),
    Fault(
        "reset mid-stream",
        200,
        heard="Sure! Let me check",
        log="dropped mid-stream",
        model="drop",
        cut="upstream_error",
    ),
    Fault(
        "stall between tokens",
        200,
        heard="Sure",
        log="stalled: no data for 2s",
        scripts=[Script(chunks=text_chunks()[:1], end="stall")],
        cut="upstream_error",
        limits={"stall_timeout": 2.0},
    ),
    Fault(
        "in-band error frame mid-stream",
        200,
        heard="Sure! Let me check",
        log="queue is full",
        scripts=[Script(chunks=[*text_chunks()[:2], ERROR_FRAME])],
        cut="upstream_error",
    ),
    Fault(
        "non-JSON data line",
        200,
        heard=FULL,
        log="not JSON",
        scripts=[Script(chunks=[*text_chunks()[:1], "data: {oops", *text_chunks()[1:]])],
    ),
    Fault(
        "choices: null",
        200,
        heard=FULL,
        log=" 200 ",
        scripts=[Script(chunks=[{**chunk({}), "choices": None}, *text_chunks()])],
    ),
    Fault(
        "stream ends without [DONE] or finish",
        200,
        heard="Sure! Let me check",
        log=" 200 ",
        scripts=[Script(chunks=text_chunks()[:2], end="eof")],
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_upstream_fault(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture, fault: Fault
) -> None:
    bridge = start_bridge(no_apology=True, **fault.limits)
    fake.push(*fault.scripts)
    response = bridge.post({**vapi_request(), "model": fault.model})
    assert response.status_code == fault.status
    if fault.status != 200:
        error = response.json()["error"]
        assert error["code"] == fault.code
        assert error["message"] and error["type"] == "upstream_error"
    else:
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(isinstance(c["choices"], list) for c in chunks)
        heard = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert heard == fault.heard
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "tool_calls")
        assert sse_cut(response) == fault.cut, "a cut reply is marked, a whole one is not"
    logs.wait_for(lambda line: fault.log in line)
    assert bridge.post(vapi_request()).status_code == 200, "the bridge keeps serving"


def test_connection_refused(start_bridge: BridgeFactory, logs: LogCapture) -> None:
    upstream = SambaNovaUpstream(api_key="k", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    bridge = start_bridge(upstream=upstream, upstream_timeout=0.5, no_apology=True)
    response = bridge.post(vapi_request())
    assert response.status_code == 502
    error = response.json()["error"]
    assert (
        error["code"] == "upstream_unreachable" and "Could not reach SambaNova" in error["message"]
    )
    logs.wait_for(lambda line: "upstream_unreachable: Could not reach" in line)


def test_a_retried_stream_gets_the_stall_limit_not_what_was_left_of_the_deadline(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """2 s to the first token; a 503 asks for 1.2 s; the retried stream then has 1 s gaps."""
    bridge = start_bridge(upstream_timeout=2.0, stall_timeout=1.8)
    fake.push(
        Script(kind="status", status=503, headers={"Retry-After": "1.2"}),
        Script(chunks=text_chunks(), gap=1.0),
    )
    response = bridge.post(vapi_request(), timeout=20)
    heard = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in sse_events(response)[:-1]
        if c["choices"]
    )
    assert heard == FULL and sse_cut(response) is None
    logs.wait_for(lambda line: " 200 " in line and "outcome" not in line)


def test_no_first_token_within_the_deadline_is_a_504_even_after_the_headers(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(upstream_timeout=0.6, no_apology=True)
    fake.push(Script(chunks=[], end="stall"))
    response = bridge.post(vapi_request())
    assert response.status_code == 504
    assert "within 0.6s" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>not json</html>", "not JSON"),
        ({"choices": ["not an object"]}, "`choices[0]` is not an object"),
        ({"choices": [{"message": "hi"}]}, "`choices[0].message` is not an object"),
        ({"choices": "none"}, "`choices` is not a list"),
    ],
)
def test_a_malformed_whole_reply_is_named_not_blamed_on_the_network(
    start_bridge: BridgeFactory, fake: FakeSambaNova, tmp_path: Path, body: Any, says: str
) -> None:
    """Hooks and transcripts on: the body is judged before anything reads it."""
    bridge = start_bridge(transcript_dir=tmp_path / "t", no_apology=True)
    fake.push(*[Script(kind="json", body=body)] * 3)
    response = bridge.post({**vapi_request(), "stream": False})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_bad_response" and says in error["message"]
    assert bridge.post(vapi_request()).status_code == 200, "the bridge keeps serving"


def test_sambanovas_own_words_end_with_a_full_stop_before_the_advice(
    start_bridge: BridgeFactory,
) -> None:
    response = start_bridge(no_apology=True).post({**vapi_request(), "model": "fail-404"})
    message = response.json()["error"]["message"]
    assert "SambaNova said: fake failure 404. Enter a SambaNova model name" in message
