"""The floor: what the least a Python relay can do costs on this machine, per chunk and in TTFT.

A relay that does almost nothing: one thread, one ``selectors`` loop over every socket, no
WSGI, no framework, no SDK, no httpx, no validation, no log. It reads a request's head and
body, sends them to the upstream on a kept-alive raw socket, and passes the upstream's chunked
body on. In ``json`` mode (the default) it also does the least a relay that must read each
chunk does: it splits the body into SSE events and runs ``json.loads`` and ``json.dumps`` on
each. It is not a bridge: it is the floor under any bridge written in Python, measured by
``bench/latency.py --floor`` beside the bridge, on the same cores, under the same load.

    python bench/floor.py UPSTREAM_BASE_URL [--mode json|bytes]    # prints its URL, serves
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"
REPLY_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class Exchange:
    """One client connection, and the upstream socket of the request it has in flight."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.inbox = b""
        self.upstream: socket.socket | None = None
        self.head_seen = False
        self.body = b""  # upstream chunked body bytes not yet complete
        self.out = bytearray()


class Floor:
    """The relay: one ``selectors`` loop, every socket non-blocking but the writes (the floor
    does not model a client that stops reading, nor one that leaves mid-reply)."""

    def __init__(self, upstream: str, parse_json: bool) -> None:
        parts = urlsplit(upstream)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.parse_json = parse_json
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.idle: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    self.accept()
                else:
                    exchange, side = key.data
                    if side == "client":
                        self.from_client(exchange)
                    else:
                        self.from_upstream(exchange)

    def accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(False)
        self.selector.register(client, selectors.EVENT_READ, (Exchange(client), "client"))

    def from_client(self, ex: Exchange) -> None:
        try:
            data = ex.client.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(ex.client)
            ex.client.close()
            return
        ex.inbox += data
        end = ex.inbox.find(HEAD_END)
        if end < 0:
            return
        head = ex.inbox[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(ex.inbox) < end + 4 + length:
            return
        body, ex.inbox = ex.inbox[end + 4 : end + 4 + length], ex.inbox[end + 4 + length :]
        upstream = self.idle.pop() if self.idle else self.connect()
        upstream.setblocking(True)
        upstream.sendall(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.address[0]}\r\n"
            f"Authorization: Bearer test-key\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        upstream.setblocking(False)
        ex.upstream, ex.head_seen, ex.body = upstream, False, b""
        self.selector.register(upstream, selectors.EVENT_READ, (ex, "upstream"))

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def from_upstream(self, ex: Exchange) -> None:
        upstream = ex.upstream
        assert upstream is not None
        try:
            data = upstream.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(upstream)
            upstream.close()
            ex.upstream = None
            return
        out = ex.out
        if not ex.head_seen:
            data = ex.body + data
            end = data.find(HEAD_END)
            if end < 0:
                ex.body = data
                return
            ex.head_seen, ex.body = True, b""
            out += REPLY_HEAD
            data = data[end + 4 :]
        buf = ex.body + data
        finished = False
        i = 0
        while True:
            line_end = buf.find(b"\r\n", i)
            if line_end < 0:
                break
            size = int(buf[i:line_end].split(b";")[0], 16)
            start, stop_at = line_end + 2, line_end + 2 + size
            if len(buf) < stop_at + 2:
                break
            chunk = buf[start:stop_at]
            if size == 0:
                finished = True
                i = stop_at + 2
                break
            if self.parse_json:
                framed = b""
                for event in chunk.split(b"\n\n"):
                    if event.startswith(b"data: {"):
                        event = b"data: " + json.dumps(json.loads(event[6:])).encode()
                    if event:
                        framed += event + b"\n\n"
                chunk = framed
            out += b"%x\r\n%b\r\n" % (len(chunk), chunk)
            i = stop_at + 2
        ex.body = buf[i:]
        if finished:
            out += b"0\r\n\r\n"
            self.selector.unregister(upstream)
            self.idle.append(upstream)
            ex.upstream = None
        ex.client.setblocking(True)
        ex.client.sendall(out)
        ex.client.setblocking(False)
        out.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "upstream", help="the fake upstream's base URL, e.g. http://127.0.0.1:PORT/v1"
    )
    parser.add_argument(
        "--mode",
        choices=("json", "bytes"),
        default="json",
        help="json: split events, json.loads and json.dumps each (default); bytes: pass through",
    )
    args = parser.parse_args()
    floor = Floor(args.upstream, args.mode == "json")
    print(floor.url, flush=True)
    floor.run()


if __name__ == "__main__":
    main()
