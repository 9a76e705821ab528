"""The reasoning filter: no shape of reasoning reaches the caller, the reply goes out at once,
and the reasoning is kept in the trace. Unit tests on the fixtures and hand-made chunks, then
the same stages on what the fake SambaNova really sends through the real SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.sambanova import REPLY, THOUGHTS, FakeSambaNova, chunk, tool_chunks
from tests.helpers import DATA
from vapi_bridge import sse
from vapi_bridge.reasoning import HOLD_MAX, ReasoningFilter, ThinkScanner, strip_reasoning
from vapi_bridge.stages import Collect, Normalise, Pipeline, Trace
from vapi_bridge.upstream import SambaNovaUpstream

REPLY_TEXT = "".join(REPLY)


def fixture_chunks(name: str) -> list[Any]:
    lines = (DATA / name).read_text().splitlines()
    return [json.loads(e.data) for e in sse.events(lines) if not e.done]


class Run:
    """Chunks through Normalise, ReasoningFilter and Collect, keeping what went out."""

    def __init__(self) -> None:
        self.trace = Trace()
        self.filter = ReasoningFilter(self.trace)
        self.collect = Collect(self.trace)
        self.pipeline = Pipeline([Normalise(self.trace, model="m"), self.filter, self.collect])
        self.sent: list[dict[str, Any]] = []

    def feed(self, item: Any) -> dict[str, Any] | None:
        out = self.pipeline.feed(item)
        if out is not None:
            self.sent.append(out)
        return out

    def all(self, items: list[Any], flush: bool = True) -> Run:
        for item in items:
            self.feed(item)
        if flush:
            self.sent.extend(self.pipeline.flush())
        return self

    @property
    def text(self) -> str:
        return self.collect.text

    @property
    def reasoning(self) -> str:
        return "".join(self.trace.reasoning)

    @property
    def wire(self) -> str:
        """The bytes Vapi would get."""
        return b"".join(sse.frame(c) for c in self.sent).decode()


def contents(*parts: str, finish: bool = True) -> list[Any]:
    out: list[Any] = [chunk({"role": "assistant", "content": p}) for p in parts]
    if finish:
        out.append(chunk({"content": ""}, "stop"))
    return out


def test_gptoss_fixture_reasoning_and_channel_never_sent() -> None:
    run = Run().all(fixture_chunks("sambanova_stream_gptoss.sse"))
    assert run.text == "Sure! Tuesday at ten works."
    assert run.reasoning == (
        "The caller asks about Tuesday. Check the calendar tool? No tool needed; answer briefly."
    )
    assert "reasoning" not in run.wire and "channel" not in run.wire
    assert "calendar" not in run.wire
    # The two reasoning-only chunks say nothing to Vapi and are dropped; the finish passes.
    assert len(run.sent) == 3 and run.collect.finish_reason == "stop"
    assert run.trace.think_ms is not None and run.trace.think_ms >= 0


def test_think_fixture_block_removed_and_whitespace_after_it_dropped() -> None:
    run = Run().all(fixture_chunks("sambanova_stream_think.sse"))
    assert run.text == "Sure! Tuesday at ten works."
    assert run.reasoning == "The caller asks about Tuesday. Keep it short."
    assert "think" not in run.wire and "Keep it short" not in run.wire
    assert run.trace.think_ms is not None


def test_no_reasoning_leaves_the_reply_and_think_ms_alone() -> None:
    run = Run().all(contents("Sure", "! Let me check", " Tuesday for you."))
    assert run.text == REPLY_TEXT and run.reasoning == "" and run.trace.think_ms is None
    assert [c["choices"][0]["delta"]["content"] for c in run.sent[:3]] == REPLY


def test_think_tag_split_at_every_character_gives_the_same_reply() -> None:
    whole = "".join(
        c["choices"][0]["delta"]["content"] for c in fixture_chunks("sambanova_stream_think.sse")
    )
    for cut in range(len(whole) + 1):
        run = Run().all(contents(whole[:cut], whole[cut:]))
        assert (run.text, run.reasoning) == (
            "Sure! Tuesday at ten works.",
            "The caller asks about Tuesday. Keep it short.",
        ), cut
    one_by_one = Run().all(contents(*whole))
    assert one_by_one.text == "Sure! Tuesday at ten works."


def test_words_after_reasoning_go_out_in_the_same_chunk() -> None:
    run = Run()
    for part in ("<think>plan", " it</think>", "\n\n"):
        assert run.feed(chunk({"content": part})) is None
    out = run.feed(chunk({"content": "Sure! Tues"}))
    assert out is not None and out["choices"][0]["delta"]["content"] == "Sure! Tues"


def test_only_a_possible_tag_prefix_is_held_back() -> None:
    run = Run()
    out = run.feed(chunk({"content": "Hello <thi"}))
    assert out is not None and out["choices"][0]["delta"]["content"] == "Hello "
    assert run.filter.held == "<thi"
    out = run.feed(chunk({"content": "s is fine"}))
    assert out is not None and out["choices"][0]["delta"]["content"] == "<this is fine"
    assert run.filter.held == ""


def test_a_held_prefix_is_spoken_with_the_finish_chunk_or_at_flush() -> None:
    with_finish = Run().all([chunk({"content": "a <"}), chunk({"content": ""}, "stop")])
    assert with_finish.text == "a <"
    assert with_finish.sent[-1]["choices"][0]["delta"]["content"] == "<"
    cut_short = Run().all([chunk({"content": "a </th"})])
    assert cut_short.text == "a </th"


def test_block_never_closed_is_reasoning_to_the_end() -> None:
    run = Run().all(contents("<think>weighing", " options </thi"))
    assert run.text == "" and run.reasoning == "weighing options </thi"
    assert run.trace.removed["unclosed_think"] == 1
    assert run.collect.finish_reason == "stop" and run.trace.think_ms is None
    no_finish = Run().all(contents("<think>weighing", finish=False))
    assert no_finish.text == "" and no_finish.reasoning == "weighing"


def test_close_without_open_is_removed_and_counted() -> None:
    run = Run().all(contents("thinking aloud</think>", "  Sure."))
    assert run.text == "thinking aloudSure."
    assert run.trace.removed["unopened_think"] == 1


def test_reasoning_content_and_non_final_channels_are_reasoning() -> None:
    run = Run().all(
        [
            chunk({"role": "assistant", "content": None, "reasoning_content": "Plan."}),
            chunk({"content": "Draft.", "channel": "analysis"}),
            chunk({"content": "Hi.", "channel": "final"}),
            chunk({"content": " Bye."}),
            chunk({"content": ""}, "stop"),
        ]
    )
    assert run.text == "Hi. Bye." and run.reasoning == "Plan.Draft."
    assert "reasoning_content" not in run.wire and "Draft" not in run.wire


def test_tool_call_deltas_are_never_touched() -> None:
    calls = tool_chunks()
    calls[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] = (
        '{"note": "<think>keep</think> **me** 🙂", '
    )
    stream = [
        chunk({"role": "assistant", "content": "", "reasoning": "Use the tool."}),
        *calls,
    ]
    run = Run().all(stream)
    got = [c["choices"][0]["delta"].get("tool_calls") for c in run.sent]
    want = [c["choices"][0]["delta"].get("tool_calls") for c in calls]
    assert got == want
    assert run.collect.tool_calls.complete()[0].arguments == (
        '{"note": "<think>keep</think> **me** 🙂", "2026-12-01"}'
    )
    assert run.collect.finish_reason == "tool_calls" and run.reasoning == "Use the tool."
    assert run.trace.think_ms is not None


def test_usage_chunks_pass_and_empty_chunks_are_dropped() -> None:
    trace = Trace()
    stage = ReasoningFilter(trace)
    usage = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    assert stage.feed({**usage, "choices": [], "usage": {"total_tokens": 3}}) is not None
    empty = Normalise(trace, model="m").feed(chunk({"role": "assistant", "content": ""}))
    assert empty is not None and stage.feed(empty) is None


def test_each_choice_has_its_own_state() -> None:
    def two(a: str, b: str) -> dict[str, Any]:
        item = chunk({"content": a})
        item["choices"].append({"index": 1, "delta": {"content": b}, "finish_reason": None})
        return item

    run = Run().all([two("<think>x", "Hi <th"), two("</think>A", "ere"), two(" B", "!")])
    by_index = {0: "", 1: ""}
    for sent in run.sent:
        for choice in sent["choices"]:
            by_index[choice["index"]] += choice["delta"].get("content") or ""
    assert by_index == {0: "A B", 1: "Hi <there!"}


def test_scanner_holds_at_most_a_tag_prefix() -> None:
    scanner = ThinkScanner()
    for piece in ["<", "t", "h", "i", "n", "k", ">", "a", "<", "/", "t", "h", "i", "n", "k"]:
        scanner.scan(piece)
        assert len(scanner.pending) <= HOLD_MAX
    assert scanner.scan(">") == ("", "")
    assert scanner.scan(" x") == ("x", "")


@pytest.mark.parametrize(
    ("message", "spoken", "reasoning"),
    [
        ({"role": "assistant", "content": "Hi.", "reasoning": "R."}, "Hi.", "R."),
        ({"role": "assistant", "content": "Hi.", "reasoning_content": "R."}, "Hi.", "R."),
        ({"role": "assistant", "content": "<think>\nR.\n</think>\n\nHi."}, "Hi.", "\nR.\n"),
        ({"role": "assistant", "content": "<think>R. never closed"}, "", "R. never closed"),
        ({"role": "assistant", "content": "R.", "channel": "analysis"}, "", "R."),
        ({"role": "assistant", "content": "a < b"}, "a < b", ""),
    ],
)
def test_strip_reasoning_from_a_whole_reply(
    message: dict[str, Any], spoken: str, reasoning: str
) -> None:
    body = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
    before = json.dumps(body)
    cleaned, thought = strip_reasoning(body)
    assert cleaned["choices"][0]["message"]["content"] == spoken and thought == reasoning
    assert set(cleaned["choices"][0]["message"]) <= {"role", "content"}
    assert json.dumps(body) == before, "the caller's body is not changed in place"


def test_strip_reasoning_leaves_other_shapes_alone() -> None:
    assert strip_reasoning("text") == ("text", "")
    assert strip_reasoning({"error": {}}) == ({"error": {}}, "")


# --- the same stages on what the fake sends through the real SDK ---------------------------


@pytest.fixture(scope="module")
def upstream(fake_server: FakeSambaNova) -> Iterator[SambaNovaUpstream]:
    client = SambaNovaUpstream(api_key="test-key", base_url=fake_server.base_url)
    yield client
    client.close()


def stream_through(upstream: SambaNovaUpstream, model: str, **params: Any) -> Run:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Is Tuesday free?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **params,
    }
    stream = upstream.open_stream(body, timeout=10)
    try:
        return Run().all(list(stream))
    finally:
        stream.close()


@pytest.mark.parametrize(
    "model",
    ["gpt-oss-120b", "DeepSeek-R1-0528", "MiniMax-M2.5", "Qwen3-32B", "rc/DeepSeek-R1"],
)
def test_each_reasoning_shape_through_the_sdk(
    fake: FakeSambaNova, upstream: SambaNovaUpstream, model: str
) -> None:
    run = stream_through(upstream, model)
    assert run.text == REPLY_TEXT
    assert run.reasoning.strip() == "".join(THOUGHTS).strip()
    for thought in THOUGHTS:
        assert thought.strip() not in run.wire
    assert "<think>" not in run.wire and "reasoning" not in run.wire
    assert run.trace.think_ms is not None
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    cleaned, thought = strip_reasoning(upstream.complete(body, timeout=10))
    assert cleaned["choices"][0]["message"]["content"] == REPLY_TEXT
    assert thought.strip() == "".join(THOUGHTS).strip()


def test_hybrid_model_thinks_only_when_asked(
    fake: FakeSambaNova, upstream: SambaNovaUpstream
) -> None:
    plain = stream_through(upstream, "DeepSeek-V3.1")
    thinking = stream_through(
        upstream, "DeepSeek-V3.1", chat_template_kwargs={"enable_thinking": True}
    )
    assert plain.text == thinking.text == REPLY_TEXT
    assert plain.reasoning == "" and thinking.reasoning.strip() == "".join(THOUGHTS).strip()
