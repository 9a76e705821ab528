"""The speech filter: markup and emoji out, words kept, exactly the documented rules; and, with
the reasoning filter before it, the spoken text is the same however a reply is split."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.sambanova import chunk, tool_chunks
from vapi_bridge.reasoning import HOLD_MAX, ReasoningFilter, strip_reasoning
from vapi_bridge.speech import SpeechFilter, speakable, speakable_completion
from vapi_bridge.stages import Collect, Normalise, Pipeline, Trace


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # emphasis, strikethrough, inline code
        ("**Tuesday** at _ten_ or __two__", "Tuesday at ten or two"),
        ("*really* ~~not~~ `code`", "really not code"),
        ("snake_case and file_name_v2", "snake_case and file_name_v2"),
        ("3 * 4 = 3*4, about ~12", "3 * 4 = 3*4, about ~12"),
        # line starts
        ("## Options\n### More", "Options\nMore"),
        ("#1 priority, #hashtag", "#1 priority, #hashtag"),
        ("- one\n* two\n+ three\n  - nested", "one\ntwo\nthree\nnested"),
        ("1. first\n2) second\n10. tenth", "first\nsecond\ntenth"),
        ("2024. A year.\n1.5 litres\n-5 degrees", "2024. A year.\n1.5 litres\n-5 degrees"),
        ("> quoted\n> - quoted item", "quoted\nquoted item"),
        ("above\n---\nbelow\n===", "above\n\nbelow\n"),
        ("    indented text", "    indented text"),
        # code fences
        ("Run:\n```python\nprint(1)\n```\nDone.", "Run:\nprint(1)\nDone."),
        ("~~~\nplain\n~~~", "plain\n"),
        # tables
        (
            "| Time | Doctor |\n|---|:---:|\n| 10:00 | Smith |\n| 14:00 | Jones |",
            "Time, Doctor\n10:00, Smith\n14:00, Jones",
        ),
        ("| -5 | x |", "-5, x"),
        ("a | b stays", "a | b stays"),
        # links
        ("See [the portal](https://x.example/a_(b)) now", "See the portal now"),
        ("[1] and [x] brackets", "1 and x brackets"),
        # emoji
        ("Great 👍 see you 😊", "Great  see you "),
        ("Family 👨\u200d👩\u200d👧 and skin 👍🏽 and ❤️ and 🇫🇷.", "Family  and skin  and  and ."),
        ("Keycap 1️⃣ stays a digit", "Keycap 1 stays a digit"),
        ("Arrows → and © ® ™ stay", "Arrows → and © ® ™ stay"),
        ("a\u200db joiner between letters stays", "a\u200db joiner between letters stays"),
        # what is not markup stays as it is
        ("Well-known, 50% off, (maybe) <b>x</b>", "Well-known, 50% off, (maybe) <b>x</b>"),
        ("Plain sentence, nothing to do.", "Plain sentence, nothing to do."),
    ],
)
def test_documented_rules(text: str, spoken: str) -> None:
    assert speakable(text) == spoken
    assert stream(*text) == spoken, "one character per chunk gives the same"


def test_counts_what_it_removed() -> None:
    removed: Counter[str] = Counter()
    speakable("## Hi\n- **a** 👍\n```\nx\n```\n| a |\n> q\n---\n[l](u)", removed)
    assert removed == Counter(
        heading=1, bullet=1, emphasis=2, emoji=1, code=2, table=1, quote=1, rule=1, link=1
    )


class Run:
    """Chunks through Normalise, ReasoningFilter, SpeechFilter and Collect."""

    def __init__(self) -> None:
        self.trace = Trace()
        self.reasoning = ReasoningFilter(self.trace)
        self.speech = SpeechFilter(self.trace)
        self.collect = Collect(self.trace)
        self.pipeline = Pipeline(
            [Normalise(self.trace, model="m"), self.reasoning, self.speech, self.collect]
        )
        self.sent: list[dict[str, Any]] = []

    def feed(self, item: Any) -> str | None:
        out = self.pipeline.feed(item)
        if out is None:
            return None
        self.sent.append(out)
        content = out["choices"][0]["delta"].get("content")
        return content if isinstance(content, str) else None

    def finish(self, reason: str | None = "stop") -> Run:
        if reason is not None:
            self.feed(chunk({"content": ""}, reason))
        self.sent.extend(self.pipeline.flush())
        return self


def stream(*parts: str, finish: str | None = "stop") -> str:
    run = Run()
    for part in parts:
        run.feed(chunk({"role": "assistant", "content": part}))
    return run.finish(finish).collect.text


def test_marker_split_over_chunks_is_removed() -> None:
    assert stream("Book **Tues", "day*", "* now") == "Book Tuesday now"
    assert stream("-", " item\n1", "0", ". ten") == "item\nten"
    assert stream("see [x](ht", "tp://a.b/c) ok") == "see x ok"


def test_plain_text_goes_out_at_once() -> None:
    run = Run()
    assert run.feed(chunk({"content": "Sure, "})) == "Sure, "
    assert run.feed(chunk({"content": "Tuesday works."})) == "Tuesday works."
    assert run.speech.held == ""


def test_only_a_possible_marker_is_held_and_it_comes_out_at_the_end() -> None:
    run = Run()
    assert run.feed(chunk({"content": "Total: 3 *"})) == "Total: 3 "
    assert run.speech.held == "*"
    run.finish()
    assert run.collect.text == "Total: 3 *"
    assert run.sent[-1]["choices"][0]["finish_reason"] == "stop"
    assert run.sent[-1]["choices"][0]["delta"]["content"] == "*"
    assert stream("Line\n1", finish=None) == "Line\n1", "flush gives what is held"


def test_a_chunk_left_empty_is_dropped_but_finish_and_tool_calls_pass() -> None:
    run = Run()
    assert run.feed(chunk({"content": "Hi"})) == "Hi"
    assert run.feed(chunk({"content": " 👍"})) == " "
    assert run.feed(chunk({"content": "🎉"})) is None
    run.finish()
    assert run.collect.finish_reason == "stop"


def test_tool_call_arguments_are_never_touched() -> None:
    calls = tool_chunks()
    arguments = '{"note": "## **bold** _x_ 👍 | a |\\n- item", '
    calls[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] = arguments
    run = Run()
    for item in [chunk({"role": "assistant", "content": "**One** moment 👍"}), *calls]:
        run.feed(item)
    run.finish(None)
    assert run.collect.text == "One moment "
    assert run.collect.tool_calls.complete()[0].arguments == arguments + '"2026-12-01"}'
    assert run.collect.finish_reason == "tool_calls"


def test_whole_reply_function_matches_the_stream() -> None:
    body: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "**Hi** 👋"}}],
    }
    removed: Counter[str] = Counter()
    cleaned = speakable_completion(body, removed)
    assert cleaned["choices"][0]["message"]["content"] == "Hi " == stream("**Hi** 👋")
    assert body["choices"][0]["message"]["content"] == "**Hi** 👋", "not changed in place"
    assert removed == Counter(emphasis=2, emoji=1)
    assert speakable_completion("x") == "x"


# --- property: any split of the same reply gives the same spoken text ----------------------

THOUGHT = "<think>PONDER **plan** 👍\n- PONDER step</think>"
WORDS = ["Sure", "Tuesday", "ten", "é", "日本語", "straße", "naïve", "42", "a_b", "x", "!"]
GLUE = [" ", " ", "\n", "\n\n", ", ", ". ", "\t"]
MARKUP = [
    "**", "*", "_", "__", "~~", "~", "`", "```", "```python\n", "# ", "## ", "- ", "* ",
    "+ ", "1. ", "2) ", "> ", "---", "===", "| ", " | ", " |", "|---|", "[", "](http://x.y/(z))",
    "]", "<", "</", "<th", "<b>",
]  # fmt: skip
EMOJI = ["👍", "😀", "👍🏽", "👨\u200d👩\u200d👧", "❤️", "1️⃣", "🇫🇷", "\u200d"]
blocks = st.lists(
    st.one_of(
        st.sampled_from(WORDS),
        st.sampled_from(GLUE),
        st.sampled_from(MARKUP),
        st.sampled_from(EMOJI),
        st.just(THOUGHT),
    ),
    max_size=40,
)
HELD_WORDS_MAX = 4  # a list number's digits and its "." or ")"
MARKUP_CHARS = set(" \t*_~-=#`|:]+")


@settings(max_examples=400, deadline=None)
@given(blocks, st.data())
def test_any_split_speaks_the_same_and_never_the_reasoning(
    parts: list[str], data: st.DataObject
) -> None:
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]

    whole = stream(text)
    run = Run()
    for piece in pieces:
        run.feed(chunk({"role": "assistant", "content": piece}))
        held = run.speech.held
        assert len(run.reasoning.held) <= HOLD_MAX
        assert sum(ch not in MARKUP_CHARS for ch in held) <= HELD_WORDS_MAX, held
    spoken = run.finish().collect.text

    assert spoken == whole
    assert "PONDER" not in spoken
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    cleaned, thought = strip_reasoning(body)
    assert speakable(cleaned["choices"][0]["message"]["content"]) == whole
    assert thought.count("PONDER") == text.count("PONDER")


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abcdé日本 .,!?'", min_size=1, max_size=60).filter(lambda t: t[0] != " "),
    st.data(),
)
def test_plain_text_is_never_held(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(1, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    run = Run()
    for piece in pieces:
        out = run.feed(chunk({"content": piece}))
        assert out == (piece or None)
