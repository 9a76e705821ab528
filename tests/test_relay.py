"""The relay loop: one thread carries every stream after its first frame.

The loop's own contract is tested over socket pairs (what it writes, whose thread ends a
reply, a client that left or never reads); the bridge's, through the real server with the
real SDK against the fake SambaNova.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import selectors
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, text_chunks
from tests.helpers import (
    BridgeFactory,
    LogCapture,
    read_to_end,
    read_until,
    sse_events,
    stuck_client,
    text_of,
    vapi_request,
    wait_until,
)
from vapi_bridge import sse
from vapi_bridge.relay import RelayLoop
from vapi_bridge.upstream import Blocked


def switched() -> bool:
    """The frames below are made to never wait already."""
    return True


@pytest.fixture
def loop() -> Iterator[RelayLoop]:
    relay = RelayLoop()
    yield relay
    relay.close()


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """Vapi's side (the bridge's end, the client's end) and the upstream's (the same)."""
    client, vapi = socket.socketpair()
    upstream, sambanova = socket.socketpair()
    yield client, vapi, upstream, sambanova
    for sock in (client, vapi, upstream, sambanova):
        sock.close()


def test_frames_go_out_as_http_chunks_and_the_reply_ends_on_the_callers_thread(
    loop: RelayLoop, pairs: tuple[socket.socket, ...]
) -> None:
    """Frames ready together go out together, each its own HTTP/1.1 chunk; the loop waits
    on the upstream socket in between and stops after [DONE], so what runs after it (the
    request log, reply hooks) runs on the request's thread."""
    client, vapi, upstream, sambanova = pairs
    read_on: list[threading.Thread] = []
    ended_on: list[threading.Thread] = []

    def frames() -> Iterator[bytes | Blocked]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
            yield Blocked(upstream)
            read_on.append(threading.current_thread())
            assert upstream.recv(16) == b"go"
            yield b"data: 3\n\n"
            yield sse.DONE
        finally:
            ended_on.append(threading.current_thread())

    running = frames()
    carried = threading.Thread(target=loop.carry, args=(running, client, switched))
    carried.start()
    assert read_until(vapi, b"data: 2\n\n\r\n") == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n"
    sambanova.sendall(b"go")
    assert (
        read_until(vapi, sse.DONE + b"\r\n")
        == b"9\r\ndata: 3\n\n\r\n" + b"%x\r\n" % len(sse.DONE) + sse.DONE + b"\r\n"
    )
    carried.join(5)
    assert not carried.is_alive()
    assert read_on[0] not in (threading.current_thread(), carried)  # the loop's thread
    assert not ended_on
    assert list(running) == []  # the frames are the caller's again, and end here
    assert ended_on == [threading.current_thread()]
    assert client.gettimeout() is None, "the client's socket is blocking again for the server"


def test_a_client_that_left_raises_in_the_caller(
    loop: RelayLoop, pairs: tuple[socket.socket, ...]
) -> None:
    client, vapi, _, _ = pairs
    vapi.close()

    def frames() -> Iterator[bytes | Blocked]:
        while True:
            yield b"data: x\n\n" * 1000

    with pytest.raises(OSError):
        loop.carry(frames(), client, switched)


def test_an_error_in_the_frames_reaches_the_caller(
    loop: RelayLoop, pairs: tuple[socket.socket, ...]
) -> None:
    client = pairs[0]

    def frames() -> Iterator[bytes | Blocked]:
        yield b"data: 1\n\n"
        raise ValueError("a stage failed")

    with pytest.raises(ValueError, match="a stage failed"):
        loop.carry(frames(), client, switched)


def test_closing_the_loop_releases_a_stream_whose_client_never_reads(
    loop: RelayLoop, pairs: tuple[socket.socket, ...]
) -> None:
    client = pairs[0]
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writing = threading.Event()

    def frames() -> Iterator[bytes | Blocked]:
        writing.set()
        while True:
            yield b"data: x\n\n" * 1000

    outcome: list[BaseException] = []

    def carry() -> None:
        try:
            loop.carry(frames(), client, switched)
        except BaseException as exc:
            outcome.append(exc)

    carried = threading.Thread(target=carry)
    carried.start()
    assert writing.wait(5)
    loop.close()
    carried.join(5)
    # Cut as a write to a connection gone would be (servers log no traceback for that), and
    # the connection is shut: the client is not left waiting.
    assert isinstance(outcome[0], BrokenPipeError) and outcome[0].errno == errno.EPIPE
    with pytest.raises(OSError):
        client.send(b"x")
    # A reply handed over after the stop is left to its caller, its frames untouched.
    started: list[bool] = []

    def start() -> bool:
        started.append(True)
        return True

    assert loop.carry(iter([sse.DONE]), client, start) is False
    assert started == []


# Through the bridge.


def reply_text(response: httpx.Response) -> str:
    *chunks, done = sse_events(response)
    assert done == "[DONE]"
    return text_of(chunks)


def test_a_client_that_stops_reading_holds_up_no_other_stream(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    """A reply larger than the sockets' buffers, to a client that stops reading: the loop
    waits for that client alone, while another call's reply goes through whole."""
    bridge = start_bridge()
    stuck, head = stuck_client(bridge.url, bridge.secret, fake, 128)
    with stuck:
        other = bridge.post(vapi_request(), timeout=10)  # the stuck reply is still unread
        assert reply_text(other) == "Sure! Let me check Tuesday for you."
        received = head + read_until(stuck, b"0\r\n\r\n")
    events = [line for line in received.split(b"\n") if line.startswith(b"data: {")]
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in events]
    whole = "".join(texts)
    assert len(whole) == 128 * 64 * 1024
    assert [whole[i * 65536 : i * 65536 + 4] for i in range(128)] == [
        f"{i:04d}" for i in range(128)
    ]
    assert b"data: [DONE]" in received


def test_stopping_under_a_client_that_stopped_reading_is_a_shutdown_not_a_barge_in(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """The stop's grace runs out with the loop waiting for a client that reads nothing: the
    reply is released and logged (and counted) as cut by the shutdown, not as a barge-in."""
    bridge = start_bridge()
    stuck, _ = stuck_client(bridge.url, bridge.secret, fake, 64)
    with stuck:
        bridge.stop(grace=0.2)
        logs.wait_for(lambda line: "POST /chat/completions" in line)
    assert any("outcome=shutdown" in line for line in logs.lines)
    assert not any("outcome=client_closed" in line for line in logs.lines)


def test_a_client_that_resets_as_the_server_drains_still_ends_its_turn(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """The stop releases a reply its client is not reading, and the client then resets the
    connection (it closes with bytes unread) while werkzeug drains the request socket: the
    read fails there and werkzeug skips closing the body. The turn still ends at once (its
    request log, its metrics, the upstream), not at the garbage collector's next pass."""
    bridge = start_bridge()
    stuck, _ = stuck_client(bridge.url, bridge.secret, fake, 64)
    gc.disable()  # the turn must not need it
    try:
        bridge.stop(grace=0.2)
        stuck.close()
        assert "outcome=shutdown" in logs.wait_for(lambda line: "POST /chat" in line)
    finally:
        gc.enable()
    assert fake.wait_no_open_streams()


def test_a_barge_in_on_the_loop_is_logged_and_releases_the_upstream(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """The caller talks over the reply after a few chunks (Vapi closes the connection): the
    loop's next write fails, the turn ends as client_closed, and the upstream is closed."""
    bridge = start_bridge()
    fake.push(Script(chunks=text_chunks(["word "] * 200), gap=0.01))
    with httpx.stream(
        "POST", bridge.url + "/chat/completions", json=vapi_request(), headers=bridge.headers()
    ) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: {") for line in seen)
    logs.wait_for(lambda line: "outcome=client_closed" in line)
    assert fake.wait_no_open_streams()
    assert reply_text(bridge.post(vapi_request())) == "Sure! Let me check Tuesday for you."


# What the loop must survive, and what must not leak.


def test_a_full_loop_leaves_the_stream_to_its_caller_and_frees_the_seat_after(
    pairs: tuple[socket.socket, ...],
) -> None:
    """Past its seats (select() takes at most 512 sockets on Windows) the loop takes no more
    streams: they are not switched to reads that never wait, and stay on their threads."""
    relay = RelayLoop(seats=1)
    client, vapi, upstream, sambanova = pairs
    switches: list[str] = []

    def start(name: str) -> Callable[[], bool]:
        def switch() -> bool:
            switches.append(name)
            return True

        return switch

    def waiting() -> Iterator[bytes | Blocked]:
        yield Blocked(upstream)
        assert upstream.recv(16) == b"go"
        yield sse.DONE

    try:
        carried = threading.Thread(target=relay.carry, args=(waiting(), client, start("first")))
        carried.start()
        assert wait_until(lambda: switches == ["first"])
        assert not relay.carry(iter([sse.DONE]), client, start("second"))
        assert switches == ["first"], "no seat: the second stream was never switched"
        sambanova.sendall(b"go")
        assert read_until(vapi, sse.DONE + b"\r\n").endswith(sse.DONE + b"\r\n")
        carried.join(5)
        assert not carried.is_alive()
        assert not relay.carry(iter([sse.DONE]), client, lambda: False)
        assert relay.carry(iter([sse.DONE]), client, start("third"))
        assert switches == ["first", "third"], "each stream gave its seat back"
    finally:
        relay.close()


@pytest.mark.skipif(sys.platform != "linux", reason="needs a descriptor above FD_SETSIZE")
def test_a_select_failure_cuts_the_streams_on_the_loop_not_the_next_ones(
    pairs: tuple[socket.socket, ...],
) -> None:
    """A selector that fails (select() with a descriptor it cannot watch) ends the streams
    the loop carries with its error; the loop goes on for the next ones."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1100:
        pytest.skip("the descriptor limit is too low for a descriptor above FD_SETSIZE")
    relay = RelayLoop(selectors.SelectSelector())
    client, _, upstream, _ = pairs
    high = socket.socket(fileno=os.dup2(upstream.fileno(), 1100))
    try:

        def frames() -> Iterator[bytes | Blocked]:
            yield b"data: 1\n\n"
            yield Blocked(high)
            yield sse.DONE

        with pytest.raises(ValueError):
            relay.carry(frames(), client, switched)
        other, other_vapi = socket.socketpair()
        with other, other_vapi:
            assert relay.carry(iter([b"data: 2\n\n", sse.DONE]), other, switched)
            assert read_until(other_vapi, sse.DONE + b"\r\n").startswith(b"9\r\ndata: 2")
    finally:
        high.close()
        relay.close()


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd")
def test_a_server_that_cannot_bind_leaves_no_relay_loop_open(
    start_bridge: BridgeFactory,
) -> None:
    """The relay loop (a selector and a socket pair) is made before the port is bound: on a
    busy port it stayed open until the next full garbage collection (the handler class
    refers to it in a cycle)."""
    import gc
    from typing import cast

    from flask import Flask

    from vapi_bridge.errors import BridgeError
    from vapi_bridge.server import BridgeServer

    running = start_bridge()
    port = running.server.port
    app = cast(Flask, running.server._server.app)
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises((BridgeError, OSError)):
                BridgeServer(app, "127.0.0.1", port, running.bridge.end_live_turns)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        gc.enable()


def test_an_http_1_0_client_gets_its_reply_unchunked(
    start_bridge: BridgeFactory, fake: FakeSambaNova
) -> None:
    """HTTP/1.0 has no chunked coding: the reply is sent whole, ended by the connection's
    close, and read as plain SSE (werkzeug chunked it for any client)."""
    bridge = start_bridge()
    host, port = bridge.url.removeprefix("http://").split(":")
    body = json.dumps(vapi_request()).encode()
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {bridge.secret}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = read_to_end(client)
    head, _, reply = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    assert b"transfer-encoding" not in head.lower()
    *chunks, done = sse.events(reply.decode().splitlines())
    assert done.data == "[DONE]"
    assert text_of([json.loads(event.data) for event in chunks]) == (
        "Sure! Let me check Tuesday for you."
    )
