"""The per-chunk hot path: each fast path gives what the plain one gives.

The upstream reader splits raw bytes into events (:class:`sse.ByteParser`) instead of going
through text lines; these tests pin it to the SSE rules the line parser implements, and pin
that the reader keeps the upstream connection for the next turn.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.sambanova import FakeSambaNova, Script, chunk, text_chunks
from tests.helpers import BridgeFactory, sse_events, vapi_request
from vapi_bridge import sse
from vapi_bridge.errors import InBandError, UpstreamStreamBroken
from vapi_bridge.reasoning import ReasoningFilter
from vapi_bridge.speech import SpeechFilter
from vapi_bridge.stages import Collect, Normalise, Pipeline, Trace, error_text, int_created
from vapi_bridge.upstream import SambaNovaUpstream

PROPERTIES = settings(max_examples=300, deadline=None)
DATA = Path(__file__).parent / "data"


def reference_events(stream: bytes) -> list[tuple[str, str]]:
    """The SSE spec's reading: lines end at CRLF, LF or CR; an unterminated last line counts."""
    lines = re.split(r"\r\n|\r|\n", stream.decode())
    if lines[-1] == "":
        lines.pop()
    return [(e.event, e.data) for e in sse.events(lines)]


def byte_events(blocks: list[bytes]) -> list[tuple[str, str]]:
    parser = sse.ByteParser()
    found = [event for block in blocks for event in parser.feed(block)] + parser.end()
    return [(name.decode(), data.decode()) for name, data in found]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


SSE_PIECES = st.sampled_from(
    [
        "data:",
        "data: ",
        "data",
        "event: ",
        "event:error",
        ": a comment",
        ":",
        "id: 7",
        "retry: 10",
        '{"a": 1}',
        "[DONE]",
        "x",
        " ",
        "é",
        "\u2028",
        "\r",
        "\n",
        "\r\n",
        "\n\n",
    ]
)


@PROPERTIES
@given(
    pieces=st.lists(SSE_PIECES, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_byte_parser_reads_any_split_as_the_line_parser_does(
    pieces: list[str], cuts: list[int]
) -> None:
    stream = "".join(pieces).encode()
    assert byte_events(split(stream, cuts)) == reference_events(stream)


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b"data: a\n\n", [("", "a")]),
        (b"data: a\r\n\r\ndata: b\r\r", [("", "a"), ("", "b")]),
        (b"event: error\ndata: x\ndata: y\n\n", [("error", "x\ny")]),
        (b": keep-alive\n\ndata:a\n\n", [("", "a")]),
        (b"data: unterminated", [("", "unterminated")]),
        (b"data: cr at the end\r", [("", "cr at the end")]),
        ("data: a\u2028b\n\n".encode(), [("", "a\u2028b")]),
    ],
)
def test_byte_parser_cases(stream: bytes, events: list[tuple[str, str]]) -> None:
    assert byte_events([stream]) == events
    assert byte_events([stream[i : i + 1] for i in range(len(stream))]) == events


def test_a_line_separator_inside_json_text_is_relayed(
    bridge_factory_and_fake: tuple[BridgeFactory, FakeSambaNova],
) -> None:
    """U+2028 is legal unescaped in JSON; an SSE line end it is not (it used to cut the chunk
    in two, and the chunk was skipped as not JSON)."""
    start_bridge, fake = bridge_factory_and_fake
    odd = "data: " + json.dumps(chunk({"content": "one\u2028two "}), ensure_ascii=False)
    fake.push(Script(chunks=[odd, *text_chunks()]))
    events = sse_events(start_bridge().post(vapi_request()))
    heard = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1])
    assert heard.startswith("one\u2028two Sure")


@pytest.fixture
def bridge_factory_and_fake(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> tuple[BridgeFactory, FakeSambaNova]:
    return start_bridge, fake


class CountingProxy:
    """A TCP forwarder in front of the fake that counts the connections made through it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            server = socket.create_connection(("127.0.0.1", self.port))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(fake: FakeSambaNova) -> Iterator[CountingProxy]:
    port = int(fake.base_url.rsplit(":", 1)[1].split("/")[0])
    counting = CountingProxy(port)
    yield counting
    counting.close()


def test_streamed_turns_reuse_the_upstream_connection(
    start_bridge: BridgeFactory, proxy: CountingProxy
) -> None:
    """After [DONE] the reader takes the body's last bytes, so the connection (over TLS: its
    handshake) serves the next turn instead of being closed."""
    bridge = start_bridge(upstream=SambaNovaUpstream(api_key="test-key", base_url=proxy.url))
    for _ in range(3):
        events = sse_events(bridge.post(vapi_request()))
        assert events[-1] == "[DONE]" and len(events) > 2
    assert proxy.accepted == 1


# Framing: the encoder built once gives the bytes the stdlib encoder gives.

_STDLIB = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=12,
    ),
    max_size=6,
)


@PROPERTIES
@given(json_objects)
def test_frame_is_the_stdlib_encoding(chunk_: dict[str, object]) -> None:
    assert sse.frame(chunk_) == b"data: " + _STDLIB.encode(chunk_).encode() + b"\n\n"


# The stages: Normalise reuses the chunk json.loads gave it; what comes out is what the
# copying version gave, through the whole default pipeline, frame for frame.


class CopyingNormalise(Normalise):
    """Normalise as it was: every delta and choice copied (the reference)."""

    def feed(self, chunk: Any) -> Any:
        if not isinstance(chunk, dict):
            raise UpstreamStreamBroken("SambaNova sent a stream event that is not a JSON object.")
        if chunk.get("error") is not None:
            raise InBandError(f"SambaNova reported an error in its stream: {error_text(chunk)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.trace.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            choices = []
        if not choices and not (usage and self.forward_usage):
            return None
        chunk_id, model = chunk.get("id"), chunk.get("model")
        out = {
            "id": chunk_id if isinstance(chunk_id, str) else self.id,
            "object": "chat.completion.chunk",
            "created": int_created(chunk.get("created"), self.created),
            "model": model if isinstance(model, str) else self.model,
            "choices": [self._copied(c) for c in choices if isinstance(c, dict)],
        }
        if usage and self.forward_usage:
            out["usage"] = usage
        if chunk.get("system_fingerprint"):
            out["system_fingerprint"] = chunk["system_fingerprint"]
        return out

    def _copied(self, choice: dict[str, Any]) -> dict[str, Any]:
        delta = choice.get("delta")
        return self._choice({**choice, "delta": dict(delta) if isinstance(delta, dict) else {}})


def pipeline(normalise: type[Normalise], forward_usage: bool) -> tuple[Pipeline, Collect, Trace]:
    trace = Trace(started=0.0)
    first = normalise(trace, model="m", forward_usage=forward_usage)
    first.id, first.created = "chatcmpl-fixed", 1700000000
    collect = Collect(trace)
    return Pipeline([first, ReasoningFilter(trace), SpeechFilter(trace), collect]), collect, trace


def run(stream: list[Any], normalise: type[Normalise], forward_usage: bool) -> list[Any]:
    """Frames (or the error) and what Collect gathered; each chunk as json.loads would give it."""
    line, collect, trace = pipeline(normalise, forward_usage)
    out: list[Any] = []
    try:
        for item in stream:
            chunk_ = line.feed(json.loads(json.dumps(item)))
            out.append(None if chunk_ is None else sse.frame(chunk_))
        out += [sse.frame(held) for held in line.flush()]
    except (InBandError, UpstreamStreamBroken) as exc:
        out.append(exc.message)
    calls = [(c.id, c.name, c.arguments) for c in collect.tool_calls.complete()]
    trace.think_ms = None if trace.think_ms is None else 0.0
    return [*out, collect.text, calls, collect.finish_reason, trace.reasoning, trace.usage]


MISSING = object()
texts = st.sampled_from(["", "Hi", " there", "<think>", "hm</think> ok", "**bold**", "a\n- b"])
tool_call = st.fixed_dictionaries(
    {},
    optional={
        "index": st.sampled_from([0, 1, "0", None]),
        "id": st.sampled_from(["call_1", "call_2", None]),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["book", ""]), "arguments": texts}
        ),
    },
)
delta = st.fixed_dictionaries(
    {},
    optional={
        "role": st.just("assistant"),
        "content": texts | st.none() | st.just(3),
        "reasoning": texts,
        "reasoning_content": texts,
        "channel": st.sampled_from(["analysis", "final", None]),
        "tool_calls": st.lists(tool_call, max_size=2) | st.none() | st.just("x"),
    },
)
choice: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "delta": delta | st.none() | st.just([]),
        "finish_reason": st.sampled_from([None, "stop", "length", "tool_calls"]),
        "index": st.sampled_from([0, 1]),
        "logprobs": st.sampled_from([None, {"content": []}]),
    },
)
upstream_chunk = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(choice | st.just("x"), max_size=2) | st.none() | st.just({}),
        "created": st.sampled_from([1771518114, 1771518114.7, True, None, "1"]),
        "id": st.sampled_from(["283ffbf5", None, 7]),
        "model": st.sampled_from(["Meta-Llama-3.3-70B-Instruct", None]),
        "object": st.just("chat.completion.chunk"),
        "system_fingerprint": st.sampled_from(["fastcoe", "", None]),
        "usage": st.sampled_from([None, {"total_tokens": 3}, {}]),
        "error": st.sampled_from([None, {"message": "queue is full"}]),
    },
)


@PROPERTIES
@given(st.lists(upstream_chunk, min_size=1, max_size=6), st.booleans())
def test_normalise_in_place_equals_copying(stream: list[Any], forward_usage: bool) -> None:
    assert run(stream, Normalise, forward_usage) == run(stream, CopyingNormalise, forward_usage)


@pytest.mark.parametrize(
    "fixture",
    ["sambanova_stream.sse", "sambanova_stream_gptoss.sse", "sambanova_stream_think.sse"],
)
def test_recorded_streams_frame_alike(fixture: str) -> None:
    lines = (DATA / fixture).read_text().splitlines()
    stream = [json.loads(e.data) for e in sse.events(lines) if not e.done]
    for forward_usage in (False, True):
        expected = run(stream, CopyingNormalise, forward_usage)
        assert run(stream, Normalise, forward_usage) == expected
