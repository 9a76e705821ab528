"""A fake ngrok agent (v3 API) that real pyngrok can start and drive, all on loopback.

Run as ``ngrok start --none --log stdout [--config C] [--authtoken T] [--region R]``. It binds
its API port first, then prints the three log lines pyngrok waits for, serves
``GET/POST /api/endpoints`` and ``DELETE /api/endpoints/<name>``, and answers a POST with a
``url`` on a loopback TCP forwarder to the tunnel's upstream. One process, so SIGKILL cleans
up everything. ``FAKE_NGROK_MODE`` picks a failure: ``hang`` (never ready), ``session_limit``
(ERR_NGROK_108), ``url_online`` (ERR_NGROK_334 on POST); a missing token gives ERR_NGROK_4018
and the token ``bad-token`` gives ERR_NGROK_105. ``FAKE_NGROK_PIDFILE`` records the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def log(level: str, msg: str, **fields: str) -> None:
    extra = " ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in fields.items())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000")
    sys.stdout.write(f't={stamp} lvl={level} msg="{msg}" {extra}\n')
    sys.stdout.flush()


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Forwarder:
    """Accepts on an ephemeral loopback port and relays bytes to the upstream address."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=pump, args=(client, server), daemon=True).start()
            threading.Thread(target=pump, args=(server, client), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


ENDPOINTS: dict[str, dict[str, Any]] = {}
FORWARDERS: dict[str, Forwarder] = {}


class Api(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: stdout is the agent log pyngrok parses."""

    def reply(self, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/api/endpoints"):
            self.reply(200, {"endpoints": list(ENDPOINTS.values()), "uri": "/api/endpoints"})
        else:
            self.reply(404, {"msg": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        options = json.loads(self.rfile.read(length) or b"{}")
        if os.environ.get("FAKE_NGROK_MODE") == "url_online":
            url = options.get("url", "https://example.ngrok-free.app")
            self.reply(
                502,
                {
                    "error_code": 103,
                    "status_code": 502,
                    "msg": "failed to start tunnel",
                    "details": {
                        "err": f"The endpoint '{url}' is already online.\r\n\r\nERR_NGROK_334"
                    },
                },
            )
            return
        name = options["name"]
        forwarder = Forwarder(options["upstream"]["url"])
        FORWARDERS[name] = forwarder
        ENDPOINTS[name] = {
            "name": name,
            "uri": f"/api/endpoints/{name}",
            # FAKE_NGROK_HOST: report a public-looking host (for code that refuses loopback
            # URLs, like assistant wiring); the forwarder still listens on loopback.
            "url": f"http://{os.environ.get('FAKE_NGROK_HOST', '127.0.0.1')}:{forwarder.port}",
            "upstream": options["upstream"],
            "requested_url": options.get("url"),
        }
        self.reply(201, ENDPOINTS[name])

    def do_DELETE(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        ENDPOINTS.pop(name, None)
        forwarder = FORWARDERS.pop(name, None)
        if forwarder:
            forwarder.close()
        self.reply(204)


def log_after_exit() -> int:
    """ERR_NGROK_108, with the agent gone before pyngrok has read past its first log line.

    A real agent logs its error and exits at once; when pyngrok reads late, it sees the exit
    after one line and stops reading. Here a child sharing the agent's stdout writes the log
    once the agent has exited, so that order is certain.
    """
    agent = os.getpid()
    if os.fork():
        return 1
    deadline = time.monotonic() + 10
    while running(agent) and time.monotonic() < deadline:
        time.sleep(0.005)  # another process's state: nothing to wait on but polling
    log("info", "starting web service", obj="web", addr="127.0.0.1:9")
    log(
        "eror",
        "failed to reconnect session",
        obj="tunnels.session",
        err="Your account is limited to 1 simultaneous ngrok agent sessions. ERR_NGROK_108",
    )
    os._exit(0)


def running(pid: int) -> bool:
    """True until ``pid`` has exited (a zombie counts as exited); Linux's /proc, else the
    parent change a child sees when its parent exits."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return False
    except OSError:
        return os.getppid() == pid
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def main(argv: list[str]) -> int:
    pidfile = os.environ.get("FAKE_NGROK_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    if argv[:2] != ["start", "--none"]:
        sys.stderr.write("fake ngrok: only 'start --none' is supported\n")
        return 2
    token = os.environ.get("NGROK_AUTHTOKEN")
    if "--authtoken" in argv:
        token = argv[argv.index("--authtoken") + 1]
    mode = os.environ.get("FAKE_NGROK_MODE", "ok")
    if mode == "session_limit_read_late":
        return log_after_exit()
    if mode == "hang":
        time.sleep(3600)
        return 0
    api = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    log("info", "starting web service", obj="web", addr=f"127.0.0.1:{api.server_port}")
    if not token:
        log(
            "eror",
            "failed to reconnect session",
            obj="tunnels.session",
            err="authentication failed: Usage of ngrok requires a verified account and "
            "authtoken. ERR_NGROK_4018",
        )
        return 1
    if token == "bad-token":
        log(
            "eror",
            "failed to reconnect session",
            obj="tunnels.session",
            err="authentication failed: The authtoken you specified is invalid. ERR_NGROK_105",
        )
        return 1
    if mode == "session_limit":
        log(
            "eror",
            "failed to reconnect session",
            obj="tunnels.session",
            err="Your account is limited to 1 simultaneous ngrok agent sessions. ERR_NGROK_108",
        )
        return 1
    log("info", "client session established", obj="tunnels.session")
    log("info", "tunnel session started", obj="tunnels.session")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
