"""Run the WSGI app on a threaded server and stop it cleanly.

The server runs in a background thread so the main thread is free for what must happen there
on every platform: receiving Ctrl-C / SIGTERM (SIGBREAK on Windows), opening the tunnel, and
draining live streams before exit. No debug mode and no reloader: this listens behind a public
tunnel.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from vapi_bridge.app import Streams

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)


class BridgeServer:
    """A bound, threaded HTTP server for the bridge app."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        class NoDelayHandler(WSGIRequestHandler):
            """Send each small write (an SSE chunk) at once: no Nagle wait for a delayed ACK."""

            def setup(self) -> None:
                super().setup()
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        # werkzeug's per-request access log would duplicate the bridge's own request log.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._streams: Streams = app.extensions["vapi_bridge.streams"]
        # Bind here so a busy port raises OSError for the caller to explain; werkzeug would
        # print its own message and exit the process.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128)
        try:
            self._server = make_server(
                host, port, app, threaded=True, request_handler=NoDelayHandler, fd=listener.fileno()
            )
        finally:
            listener.close()
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
        self._thread.start()

    def stop(self, grace: float = 5.0) -> int:
        """Stop accepting, let live streams finish for ``grace`` s, then end the rest cleanly.

        Returns how many streams had to be cut short.
        """
        self._server.shutdown()
        self._server.server_close()
        if self._streams.wait_idle(grace):
            return 0
        cut = self._streams.active
        self._streams.stopping.set()
        self._streams.wait_idle(2.0)
        return cut


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
