"""Where the bridge's CPU per relayed chunk goes, by layer, on the real path under load.

The bridge runs in this process, built by the same factory as ``serve`` (werkzeug's threaded
server, the real SambaNova SDK and httpx, the default stages); the fake upstream (40 chunks,
20 ms apart, as in ``bench/latency.py``) and the load client run as separate processes. Each
layer of the path is wrapped to add its **thread CPU time** (``time.thread_time``: user and
system time of the thread doing the work, never time spent waiting for data or the GIL) to
that layer, exclusive of the layers it calls. What no wrapper covers (the accept loop, the
watchdog, thread start-up) is "unattributed": the process's CPU minus the layers' sum.

The wrappers cost CPU themselves (two clock reads each), so the process's CPU per chunk is
printed with and without them (``--plain`` runs only the latter); read the layer figures as
shares of the instrumented total.

    python bench/profile_relay.py [--streams 50] [--total 400] [--plain]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import SECRET, stop
from bench.latency import MODEL, start_backlogged_fake

LOAD = """
import asyncio, json, sys
import bench.latency
from bench.latency import level
url, key, n, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bench.latency.MODEL = sys.argv[5]
run = asyncio.run(level(url, {"Authorization": "Bearer " + key}, n, total))
print(json.dumps({"completed": run.completed, "errors": run.errors, "chunks": run.chunks}))
"""


class Meter:
    """Thread CPU per layer, exclusive of nested layers; one stack per thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[collections.defaultdict[str, float]] = []
        self._lock = threading.Lock()
        self.clock = time.thread_time

    def _stack(self) -> list[list[Any]]:
        stack: list[list[Any]] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
            self._local.totals = totals = collections.defaultdict[str, float](float)
            with self._lock:
                self._all.append(totals)
        return stack

    def enter(self, name: str) -> None:
        self._stack().append([name, self.clock(), 0.0])

    def leave(self) -> None:
        stack = self._stack()
        name, started, inner = stack.pop()
        spent = self.clock() - started
        self._local.totals[name] += spent - inner
        if stack:
            stack[-1][2] += spent

    def totals(self) -> dict[str, float]:
        out: collections.defaultdict[str, float] = collections.defaultdict(float)
        with self._lock:
            for totals in self._all:
                for name, seconds in list(totals.items()):
                    out[name] += seconds
        return out

    def reset(self) -> None:
        with self._lock:
            for totals in self._all:
                totals.clear()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Count calls of ``owner.attr`` as ``name`` (skipped when the attribute is absent)."""
        original = getattr(owner, attr, None)
        if original is None:
            return
        meter = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            meter.enter(name)
            try:
                return original(*args, **kwargs)
            finally:
                meter.leave()

        setattr(owner, attr, wrapper)

    def wrap_iter(self, owner: Any, attr: str, name: str, *, after: str | None = None) -> None:
        """Count each step of the iterator ``owner.attr(...)`` returns as ``name``; with
        ``after``, the consumer's work between steps (the server writing a frame) too."""
        original = getattr(owner, attr, None)
        if original is None:
            return
        meter = self

        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            return Steps(meter, iter(original(*args, **kwargs)), name, after)

        setattr(owner, attr, wrapper)


class Steps:
    """An iterator whose steps are metered; closing closes the one it wraps."""

    def __init__(self, meter: Meter, inner: Iterator[Any], name: str, after: str | None) -> None:
        self.meter, self.inner, self.name, self.after = meter, inner, name, after
        # The threads in the consumer's layer: the request's thread hands a reply's frames to
        # the relay loop's thread and takes them back for the end.
        self.consumers: set[int] = set()

    def __iter__(self) -> Steps:
        return self

    def _leave_consumer(self) -> None:
        thread = threading.get_ident()
        if thread in self.consumers:
            self.meter.leave()
            self.consumers.discard(thread)

    def __next__(self) -> Any:
        self._leave_consumer()
        self.meter.enter(self.name)
        try:
            value = next(self.inner)
        finally:
            self.meter.leave()
        if self.after is not None:
            self.meter.enter(self.after)
            self.consumers.add(threading.get_ident())
        return value

    def close(self) -> None:
        self._leave_consumer()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def instrument(meter: Meter) -> None:
    """Wrap each layer of the path (whatever of it this version of the bridge has)."""
    import socketserver

    import flask
    import h11
    import httpcore._backends.sync
    import httpx
    import httpx._decoders

    from vapi_bridge import attempts, reasoning, reqlog, speech, sse, stages, turn, upstream

    relay = sys.modules.get("vapi_bridge.relay")  # absent in versions without the relay loop
    if relay is None:
        with contextlib.suppress(ImportError):
            relay = importlib.import_module("vapi_bridge.relay")

    wrap, wrap_iter = meter.wrap, meter.wrap_iter
    wrap(socketserver.ThreadingMixIn, "process_request_thread", "per request: HTTP server")
    wrap(flask.Flask, "wsgi_app", "per request: Flask, auth, translate, app")
    wrap(attempts.Attempt, "_run", "per request: attempt thread")
    wrap(httpx.Client, "send", "per request: SDK and httpx send")
    wrap(reqlog.RequestRecord, "emit", "per request: request log")
    wrap(httpcore._backends.sync.SyncStream, "read", "upstream socket read (recv)")
    wrap(getattr(upstream, "_Chunks", None), "feed", "upstream HTTP body parsing (h11, chunks)")
    wrap(h11.Connection, "next_event", "upstream HTTP body parsing (h11, chunks)")
    wrap(h11.Connection, "receive_data", "upstream HTTP body parsing (h11, chunks)")
    wrap(httpx._decoders.TextDecoder, "decode", "httpx text and line decoding")
    wrap(httpx._decoders.LineDecoder, "decode", "httpx text and line decoding")
    wrap_iter(getattr(upstream, "_Wire", None), "blocks", "upstream socket read (recv)")
    wrap_iter(upstream.SSEStream, "__iter__", "upstream stream (httpx iterators, SSE loop)")
    wrap(sse.Parser, "feed", "SSE line parsing")
    for name in ("ByteParser", "Splitter"):
        wrap(getattr(sse, name, None), "feed", "SSE line parsing")
    wrap(json, "loads", "json decode")
    wrap(stages.Pipeline, "feed", "stages: pipeline loop")
    wrap(stages.Normalise, "feed", "stages: Normalise")
    wrap(reasoning.ReasoningFilter, "feed", "stages: ReasoningFilter")
    wrap(speech.SpeechFilter, "feed", "stages: SpeechFilter")
    wrap(stages.Collect, "feed", "stages: Collect")
    wrap(sse, "frame", "json encode and SSE framing")
    wrap_iter(turn.Turn, "_relay", "turn relay loop", after="server write and flush")
    wrap(socket.SocketIO, "write", "socket send")
    wrap(getattr(relay, "RelayLoop", None), "_write", "socket send")
    wrap(selectors.DefaultSelector, "select", "relay loop: waiting for sockets (select)")


def relay_cpu() -> float | None:
    """CPU seconds of the relay loop's thread so far (it runs the chunks after each reply's
    first frame), where the platform can tell; ``None`` otherwise."""
    for thread in threading.enumerate():
        if thread.name == "vapi-bridge-relay" and thread.ident is not None:
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (AttributeError, OSError):
                return None
    return None


def process_cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process."""
    times = os.times()
    return times.user, times.system


def load(url: str, streams: int, total: int, model: str = MODEL) -> dict[str, int]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", LOAD, url, SECRET, str(streams), str(total), model],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, int] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--total", type=int, default=400)
    parser.add_argument(
        "--model", default=MODEL, help="the fake's paced-<chunks>-<gap ms>-<ttft ms> reply"
    )
    parser.add_argument("--plain", action="store_true", help="no wrappers: the CPU per chunk only")
    args = parser.parse_args()

    import tempfile

    from tests.helpers import bridge_settings, run_bridge
    from vapi_bridge import reqlog

    # The request log as `serve` writes it, to a discarded stderr.
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    try:
        reqlog.setup("text")
    finally:
        sys.stderr = stderr
    meter = Meter()
    if not args.plain:
        instrument(meter)
    fake, fake_url = start_backlogged_fake()
    settings = bridge_settings(Path(tempfile.mkdtemp()), fake_url, secret=SECRET)
    bridge = run_bridge(settings)
    url = bridge.url + "/chat/completions"
    try:
        load(url, 4, 16)  # warm-up: imports, pools, first requests
        meter.reset()
        relayed_before = relay_cpu() or 0.0
        before = process_cpu()
        started = time.perf_counter()
        run = load(url, args.streams, args.total, args.model)
        wall = time.perf_counter() - started
        user, system = (after - start for after, start in zip(process_cpu(), before, strict=True))
        spent = user + system
        totals = meter.totals()
        relayed = relay_cpu()
        if relayed is not None:
            relayed -= relayed_before
    finally:
        bridge.stop()
        stop(fake)

    chunks = max(run["chunks"], 1)
    per_chunk: Callable[[float], float] = lambda seconds: seconds / chunks * 1e6  # noqa: E731
    print(
        f"{args.streams} streams, {run['completed']} replies ({run['errors']} errors), "
        f"{run['chunks']} chunks in {wall:.1f} s; load {os.getloadavg()[0]:.2f}"
    )
    label = "plain" if args.plain else "instrumented"
    print(
        f"user {per_chunk(user):.0f} us, system {per_chunk(system):.0f} us per chunk; "
        f"bridge CPU per 1,000 chunks ({label}): {spent / chunks * 1000:.3f} s"
    )
    if relayed is not None:
        print(
            f"of which the relay loop's thread {per_chunk(relayed):.0f} us per chunk, "
            f"the rest (requests, first frames, watchdog) {per_chunk(spent - relayed):.0f} us"
        )
    if args.plain:
        return
    attributed = sum(totals.values())
    totals["unattributed (accept loop, watchdog, threads)"] = max(0.0, spent - attributed)
    print("thread CPU by layer, us per chunk:")
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {per_chunk(seconds):7.1f}  {seconds / spent:5.1%}  {name}")


if __name__ == "__main__":
    main()
