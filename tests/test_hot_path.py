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

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.sambanova import FakeSambaNova, Script, chunk, text_chunks
from tests.helpers import BridgeFactory, sse_events, vapi_request
from vapi_bridge import sse
from vapi_bridge.upstream import SambaNovaUpstream

PROPERTIES = settings(max_examples=300, deadline=None)


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
