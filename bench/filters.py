"""What the reasoning and speech filters cost per chunk, beside Normalise alone.

Each sequence is a realistic upstream stream, parsed once (as the upstream client yields it):
a plain reply in word-sized tokens, gpt-oss reasoning then its reply, an inline ``<think>``
block cut at awkward places, and a markdown-heavy reply with emoji. Every round runs the same
chunks through a fresh ``Normalise`` pipeline and through ``Normalise + ReasoningFilter +
SpeechFilter``, alternating, and the figures are medians over rounds, in microseconds per
chunk. The target for the filters is at most 20 us per chunk.

    python bench/filters.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.sambanova import chunk, split_awkwardly
from vapi_bridge.reasoning import ReasoningFilter
from vapi_bridge.speech import SpeechFilter
from vapi_bridge.stages import Normalise, Pipeline, Stage, Trace

PLAIN = (
    "Sure, I can help with that. Tuesday at ten in the morning works for the doctor, and "
    "there is also a slot at two in the afternoon. Which one would you like me to book for "
    "you? I will send a confirmation to the number on file once it is done."
)
MARKDOWN = (
    "Here are your options 😊:\n\n## Tuesday\n- **10:00** with Dr. _Smith_\n- **14:00** "
    "with Dr. Jones 👍\n\n1. Call us back\n2. Or reply `yes`\n\n| Time | Doctor |\n|---|---|\n"
    "| 10:00 | Smith |\n\nSee [the portal](https://example.com/book) for more. 🎉"
)
THOUGHT = (
    "The caller asks about Tuesday. Check the calendar tool? No tool needed; the slots "
    "are in the system prompt. Answer briefly, one sentence, offer both times."
)


def tokens(text: str) -> list[str]:
    """Word-sized pieces, the way a model streams."""
    out, word = [], ""
    for ch in text:
        if ch == " " and word:
            out.append(word)
            word = ""
        word += ch
    return [*out, word]


def content(parts: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [chunk({"role": "assistant", "content": p, **extra}) for p in parts]


def finish() -> list[dict[str, Any]]:
    return [chunk({"content": ""}, "stop")]


SEQUENCES: dict[str, list[dict[str, Any]]] = {
    "plain reply": content(tokens(PLAIN)) + finish(),
    "gpt-oss reasoning": [
        chunk({"role": "assistant", "content": "", "reasoning": t, "channel": "analysis"})
        for t in tokens(THOUGHT)
    ]
    + content(tokens(PLAIN), channel="final")
    + finish(),
    "inline <think>": content(split_awkwardly(f"<think>\n{THOUGHT}\n</think>\n\n{PLAIN}"))
    + finish(),
    "markdown + emoji": content(tokens(MARKDOWN)) + finish(),
}


def run(chunks: list[dict[str, Any]], make: Callable[[Trace], list[Stage]]) -> float:
    """Nanoseconds to take ``chunks`` through a fresh pipeline, flush included."""
    trace = Trace()
    pipeline = Pipeline(make(trace))
    start = time.perf_counter_ns()
    for item in chunks:
        pipeline.feed(item)
    pipeline.flush()
    return time.perf_counter_ns() - start


def normalise(trace: Trace) -> list[Stage]:
    return [Normalise(trace, model="m")]


def filtered(trace: Trace) -> list[Stage]:
    return [Normalise(trace, model="m"), ReasoningFilter(trace), SpeechFilter(trace)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"{'sequence':<20} {'chunks':>6} {'normalise':>10} {'+filters':>10} {'filters':>9}")
    for name, chunks in SEQUENCES.items():
        base: list[float] = []
        both: list[float] = []
        for _ in range(args.rounds):
            base.append(run(chunks, normalise) / len(chunks) / 1000)
            both.append(run(chunks, filtered) / len(chunks) / 1000)
        b, f = statistics.median(base), statistics.median(both)
        print(f"{name:<20} {len(chunks):>6} {b:>8.2f}us {f:>8.2f}us {f - b:>7.2f}us")
    print("(median us per chunk; 'filters' is ReasoningFilter + SpeechFilter; target <= 20 us)")


if __name__ == "__main__":
    main()
