"""The model table and the reasoning controls: what each policy sends to each family, that a
request's own settings win, and that the fake SambaNova (built from the same documented
behaviour) answers those controls the way the table expects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.sambanova import MODEL_IDS, REPLY, FakeSambaNova
from vapi_bridge import models
from vapi_bridge.models import (
    DEFAULT_REASONING_BUDGET,
    MODELS,
    POLICIES,
    SOURCES,
    describe,
    lookup,
    reasoning_params,
)
from vapi_bridge.upstream import SambaNovaUpstream

BUDGET = 1024


def test_every_row_is_well_formed() -> None:
    assert MODELS, "the table parsed"
    for row in MODELS:
        assert row.reasoning in ("none", "always", "effort", "hybrid"), row
        assert row.tools in ("yes", "no", "?"), row
        assert row.sources and all(key in SOURCES for key in row.sources), row


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-oss-120b", "gpt-oss"),
        ("DeepSeek-R1-0528", "DeepSeek-R1"),
        ("DeepSeek-R1-Distill-Llama-70B", "DeepSeek-R1"),
        ("DeepSeek-V3.1", "DeepSeek-V3.x"),
        ("DeepSeek-V3.1-Terminus", "DeepSeek-V3.x"),
        ("DeepSeek-V3.2", "DeepSeek-V3.x"),
        ("DeepSeek-V3-0324", "DeepSeek-V3"),
        ("MiniMax-M2.5", "MiniMax-M"),
        ("Qwen3-32B", "Qwen3"),
        ("QwQ-32B-Preview", "QwQ"),
        ("Meta-Llama-3.3-70B-Instruct", "Llama"),
        ("meta-llama-3.3-70b-instruct", "Llama"),
        ("deepseek-ai/DeepSeek-R1", "DeepSeek-R1"),
    ],
)
def test_lookup_by_pattern(model: str, family: str) -> None:
    row = lookup(model)
    assert row is not None and row.family == family


def test_unknown_models_get_nothing() -> None:
    assert lookup("my-finetune-7b") is None
    for policy in POLICIES:
        assert reasoning_params("my-finetune-7b", policy, 250, BUDGET, {}) == {}


@pytest.mark.parametrize(
    ("model", "policy", "expected"),
    [
        ("gpt-oss-120b", "off", {"reasoning_effort": "low", "max_tokens": 250 + BUDGET}),
        ("gpt-oss-120b", "high", {"reasoning_effort": "high", "max_tokens": 250 + BUDGET}),
        ("gpt-oss-120b", "model", {}),
        ("DeepSeek-V3.1", "off", {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            "DeepSeek-V3.1",
            "medium",
            {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": 250 + BUDGET},
        ),
        ("DeepSeek-V3.1", "model", {}),
        ("DeepSeek-R1-0528", "off", {"max_tokens": 250 + BUDGET}),
        ("MiniMax-M2.5", "low", {"max_tokens": 250 + BUDGET}),
        ("Meta-Llama-3.3-70B-Instruct", "off", {}),
        ("Meta-Llama-3.3-70B-Instruct", "high", {}),
    ],
)
def test_what_each_policy_sends(model: str, policy: str, expected: dict[str, Any]) -> None:
    assert reasoning_params(model, policy, 250, BUDGET, {}) == expected


def test_the_request_own_settings_win() -> None:
    asked = {"reasoning_effort": "high"}
    assert reasoning_params("gpt-oss-120b", "off", 250, BUDGET, asked) == {
        "max_tokens": 250 + BUDGET
    }
    thinking = {"chat_template_kwargs": {"enable_thinking": True, "other": 1}}
    assert reasoning_params("DeepSeek-V3.1", "off", 250, BUDGET, thinking) == {
        "max_tokens": 250 + BUDGET
    }, "thinking asked for by the request still gets its budget"
    other = {"chat_template_kwargs": {"other": 1}}
    assert reasoning_params("DeepSeek-V3.1", "off", 250, BUDGET, other) == {
        "chat_template_kwargs": {"other": 1, "enable_thinking": False}
    }
    assert other == {"chat_template_kwargs": {"other": 1}}, "the request is not changed"


def test_budget_goes_where_the_limit_is() -> None:
    assert reasoning_params("DeepSeek-R1", "off", None, BUDGET, {}) == {}
    limited = {"max_completion_tokens": 100}
    assert reasoning_params("DeepSeek-R1", "off", None, BUDGET, limited) == {
        "max_completion_tokens": 100 + BUDGET
    }
    assert reasoning_params("DeepSeek-R1", "off", 250, 0, {}) == {}
    assert DEFAULT_REASONING_BUDGET > 0


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="reasoning policy"):
        reasoning_params("gpt-oss-120b", "maximum", 250, BUDGET, {})


def test_describe_rows_for_a_models_listing() -> None:
    rows = describe(["gpt-oss-120b", "DeepSeek-V3.1", "Meta-Llama-3.3-70B-Instruct", "new-x"])
    assert [tuple(r) for r in rows] == [
        ("gpt-oss-120b", "gpt-oss", "always (effort low/medium/high)", "yes"),
        ("DeepSeek-V3.1", "DeepSeek-V3.x", "on/off (enable_thinking)", "yes"),
        ("Meta-Llama-3.3-70B-Instruct", "Llama", "no", "yes"),
        ("new-x", "unknown", "unknown", "?"),
    ]
    assert models.describe([]) == []


# --- the fake answers the controls as the table expects ------------------------------------


@pytest.fixture(scope="module")
def upstream(fake_server: FakeSambaNova) -> Iterator[SambaNovaUpstream]:
    client = SambaNovaUpstream(api_key="test-key", base_url=fake_server.base_url)
    yield client
    client.close()


def ask(upstream: SambaNovaUpstream, model: str, policy: str, max_tokens: int) -> dict[str, Any]:
    """A whole reply for a request with the controls ``policy`` adds."""
    params: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Is Tuesday free?"}],
        "max_tokens": max_tokens,
        "stream": False,
    }
    params.update(reasoning_params(model, policy, max_tokens, DEFAULT_REASONING_BUDGET, params))
    body: dict[str, Any] = upstream.complete(params, timeout=10)
    return body


def test_the_fake_lists_models_the_table_knows(upstream: SambaNovaUpstream) -> None:
    assert upstream.list_models() == MODEL_IDS
    assert all(lookup(model) is not None for model in MODEL_IDS)


@pytest.mark.parametrize("model", MODEL_IDS)
def test_policy_off_gives_the_least_reasoning_and_a_spoken_reply(
    fake: FakeSambaNova, upstream: SambaNovaUpstream, model: str
) -> None:
    body = ask(upstream, model, "off", 250)
    reasoning_tokens = body["usage"].get("completion_tokens_details", {}).get("reasoning_tokens")
    row = lookup(model)
    assert row is not None
    if row.reasoning in ("none", "hybrid"):
        assert not reasoning_tokens
    else:
        assert reasoning_tokens
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"].endswith("".join(REPLY))


def test_effort_high_needs_the_budget_on_top_of_vapis_max_tokens(
    fake: FakeSambaNova, upstream: SambaNovaUpstream
) -> None:
    with_budget = ask(upstream, "gpt-oss-120b", "high", 250)
    assert fake.last.body["max_tokens"] == 250 + DEFAULT_REASONING_BUDGET
    assert with_budget["choices"][0]["message"]["content"] == "".join(REPLY)
    thought = with_budget["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert thought > 250, "the fake's high effort thinks past Vapi's default limit"
    without = upstream.complete(
        {
            "model": "gpt-oss-120b",
            "messages": [{"role": "user", "content": "Is Tuesday free?"}],
            "max_tokens": 250,
            "reasoning_effort": "high",
            "stream": False,
        },
        timeout=10,
    )
    assert without["choices"][0]["finish_reason"] == "length"
    assert without["choices"][0]["message"]["content"] == "", "all thinking, nothing to say"
