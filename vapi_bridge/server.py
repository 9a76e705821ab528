"""Run the WSGI app on a threaded server and stop it cleanly.

The server runs in a background thread so the main thread is free for what must happen there
on every platform: receiving Ctrl-C / SIGTERM (SIGBREAK on Windows), opening the tunnel, and
draining live streams before exit. No debug mode and no reloader: this listens behind a public
tunnel.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flask import Flask

# SIGHUP: the terminal closed. The ngrok agent runs in its own session and would not get it,
# so the bridge stops as on Ctrl-C and stops the agent itself.
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")
    if hasattr(signal, name)
)


class Server(Protocol):
    """What ``serve`` needs from a server: the bound port, start, and an orderly stop."""

    @property
    def port(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, grace: float = 5.0) -> int: ...


# The cyclic GC's oldest generation is collected after this many collections of the middle
# one (Python's default: 10).
FULL_GC_AFTER = 100


def quiet_gc() -> None:
    """Make the cyclic GC's full collections ten times rarer in a serving process.

    A full collection walks every object alive, and each live stream keeps hundreds (its
    thread, frames, request, upstream response): at a hundred streams it holds the GIL for
    about 150 ms, stalling every stream at once, and came three times per 1,200 replies.
    Young collections, which free the per-chunk garbage, run as often as before.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_AFTER)


# The threaded server's protocol (werkzeug's, when threaded): replies to HTTP/1.1 requests are
# chunked.
SERVER_PROTOCOL = "HTTP/1.1"
# How long a thread may keep the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL = 0.0005
# After the grace, live replies are ended cleanly; one whose client still reads nothing this
# many seconds later is cut (the relay loop closes), so the stop never waits on a client.
STUCK_WAIT = 2.0


def quick_handover() -> None:
    """Let the relay loop take the GIL back sooner.

    The loop gives the GIL up in every socket call; a request's thread may take it then, and
    the loop waits until that thread gives it up or this interval passes. At 5 ms every
    stream waits behind one request's work; at 0.5 ms, at a hundred streams, the added time
    to the first token dropped from about +85 to +35 ms (p99) on this project's benchmark.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


# Where the server keeps a request's WSGI body, to close it if werkzeug did not.
BODY_KEY = "vapi_bridge.body"


class _ClosedOnce:
    """A WSGI body whose ``close()`` runs once, whoever calls it.

    After a response werkzeug drains the request socket, and a client that resets the
    connection just then makes that read raise: werkzeug then skips closing the body, and the
    turn would end (request log, metrics, the upstream connection) only when the garbage
    collector next looks. The handler closes it after werkzeug, a no-op when werkzeug did.
    """

    __slots__ = ("_body", "_open")

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body
        self._open = True

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        if self._open:
            self._open = False
            close = getattr(self._body, "close", None)
            if close is not None:
                close()


def local_url(host: str, port: int) -> str:
    """The URL this machine reaches the server at (a wildcard bind means loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """Bind here so a busy port raises OSError for the caller to explain."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


class InFlight:
    """The requests being answered and their connections, so a stop can wait until each one
    is fully sent, and cut those whose clients read nothing."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._connections: list[socket.socket] = []

    @property
    def count(self) -> int:
        return len(self._connections)

    @contextlib.contextmanager
    def request(self, connection: socket.socket) -> Iterator[None]:
        with self._idle:
            self._connections.append(connection)
        try:
            yield
        finally:
            with self._idle:
                self._connections.remove(connection)
                self._idle.notify_all()

    def cut(self) -> None:
        """Shut every connection still being answered: a write blocked on a client that
        reads nothing fails at once (EPIPE), and its request ends as if the client had left."""
        with self._idle:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self.count == 0, timeout)


class Workers:
    """Threads that serve one connection after another.

    socketserver starts a thread per connection: about 0.13 ms of CPU to start and end one,
    and on the way to every first token. A thread that finished waits here for the next
    connection (up to :attr:`IDLE` seconds, then ends); a connection that finds none idle
    gets a new one, so there is no cap on concurrent calls, as before.
    """

    IDLE = 10.0

    def __init__(self, serve: Callable[..., None]) -> None:
        self._serve = serve
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for a job, less the jobs already queued for them
        self._closed = False

    def serve(self, *job: Any) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(
            target=self._work, args=(job,), name="vapi-bridge-request", daemon=True
        ).start()

    def close(self) -> None:
        """Let the idle workers end (busy ones end after their connection)."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0

    def _work(self, job: tuple[Any, ...] | None) -> None:
        while job is not None:
            self._serve(*job)
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    try:  # queued for this worker as it timed out
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


class EndFlushingWriter(io.BufferedWriter):
    """A buffered socket writer that sends a chunked body's end at once.

    werkzeug writes ``0\r\n\r\n`` after the last chunk, then waits 10 ms for stray request
    bytes before it closes the connection; buffered, the end would wait with it, and a client
    that reads to the end of the message (OpenAI's SDKs do, after ``[DONE]``) would end every
    turn 10 ms late.
    """

    END = b"0\r\n\r\n"

    def write(self, data: Any) -> int:
        written = super().write(data)
        if data == self.END:
            self.flush()
        return written


class BridgeServer:
    """A bound, threaded HTTP server for the bridge app."""

    def __init__(self, app: Flask, host: str, port: int, end_live_turns: Callable[[], int]) -> None:
        from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

        from vapi_bridge.relay import RelayLoop, offer

        relay = self._relay = RelayLoop()

        class NoDelayHandler(WSGIRequestHandler):
            """One send per SSE chunk, sent at once.

            werkzeug writes a chunk as four pieces (size, CRLF, data, CRLF) and flushes after
            each chunk; a buffered writer turns that into one send instead of four, and
            TCP_NODELAY stops Nagle from holding the send for the client's delayed ACK.
            """

            wbufsize = 64 * 1024

            def finish(self) -> None:
                # A client that left (barge-in) leaves bytes in the buffer; closing it then
                # fails. That is the normal end of the connection: release the reader too.
                try:
                    super().finish()
                except OSError:
                    self.rfile.close()

            def run_wsgi(self) -> None:
                # werkzeug chunks a streamed reply whenever its own protocol is HTTP/1.1,
                # which an HTTP/1.0 client cannot read: such a reply is sent whole, up to
                # the connection's close, as HTTP/1.0 says.
                self.protocol_version = (
                    SERVER_PROTOCOL if self.request_version >= "HTTP/1.1" else "HTTP/1.0"
                )
                with inflight.request(self.connection):
                    try:
                        super().run_wsgi()
                    finally:
                        with contextlib.suppress(OSError, ValueError):
                            self.wfile.flush()
                        body = self.environ.get(BODY_KEY) if hasattr(self, "environ") else None
                        if body is not None:
                            body.close()

            def version_string(self) -> str:
                """The Server header names the bridge alone: werkzeug's would tell anyone
                who reaches the tunnel its version and Python's."""
                return "vapi-bridge"

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """The bridge writes its own request log; werkzeug's would format each
                request's line only for its logger to drop it."""

            def make_environ(self) -> Any:
                environ = super().make_environ()
                # The loop writes HTTP/1.1 chunks: it takes the replies werkzeug chunks.
                if self.protocol_version == "HTTP/1.1":
                    offer(environ, relay, self.connection)
                return environ

            def setup(self) -> None:
                super().setup()
                self.wfile = EndFlushingWriter(self.wfile.detach(), self.wbufsize)
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        class Listener(ThreadedWSGIServer):
            """werkzeug closes the socket as serve_forever ends, which resets connections
            still in the kernel's accept queue; :meth:`BridgeServer.stop` closes it instead,
            after serving them. Connections are served by :class:`Workers`."""

            def process_request(self, request: Any, client_address: Any) -> None:
                workers.serve(request, client_address)

            def server_close(self) -> None:
                """Closed by :meth:`close_now`."""

            def close_now(self) -> None:
                super().server_close()

        def closed_once(environ: dict[str, Any], start_response: Any) -> _ClosedOnce:
            body = environ[BODY_KEY] = _ClosedOnce(app(environ, start_response))
            return body

        # werkzeug's per-request access log would duplicate the bridge's own request log.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        workers = self._workers = Workers(lambda *job: self._server.process_request_thread(*job))
        self._end_live_turns = end_live_turns
        inflight = self._inflight = InFlight()
        # werkzeug would print its own message and exit the process on a busy port.
        try:
            listener = listen(host, port)
            try:
                self._server = Listener(
                    host, port, closed_once, handler=NoDelayHandler, fd=listener.fileno()
                )
            finally:
                listener.close()
        except BaseException:
            relay.close()  # its selector and socket pair are open already
            raise
        self._stopped = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vapi-bridge-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        quiet_gc()
        quick_handover()
        self._thread.start()

    def stop(self, grace: float = 5.0) -> int:
        """Stop accepting, let live requests finish for ``grace`` s, then end the rest cleanly.

        Returns how many requests had to be cut short.
        """
        if self._stopped:
            return 0
        self._stopped = True
        deadline = time.monotonic() + grace
        self._server.shutdown()
        late = self._serve_backlog()
        self._server.close_now()
        for thread in late:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._inflight.wait_idle(max(0.0, deadline - time.monotonic())):
            cut = 0
        else:
            cut = self._end_live_turns()
            self._inflight.wait_idle(STUCK_WAIT)
        # A reply whose client still reads nothing is cut: on the relay loop, by closing it;
        # on its own thread (HTTP/1.0, or no seat on the loop), by shutting its connection.
        # Its request then ends, and writes its log line before the process exits.
        self._relay.close()
        self._inflight.cut()
        self._inflight.wait_idle(1.0)
        self._workers.close()
        return cut

    def _serve_backlog(self) -> list[threading.Thread]:
        """Answer connections already accepted by the kernel but not yet by the server.

        Closing the listener would reset them, and a proxy that already sent its POST will
        not retry it elsewhere: that would be a lost turn during a rolling restart.
        """
        listener = self._server.socket
        listener.setblocking(False)
        late: list[threading.Thread] = []
        while True:
            try:
                connection, address = listener.accept()
            except OSError:
                return late
            connection.setblocking(True)
            thread = threading.Thread(
                target=self._server.process_request_thread,
                args=(connection, address),
                name="vapi-bridge-late",
                daemon=True,
            )
            thread.start()
            late.append(thread)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C or SIGTERM; a second one interrupts at once."""
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def wait(stop: threading.Event) -> None:
    """Block until ``stop`` is set; the short timeout keeps signals deliverable on Windows."""
    while not stop.wait(0.25):
        pass
