"""The streaming turn: stages, the watchdog, and shutdown of streams that send nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.sambanova import FakeSambaNova, Script, text_chunks
from tests.helpers import SECRET, BridgeFactory, LogCapture, RunningBridge, vapi_request
from tests.process import Serve
from vapi_bridge import probe, sse
from vapi_bridge.stages import Collect, Normalise, Pipeline, Trace
from vapi_bridge.turn import LiveTurns


def test_a_stalled_stream_still_ends_cleanly_when_the_grace_period_ends(
    start_bridge: BridgeFactory, fake: FakeSambaNova, logs: LogCapture
) -> None:
    """Upstream sends one chunk then nothing; the stop must not wait for a chunk to arrive."""
    bridge = start_bridge(stall_timeout=60)
    fake.push(Script(chunks=text_chunks()[:1], end="stall"))
    lines: list[str] = []
    first = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "POST",
            bridge.url + "/chat/completions",
            json=vapi_request(),
            headers=bridge.headers(),
            timeout=30,
        ) as response:
            for line in response.iter_lines():
                lines.append(line)
                first.set()

    reader = threading.Thread(target=listen)
    reader.start()
    assert first.wait(10)
    assert bridge.server.stop(grace=0.2) == 1, "one live stream was ended"
    reader.join(10)
    assert not reader.is_alive()
    events = list(sse.events(lines, comments=True))
    assert [e.comment for e in events if e.comment] == [f"{sse.CUT_PREFIX}shutdown"]
    assert events[-1].done
    logs.wait_for(lambda line: "outcome=shutdown" in line)


def test_stages_run_in_order_and_flush_what_they_held(fake: FakeSambaNova) -> None:
    """A stage that holds a chunk back gives it out at the end, through the later stages."""

    class HoldFirst:
        def __init__(self) -> None:
            self.held: dict[str, Any] | None = None

        def feed(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
            if self.held is None:
                self.held = chunk
                return None
            return chunk

        def flush(self) -> dict[str, Any] | None:
            held, self.held = self.held, None
            return held

    trace = Trace()
    collect = Collect(trace)
    pipeline = Pipeline([Normalise(trace, model="m"), HoldFirst(), collect])
    outs = [pipeline.feed(c) for c in text_chunks()]
    assert outs[0] is None and all(o is not None for o in outs[1:-1])
    assert outs[-1] is None, "the usage-only chunk is not forwarded unless asked for"
    assert [c["choices"][0]["delta"].get("content") for c in pipeline.flush()] == ["Sure"]
    assert collect.text == "! Let me check Tuesday for you.Sure"
    assert trace.usage is not None and trace.usage["completion_tokens"] == 41


def test_after_reply_work_left_at_shutdown_is_counted(fake: FakeSambaNova, tmp_path: Path) -> None:
    """A reply hook that never returns: what could not run is said, and stop still ends."""
    (tmp_path / "stuck_hook.py").write_text(
        "import threading\n\ndef stuck(reply):\n    threading.Event().wait()\n"
    )
    env = {
        "SAMBANOVA_API_KEY": "test-key",
        "SAMBANOVA_BASE_URL": fake.base_url,
        "PYTHONPATH": str(tmp_path),
    }
    with Serve(
        "--no-tunnel",
        "--port",
        "0",
        "--secret",
        SECRET,
        "--shutdown-grace",
        "0.3",
        "--reply-hook",
        "stuck_hook:stuck",
        env=env,
    ) as serve:
        url = serve.stdout_line()
        headers = {"Authorization": f"Bearer {SECRET}"}
        for _ in range(3):
            response = httpx.post(url + "/chat/completions", json=vapi_request(), headers=headers)
            assert response.status_code == 200
        assert serve.stop("SIGTERM") == 0
    assert "3 transcript line(s) or reply hook call(s) did not run" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_vapi_bridge_test_tells_a_cut_reply_from_a_whole_one(
    bridge: RunningBridge, fake: FakeSambaNova
) -> None:
    """SambaNova drops mid-stream: Vapi gets a clean end, `test` says the reply was cut."""
    cut = probe.run(bridge.url, secret=bridge.secret, model="drop")
    assert cut.ok is False and cut.cut == "upstream_error"
    assert cut.finish_reason == "stop", "the client still got a finish chunk"
    whole = probe.run(bridge.url, secret=bridge.secret)
    assert whole.ok is True and whole.cut is None


def test_a_connection_waiting_in_the_accept_queue_at_stop_is_answered(
    start_bridge: BridgeFactory,
) -> None:
    """A rolling restart must not reset a turn a load balancer already sent: the stop serves
    what the kernel accepted before closing the listener."""
    bridge = start_bridge()
    bridge.server._server.shutdown()  # the accept loop ends; the kernel still queues
    port = int(bridge.url.rsplit(":", 1)[1])
    body = json.dumps(vapi_request()).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /chat/completions HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n"
            + f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        stopper = threading.Thread(target=bridge.server.stop, kwargs={"grace": 5})
        stopper.start()
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    stopper.join(10)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b"data: [DONE]" in reply


class _Deadline:
    """A turn as the watchdog sees it: a deadline, and a call when it passes."""

    def __init__(self) -> None:
        self.abort_reason: str | None = None
        self.at = float("inf")
        self.expired = threading.Event()

    def due(self) -> float:
        return self.at

    def expire(self, now: float) -> None:
        self.abort_reason = "stall"
        self.expired.set()


def _watched(live: LiveTurns) -> _Deadline:
    turn = _Deadline()
    live.add(turn)  # type: ignore[arg-type]
    # The watchdog is asleep until its next look (at most the stall limit away).
    deadline = time.monotonic() + 5
    while live._wakes_at == float("-inf") and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    return turn


def test_the_watchdog_wakes_for_a_deadline_sooner_than_its_next_look() -> None:
    live = LiveTurns(stall_timeout=60)
    turn = _watched(live)
    turn.at = time.monotonic() + 0.1
    live.watch(turn)  # type: ignore[arg-type]
    assert turn.expired.wait(5)


def test_a_deadline_no_one_announced_is_caught_within_the_stall_limit() -> None:
    # Stall deadlines move with every chunk and are never announced: the watchdog's sleep,
    # never longer than the stall limit, is what catches them.
    live = LiveTurns(stall_timeout=0.5)
    turn = _watched(live)
    turn.at = time.monotonic() + 0.2
    assert turn.expired.wait(5)
