"""A caller never hears silence: fallback models, cooldowns, hedging and the apology.

Through the real SDK and the fake SambaNova, whose model names pick a failure: ``rl-<s>``
(429 with Retry-After), ``fail-<status>``, ``reset`` (connection reset), ``slowfirst-<ms>``
(first token late), ``drop`` (connection lost mid-reply), ``remaining-<n>`` (rate headers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, chunk
from tests.helpers import (
    SECRET,
    BridgeFactory,
    LogCapture,
    RunningBridge,
    sse_cut,
    sse_events,
    text_of,
    vapi_request,
)
from tests.process import Serve
from vapi_bridge import probe

GOOD = "Meta-Llama-3.3-70B-Instruct"
FULL = "Sure! Let me check Tuesday for you."


def heard(response: Any) -> str:
    return text_of(sse_events(response)[:-1])


def asked(fake: FakeSambaNova) -> list[str]:
    return [r.body["model"] for r in fake.requests if isinstance(r.body, dict)]


@pytest.mark.parametrize("primary", ["rl-30", "fail-503", "fail-500", "reset", "slowfirst-3000"])
def test_each_trigger_moves_the_turn_to_the_fallback(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture, primary: str
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,), attempt_timeout=0.4)
    response = bridge.post({**vapi_request(), "model": primary})
    assert response.status_code == 200 and heard(response) == FULL
    assert response.headers["X-Vapi-Bridge-Model"] == GOOD
    assert asked(fake) == [primary, GOOD]
    line = logs.wait_for(lambda line: "attempts=" in line)
    assert f"attempts={primary}(" in line and f">{GOOD}" in line and f"model={GOOD}" in line


def test_an_abandoned_slow_attempt_is_closed_at_once(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,), attempt_timeout=0.3)
    response = bridge.post({**vapi_request(), "model": "slowfirst-8000"})
    assert heard(response) == FULL
    assert fake.abandoned_event.wait(3), "the slow model's connection was left open"
    assert fake.wait_no_open_streams(3)


def test_a_rate_limited_model_rests_and_the_next_turns_go_straight_to_the_fallback(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    for _ in range(3):
        assert heard(bridge.post({**vapi_request(), "model": "rl-30"})) == FULL
    assert asked(fake) == ["rl-30", GOOD, GOOD, GOOD], "one 429, then no request to rl-30"


def test_a_cooldown_ends_and_the_model_is_asked_again(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    bridge.post({**vapi_request(), "model": "rl-0"})
    bridge.post({**vapi_request(), "model": "rl-0"})
    assert asked(fake) == ["rl-0", GOOD, "rl-0", GOOD], "a 0 s Retry-After is no cooldown"


def test_no_remaining_requests_puts_the_model_on_cooldown_and_is_logged(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    assert heard(bridge.post({**vapi_request(), "model": "remaining-0"})) == FULL
    logs.wait_for(lambda line: "model=remaining-0" in line and "remaining=0" in line)
    bridge.post({**vapi_request(), "model": "remaining-0"})
    assert asked(fake) == ["remaining-0", GOOD]


def test_no_retry_and_no_fallback_after_the_first_byte(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    response = bridge.post({**vapi_request(), "model": "drop"})
    assert heard(response) == "Sure! Let me check" and sse_cut(response) == "upstream_error"
    assert asked(fake) == ["drop"]


def test_hedging_starts_the_fallback_beside_a_slow_model_and_the_first_token_wins(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,), hedge_after=100, attempt_timeout=10)
    response = bridge.post({**vapi_request(), "model": "slowfirst-8000"})
    assert heard(response) == FULL and response.headers["X-Vapi-Bridge-Model"] == GOOD
    assert fake.abandoned_event.wait(3), "the loser's connection is closed"
    line = logs.wait_for(lambda line: "hedged" in line)
    assert f"attempts=slowfirst-8000(lost)>{GOOD} hedged" in line


def test_when_every_model_fails_for_a_passing_reason_the_caller_hears_the_apology(
    start_bridge: BridgeFactory, logs: LogCapture
) -> None:
    bridge = start_bridge(fallback_models=("fail-503",), apology="One moment, please repeat.")
    response = bridge.post({**vapi_request(), "model": "rl-30"})
    assert response.status_code == 200
    assert heard(response) == "One moment, please repeat."
    assert sse_events(response)[-2]["choices"][0]["finish_reason"] == "stop"
    assert sse_cut(response) == "apology"
    line = logs.wait_for(lambda line: "outcome=apology" in line)
    assert "rate_limit_exceeded" in line or "upstream_overloaded" in line
    whole = bridge.post({**vapi_request(), "model": "rl-30", "stream": False})
    assert whole.json()["choices"][0]["message"]["content"] == "One moment, please repeat."


@pytest.mark.parametrize(("model", "status"), [("fail-401", 502), ("fail-400", 400)])
def test_a_configuration_error_is_never_hidden_behind_the_apology(
    start_bridge: BridgeFactory, fake: FakeSambaNova, model: str, status: int
) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    response = bridge.post({**vapi_request(), "model": model})
    assert response.status_code == status
    assert asked(fake) == [model], "a rejected key or request is not retried on another model"


def test_without_a_fallback_the_same_model_is_retried_then_the_error_is_a_status(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(no_apology=True)
    response = bridge.post({**vapi_request(), "model": "fail-503"})
    assert response.status_code == 503
    assert asked(fake) == ["fail-503"] * 3


def test_whole_replies_fall_back_too(start_bridge: BridgeFactory, fake: FakeSambaNova) -> None:
    bridge = start_bridge(fallback_models=(GOOD,))
    response = bridge.post({**vapi_request(), "model": "fail-503", "stream": False})
    assert response.json()["choices"][0]["message"]["content"] == FULL
    assert response.headers["X-Vapi-Bridge-Model"] == GOOD


def test_vapi_bridge_test_says_when_a_fallback_answered(
    bridge_with_fallback: RunningBridge,
) -> None:
    result = probe.run(bridge_with_fallback.url, secret=SECRET, model="fail-503")
    assert result.ok and result.answered_by == GOOD
    assert any("fail-503 did not answer" in w for w in result.warnings)
    direct = probe.run(bridge_with_fallback.url, secret=SECRET, model=GOOD)
    assert direct.answered_by is None and not direct.warnings


def test_the_panel_shows_the_fallback_chain(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    args = ("--no-tunnel", "--port", "0", "--fallback-model", "gpt-oss-120b")
    with Serve(*args, "--fallback-model", GOOD, env=env) as serve:
        serve.stdout_line()
        serve.wait_stderr(lambda line: f"gpt-oss-120b -> {GOOD}" in line)
        assert serve.stop() == 0


@pytest.fixture
def bridge_with_fallback(start_bridge: BridgeFactory) -> RunningBridge:
    return start_bridge(fallback_models=(GOOD,))


def test_a_slow_model_without_a_fallback_gets_the_whole_turn(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    """The attempt timeout is for moving on to another model, not for asking twice."""
    bridge = start_bridge(attempt_timeout=0.2, upstream_timeout=5)
    response = bridge.post({**vapi_request(), "model": "slowfirst-600"})
    assert heard(response) == FULL
    assert asked(fake) == ["slowfirst-600"]


def test_the_apology_log_names_what_was_tried_and_no_first_token(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture, tmp_path: Path
) -> None:
    """rl-30 rests after its 429; the next turn goes straight to the fallback, which fails."""
    bridge = start_bridge(fallback_models=("fail-503",), transcript_dir=tmp_path / "t")
    bridge.post({**vapi_request(), "model": "rl-30"})
    second = bridge.post({**vapi_request(), "model": "rl-30"})
    assert heard(second) == bridge.bridge.settings.apology
    assert "X-Vapi-Bridge-Model" not in second.headers, "no model answered an apology"
    lines = [line for line in logs.lines if "outcome=apology" in line]
    assert len(lines) == 2 and "attempts=fail-503(503)" in lines[1]
    assert "ttft=" not in lines[1] and "ttfs=" in lines[1]
    whole = bridge.post({**vapi_request(), "model": "rl-30", "stream": False})
    assert whole.json()["choices"][0]["message"]["content"] == bridge.bridge.settings.apology
    bridge.stop()
    (transcript,) = (tmp_path / "t").iterdir()
    outcomes = [json.loads(line)["outcome"] for line in transcript.read_text().splitlines()]
    assert outcomes == ["apology"] * 3


def test_a_forced_model_is_not_mistaken_for_a_fallback(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(model="gpt-oss-120b")
    result = probe.run(bridge.url, secret=SECRET, model=GOOD)
    assert result.ok and result.answered_by is None
    assert not any("did not answer" in w for w in result.warnings)


THINKING = chunk({"role": "assistant", "content": "", "reasoning": "Let me think."})


@pytest.mark.parametrize(
    "script",
    [
        Script(chunks=[THINKING, 'data: {"error": {"message": "queue is full"}}']),
        Script(chunks=[THINKING], end="drop"),
        Script(chunks=[THINKING], end="stall"),
    ],
    ids=["error frame", "connection lost", "stall"],
)
def test_a_model_that_fails_while_thinking_is_still_before_the_first_byte(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture, script: Script
) -> None:
    """Reasoning chunks are not spoken: a failure after them is one more failed attempt."""
    bridge = start_bridge(fallback_models=(GOOD,), stall_timeout=0.5)
    fake.push(script)
    response = bridge.post({**vapi_request(), "model": "gpt-oss-120b"})
    assert response.status_code == 200 and heard(response) == FULL
    assert response.headers["X-Vapi-Bridge-Fallback-From"] == "gpt-oss-120b"
    assert sse_cut(response) is None
    logs.wait_for(lambda line: "attempts=gpt-oss-120b(" in line and f">{GOOD}" in line)


def test_without_a_fallback_a_model_that_fails_while_thinking_gets_the_apology(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    bridge = start_bridge(stall_timeout=0.5, upstream_timeout=2)
    fake.push(*[Script(chunks=[THINKING], end="drop")] * 3)
    response = bridge.post({**vapi_request(), "model": "gpt-oss-120b"})
    assert response.status_code == 200
    assert heard(response) == bridge.bridge.settings.apology and sse_cut(response) == "apology"
