"""The per-chunk hot path: each fast path gives what the plain one gives.

The upstream reader splits raw bytes into events (:class:`sse.ByteParser`) instead of going
through text lines; these tests pin it to the SSE rules the line parser implements, and pin
that the reader keeps the upstream connection for the next turn.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.sambanova import FakeSambaNova, Script, chunk, text_chunks
from tests.helpers import (
    BridgeFactory,
    RunningBridge,
    sse_events,
    text_of,
    vapi_request,
    wait_until,
)
from vapi_bridge import sse, upstream
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
    per_event = [part + b"\n\n" for part in stream.split(b"\n\n")]
    per_event[-1] = per_event[-1][:-2]
    assert byte_events(per_event) == events, "one block per event (the usual read)"


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


def test_an_emoji_split_across_chunks_is_relayed_as_sent(
    bridge_factory_and_fake: tuple[BridgeFactory, FakeSambaNova],
) -> None:
    """An upstream that escapes non-ASCII and splits an emoji's surrogate pair across two
    chunks sends halves with no UTF-8 form: they go on escaped, and the reply is not cut."""
    start_bridge, fake = bridge_factory_and_fake
    halves = [
        "data: " + json.dumps(chunk({"content": "Hi "})).replace("Hi ", "Hi \\ud83d"),
        "data: " + json.dumps(chunk({"content": " there"})).replace(" there", "\\ude00 there"),
    ]
    fake.push(Script(chunks=[*halves, *text_chunks()]))
    response = start_bridge().post(vapi_request())
    assert "\\ud83d" in response.text and "\\ude00" in response.text
    assert sse.CUT_PREFIX not in response.text
    assert response.text.rstrip().endswith("data: [DONE]")


@pytest.fixture
def bridge_factory_and_fake(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> tuple[BridgeFactory, FakeSambaNova]:
    return start_bridge, fake


class Loopback:
    """A listener on loopback that serves each connection in a thread of its own (over TLS
    with ``tls``: the certificate in tests/data, for 127.0.0.1)."""

    def __init__(self, *, tls: bool = False) -> None:
        self.tls: ssl.SSLContext | None = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(DATA / "loopback-cert.pem", DATA / "loopback-key.pem")
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return
        self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class CountingProxy(Loopback):
    """A TCP forwarder in front of the fake that counts the connections made through it, and
    those the bridge has closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.closed_by_bridge = 0
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.port))
        for source, sink in ((conn, server), (server, conn)):
            threading.Thread(
                target=self._pump, args=(source, sink, source is conn), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_bridge: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if from_bridge:
                with self._lock:
                    self.closed_by_bridge += 1
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(fake: FakeSambaNova) -> Iterator[CountingProxy]:
    port = int(fake.base_url.rsplit(":", 1)[1].split("/")[0])
    counting = CountingProxy(port)
    yield counting
    counting.close()


def test_streamed_turns_reuse_the_upstream_connection(behind: Behind, proxy: CountingProxy) -> None:
    """After [DONE] the reader takes the body's last bytes, so the connection (over TLS: its
    handshake) serves the next turn instead of being closed."""
    bridge = behind(proxy)
    for _ in range(3):
        events = sse_events(bridge.post(vapi_request()))
        assert events[-1] == "[DONE]" and len(events) > 2
    assert proxy.connections == 1


def test_streams_past_one_pool_overflow_to_the_next_and_connections_are_reused(
    behind: Behind, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection pool carries a few streams at once (httpcore walks all of a pool's
    connections per request); the next streams open another pool. Every pool is given its
    streams back, and the overflow pools, idle after the burst, are closed with their
    connections: later turns go to the first pool again, on a connection it kept."""
    monkeypatch.setattr(upstream._Pools, "PER_POOL", 2)
    monkeypatch.setattr(upstream._Pools, "IDLE_CLOSE", 0.0)
    bridge = behind(proxy)
    body = {**vapi_request(), "model": "paced-6-20"}
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda _: sse_events(bridge.post(body)), range(5)))
    assert [text_of(events[:-1]) for events in replies] == ["tok tok tok tok tok tok "] * 5
    assert all(events[-1] == "[DONE]" for events in replies)
    assert proxy.connections == 5
    assert wait_until(lambda: proxy.closed_by_bridge == 3), proxy.closed_by_bridge
    for _ in range(3):
        assert whole_reply(bridge) == "Sure! Let me check Tuesday for you."
    assert proxy.connections == 5 and proxy.closed_by_bridge == 3


def test_cookies_set_by_the_upstream_are_never_sent_back(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    """One caller's turn must not carry state into another's: a cookie SambaNova (or a load
    balancer before it) sets is not kept."""
    bridge = start_bridge()
    fake.push(Script(headers={"Set-Cookie": "session=caller-one; Path=/"}))
    for _ in range(2):
        assert whole_reply(bridge) == "Sure! Let me check Tuesday for you."
    assert not any(name.lower() == "cookie" for name in fake.last.headers)


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


# The chunked body: decoded by the reader itself; h11 is kept in step so the connection
# serves the next turn.


def chunked(payloads: list[bytes], ext: str = "", trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in payloads)
    return body + b"0\r\n" + trailer + b"\r\n"


@PROPERTIES
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    ext=st.sampled_from(["", ";x=1", ";name", " "]),
    trailer=st.sampled_from([b"", b"X-Check: 1\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_chunk_decoder_reads_any_split(
    payloads: list[bytes], ext: str, trailer: bytes, cuts: list[int]
) -> None:
    body = chunked(payloads, ext, trailer)
    whole_chunks = [chunked([p], ext)[:-5] for p in payloads] + [b"0\r\n" + trailer + b"\r\n"]
    for blocks in (split(body, cuts), whole_chunks):
        decoder = upstream._Chunks()
        assert b"".join(decoder.feed(block) for block in blocks) == b"".join(payloads)
        assert decoder.done and decoder.at_boundary and not decoder.excess


@pytest.mark.parametrize("body", [b"zz\r\nab\r\n", b"2\r\nabXX", b"-2\r\n", b"1" * 30 + b"\r\n"])
def test_chunk_decoder_rejects_bad_framing(body: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        upstream._Chunks().feed(body)


def test_chunk_decoder_notices_bytes_after_the_body() -> None:
    decoder = upstream._Chunks()
    assert decoder.feed(chunked([b"hi"]) + b"HTTP/1.1") == b"hi"
    assert decoder.done and decoder.excess


class RawUpstream(Loopback):
    """A bare HTTP/1.1 server at the network boundary: each response is written as the
    given pieces (headers and body bytes grouped at odd places), on keep-alive connections.
    With ``gate``, each piece after the first waits for it to be set (and clears it)."""

    def __init__(
        self, pieces: list[bytes], gate: threading.Event | None = None, *, tls: bool = False
    ) -> None:
        self.pieces = pieces
        self.gate = gate
        self.requests = 0
        super().__init__(tls=tls)

    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        with contextlib.suppress(OSError), conn, reader:
            while True:
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not line:
                    return
                reader.read(length)
                self.requests += 1
                for i, piece in enumerate(self.pieces):
                    if i and self.gate is not None:
                        assert self.gate.wait(10), "the test never opened the gate"
                        self.gate.clear()
                    conn.sendall(piece)


Behind = Callable[[Loopback], RunningBridge]


@pytest.fixture
def behind(start_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Behind]:
    """A bridge whose SambaNova is the given loopback server, closed after the test.

    The tests here count connections: the body's end, already sent, is read however long a
    loaded machine takes to get to it (the 50 ms the bridge gives it is for a real upstream
    that is slow to send it)."""
    monkeypatch.setattr(upstream._Wire, "FINISH_WAIT", 5.0)
    servers: list[Loopback] = []

    def start(server: Loopback) -> RunningBridge:
        servers.append(server)
        return start_bridge(upstream=SambaNovaUpstream(api_key="test-key", base_url=server.url))

    yield start
    for server in servers:
        server.close()


def whole_reply(bridge: RunningBridge) -> str:
    """One streamed turn, checked to end with [DONE]: the text a caller hears."""
    events = sse_events(bridge.post(vapi_request()))
    assert events[-1] == "[DONE]", events[-3:]
    return text_of(events[:-1])


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse_body(texts: list[str]) -> bytes:
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in text_chunks(texts)]
    return chunked([*events, b"data: [DONE]\n\n"])


@pytest.mark.parametrize("cut", [0, 3, 7, 40, 200, -9, -3])
def test_a_body_cut_anywhere_relays_whole_and_keeps_the_connection(
    behind: Behind, cut: int
) -> None:
    """Headers and body bytes arrive grouped in any way (the first chunk with the headers,
    half of it, the end split); each reply is whole and the connection serves the next."""
    body = sse_body(["Sure", "! Let me", " check."])
    raw = RawUpstream([HEAD + body[:cut], body[cut:]])
    bridge = behind(raw)
    for _ in range(3):
        assert whole_reply(bridge) == "Sure! Let me check."
    assert raw.requests == 3 and raw.connections == 1


def gated_reply(bridge: RunningBridge, gate: threading.Event) -> tuple[str, str]:
    """A streamed turn that opens ``gate`` at each data line it reads (so a
    :class:`RawUpstream` sends its next piece): the text heard and the last data line."""
    with httpx.stream(
        "POST",
        bridge.url + "/chat/completions",
        json=vapi_request(),
        headers=bridge.headers(),
        timeout=10,
    ) as response:
        data = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                data.append(line)
                gate.set()
    return text_of([json.loads(line[6:]) for line in data[:-1]]), data[-1]


@pytest.mark.parametrize("into", [1, 5, 60])
def test_a_chunk_split_after_the_headers_keeps_the_connection(behind: Behind, into: int) -> None:
    """The headers come with a whole chunk and part of the next, whose rest comes once the
    first is relayed, then the rest of the body. h11 held that part: it is fed up to that
    chunk's end and a last chunk of its own, so the connection serves the next turn."""
    body = sse_body(["Sure", "! Let me", " check."])
    ends = [m.end() for m in re.finditer(rb"\n\n\r\n", body)]
    gate = threading.Event()
    pieces = [HEAD + body[: ends[0] + into], body[ends[0] + into : ends[1]], body[ends[1] :]]
    raw = RawUpstream(pieces, gate)
    bridge = behind(raw)
    for _ in range(2):
        assert gated_reply(bridge, gate) == ("Sure! Let me check.", "data: [DONE]")
    assert raw.requests == 2 and raw.connections == 1


def events_body(texts: list[str]) -> bytes:
    return (
        b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in text_chunks(texts))
        + b"data: [DONE]\n\n"
    )


@pytest.mark.parametrize("framing", ["content-length", "gzip"])
def test_other_bodies_go_the_general_way(behind: Behind, framing: str) -> None:
    """A body with a length (h11 event by event) or compressed (httpx's decoding iterators)
    relays the same reply."""
    plain = events_body(["Sure", "! Let me", " check."])
    if framing == "gzip":
        head = HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")
        packed = gzip.compress(plain)
        body = chunked([packed[:20], packed[20:]])
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(plain)
        body = plain
    raw = RawUpstream([head + body[:7], body[7:]])
    bridge = behind(raw)
    for _ in range(2):
        assert whole_reply(bridge) == "Sure! Let me check."
    assert raw.requests == 2
    if framing == "content-length":
        assert raw.connections == 1, "h11 read to the body's end: the connection is kept"


def test_a_serving_process_makes_full_collections_rare(start_bridge: BridgeFactory) -> None:
    """A full GC pass walks every live stream's objects with the GIL held; serving makes it
    ten times rarer and leaves the young generations (the per-chunk garbage) alone."""
    before = gc.get_threshold()
    young, middle, _ = before
    try:
        gc.set_threshold(young, middle, 10)
        start_bridge()
        assert gc.get_threshold() == (young, middle, 100)
    finally:
        gc.set_threshold(*before)


def test_the_end_of_a_streamed_reply_goes_out_with_its_last_frame(
    bridge_factory_and_fake: tuple[BridgeFactory, FakeSambaNova],
) -> None:
    """OpenAI's clients read to the end of the HTTP message after ``[DONE]``; werkzeug then
    waits for stray request bytes (here, until the client closes), and the end must not wait
    in the write buffer with it."""
    start_bridge, _ = bridge_factory_and_fake
    bridge = start_bridge()
    body = json.dumps(vapi_request()).encode()
    host, port = bridge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /chat/completions HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {bridge.secret}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data: [DONE]" not in received:
            received += sock.recv(65536)
        sock.sendall(b"x")
        while not received.endswith(b"0\r\n\r\n"):
            block = sock.recv(65536)
            assert block, "the connection closed before the chunked body's end"
            received += block


def test_an_httpcore_laid_out_otherwise_reads_through_httpx(
    start_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct reader uses httpcore's own modules; where another httpcore has none of
    them, replies go through httpx's public iterators, whole."""
    bridge = start_bridge()
    monkeypatch.setitem(sys.modules, "httpcore._sync.http11", None)  # importing it now fails
    assert whole_reply(bridge) == "Sure! Let me check Tuesday for you."


def test_a_body_h11_cannot_catch_up_with_is_still_relayed_whole(
    behind: Behind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One long chunk that no read ends inside a boundary of (a proxy re-chunking a buffered
    body): past the catch-up limit the connection is given up on, never the reply."""
    monkeypatch.setattr(upstream._Wire, "CATCH_UP_MAX", 64)
    texts = [f"word{i} " for i in range(12)]
    events = events_body(texts)
    one_chunk = b"%x\r\n" % len(events) + events + b"\r\n0\r\n\r\n"
    first_end = one_chunk.index(b"\n\n") + 2
    gate = threading.Event()
    pieces = [HEAD + one_chunk[: first_end + 5], one_chunk[first_end + 5 : first_end + 600]]
    raw = RawUpstream([*pieces, one_chunk[first_end + 600 :]], gate)
    bridge = behind(raw)
    assert gated_reply(bridge, gate) == ("".join(texts), "data: [DONE]")


def test_a_late_abort_leaves_a_pooled_connection_alone(proxy: CountingProxy) -> None:
    """The watchdog may abort a stream just as it ends; its connection, back in the pool,
    may by then carry the next turn, which must not be cut."""
    client = SambaNovaUpstream(api_key="test-key", base_url=proxy.url)
    params = {"model": "Meta-Llama-3.3-70B-Instruct", "stream": True, "messages": []}
    finished = client.open_stream(params, timeout=10)
    assert list(finished)
    finished.close()
    following = client.open_stream(params, timeout=10)
    finished.abort()
    assert len(list(following)) > 2
    following.close()
    assert proxy.connections == 1


def test_the_reply_ends_before_the_upstream_body_does(
    behind: Behind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After [DONE] the bridge waits a little for the upstream body's end, to keep its
    connection; the client's reply ends without waiting for it."""
    monkeypatch.setattr(upstream._Wire, "FINISH_WAIT", 30.0)
    body = chunked([events_body(["Sure", "! Let me", " check."])])
    gate = threading.Event()
    raw = RawUpstream([HEAD + body[:-5], body[-5:]], gate)  # the end, once the client has all
    bridge = behind(raw)
    for _ in range(2):
        assert whole_reply(bridge) == "Sure! Let me check."
        gate.set()
    assert raw.connections == 1, "the upstream's end was still read: the connection kept"


def test_over_tls_replies_relay_whole_and_share_one_connection(
    behind: Behind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SambaNova is reached over TLS: the reader takes the TLS socket under httpx, and the
    connection (its handshake) serves the next turns. ``SSL_CERT_FILE`` is httpx's own way
    to trust another CA (a corporate proxy's, here the test certificate)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(DATA / "loopback-cert.pem"))
    body = sse_body(["Sure", "! Let me", " check."])
    raw = RawUpstream([HEAD + body[:40], body[40:]], tls=True)
    bridge = behind(raw)
    for _ in range(3):
        assert whole_reply(bridge) == "Sure! Let me check."
    assert raw.requests == 3 and raw.connections == 1


def test_over_tls_events_larger_than_a_record_and_many_in_one_relay_whole(
    behind: Behind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read without waiting on the relay loop, TLS hands over at most one record (16 KiB) a
    read: events that span records, and many events in one, all arrive in order."""
    monkeypatch.setenv("SSL_CERT_FILE", str(DATA / "loopback-cert.pem"))
    texts = [f"{i:02d}" + "x" * 40_000 if i % 3 == 0 else f"{i:02d} " for i in range(30)]
    raw = RawUpstream([HEAD + sse_body(texts)], tls=True)
    bridge = behind(raw)
    for _ in range(2):
        assert whole_reply(bridge) == "".join(texts)
    assert raw.connections == 1
