"""Scale-out behind a real load balancer: Debian's nginx, running ``deploy/nginx/vapi-bridge.conf``,
in front of two ``vapi-bridge serve`` processes that talk to the fake SambaNova.

The shipped file is used as it is, except for what only a deployment knows: the replicas'
addresses, the address nginx listens on and its access log path. nginx runs unprivileged-friendly
from a temporary prefix. Each replica sends SambaNova a different API key, so the fake can tell
which replica asked (the network boundary, not the bridge's logs, says where a turn went).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, text_chunks
from tests.helpers import SECRET, vapi_request
from tests.process import Serve, free_port
from vapi_bridge import sse

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx" / "vapi-bridge.conf"
KEYS = (
    "test-key",
    "sk-test",
)  # the SambaNova key each replica sends: how the fake tells them apart


def find_nginx() -> str | None:
    """``nginx`` on PATH, or where Debian installs it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = find_nginx()

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the nginx test runs on POSIX"),
    pytest.mark.skipif(
        NGINX is None,
        reason="nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)",
    ),
]


def render(conf: str, listen: int, backends: list[int], access_log: Path) -> str:
    """The shipped configuration with this test's addresses; fails loudly if its shape moved."""
    server_line = re.compile(r"^(\s*)server\s+[\w.-]+:\d+((?:\s+[^;\s]+)*);$", re.MULTILINE)
    found = server_line.findall(conf)
    assert len(found) >= 2, "the upstream block should list the replicas, one `server` each"
    indent, params = found[0]
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in backends)
    conf = server_line.sub("", conf, count=len(found) - 1)
    conf = server_line.sub(servers.replace("\\", "\\\\"), conf, count=1)
    conf, listens = re.subn(
        r"^(\s*)listen\s+8080;$", rf"\1listen 127.0.0.1:{listen};", conf, flags=re.M
    )
    assert listens == 1, "the server block should `listen 8080;`"
    conf, logs = re.subn(r"access_log\s+\S+", f"access_log {access_log}", conf)
    assert logs == 1, "the server block should set one access_log"
    return conf


class Nginx:
    """nginx in the foreground from a temporary prefix, its error log read line by line."""

    def __init__(self, prefix: Path, listen: int, backends: list[int], conf: Path = CONF) -> None:
        assert NGINX is not None
        self.url = f"http://127.0.0.1:{listen}"
        self.access_log = prefix / "access.log"
        (prefix / "tmp").mkdir(parents=True)
        site = prefix / "vapi-bridge.conf"
        site.write_text(render(conf.read_text(), listen, backends, self.access_log))
        built = subprocess.run([NGINX, "-V"], capture_output=True, text=True).stderr
        temp_paths = "".join(
            f"    {module}_temp_path {prefix}/tmp/{module};\n"
            for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if module in ("client_body", "proxy") or f"--without-http_{module}_module" not in built
        )
        # As root, workers would switch to an unprivileged user that cannot reach pytest's
        # private temporary directory.
        user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
        main = prefix / "nginx.conf"
        main.write_text(
            f"{user}worker_processes 1;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"{temp_paths}"
            f"    include {site};\n"
            "}\n"
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [
                NGINX,
                "-p",
                f"{prefix}/",
                "-c",
                str(main),
                "-e",
                "stderr",
                "-g",
                f"daemon off; pid {prefix}/nginx.pid; error_log stderr notice;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        # The master binds the port before it starts the workers; connections queue until
        # a worker accepts them.
        self.wait_line(lambda line: "start worker process " in line)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, predicate: Any, timeout: float = 10.0) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(predicate(line) for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        assert ok and self.proc.poll() is None, "nginx did not start:\n" + "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Replica:
    serve: Serve
    port: int
    key: str


@dataclass
class Cluster:
    nginx: Nginx
    replicas: list[Replica]

    @property
    def url(self) -> str:
        return self.nginx.url


def start_replica(fake: FakeSambaNova, home: Path, key: str) -> Serve:
    env = {
        "SAMBANOVA_API_KEY": key,
        "SAMBANOVA_BASE_URL": fake.base_url,
        "VAPI_BRIDGE_HOME": str(home),
    }
    args = ("--no-tunnel", "--port", "0", "--secret", SECRET, "--shutdown-grace", "10")
    return Serve(*args, env=env)


@pytest.fixture
def cluster(fake: FakeSambaNova, tmp_path: Path) -> Iterator[Cluster]:
    serves = [start_replica(fake, tmp_path / f"home-{i}", key) for i, key in enumerate(KEYS)]
    nginx: Nginx | None = None
    try:
        replicas = []
        for serve, key in zip(serves, KEYS, strict=True):
            url = serve.stdout_line()
            replicas.append(Replica(serve, int(url.rsplit(":", 1)[1]), key))
        nginx = Nginx(tmp_path / "nginx", free_port(), [r.port for r in replicas])
        yield Cluster(nginx, replicas)
    finally:
        if nginx is not None:
            nginx.stop()
        for serve in serves:
            serve.__exit__()


class Gated(list[Any]):
    """Chunks for the fake: it sends the first ``at``, then waits for ``opened`` to send the
    rest. The fake writes and flushes each chunk before asking for the next one."""

    def __init__(self, chunks: list[Any], at: int, opened: threading.Event) -> None:
        super().__init__(chunks)
        self.at = at
        self.opened = opened
        self.forced = False  # the gate timed out: the test never opened it

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(list.__iter__(self)):
            if i == self.at and not self.opened.wait(10):
                self.forced = True
            yield item


@dataclass
class Turn:
    """One streamed turn through nginx, read in a thread as Vapi reads it."""

    url: str
    tag: str
    contents: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    finish: str | None = None
    done: bool = False
    status: int | None = None
    error: str | None = None
    ended_at: float | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def body(self) -> dict[str, Any]:
        request = vapi_request()
        request["messages"].append({"role": "user", "content": self.tag})
        return request

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.url + "/chat/completions",
                json=self.body(),
                headers={"Authorization": f"Bearer {SECRET}"},
                timeout=20,
            ) as response:
                self.status = response.status_code
                for event in sse.events(response.iter_lines(), comments=True):
                    self._take(event)
        except httpx.HTTPError as exc:
            self.error = exc.__class__.__name__
        finally:
            with self._changed:
                self.ended_at = time.monotonic()
                self._changed.notify_all()

    def _take(self, event: sse.Event) -> None:
        with self._changed:
            if event.comment is not None:
                self.comments.append(event.comment)
            elif event.done:
                self.done = True
            else:
                choice = json.loads(event.data)["choices"][0]
                if choice["delta"].get("content"):
                    self.contents.append(choice["delta"]["content"])
                self.finish = choice.get("finish_reason") or self.finish
            self._changed.notify_all()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def wait_contents(self, count: int, timeout: float) -> bool:
        with self._changed:
            return (
                self._changed.wait_for(
                    lambda: len(self.contents) >= count or self.ended_at is not None, timeout
                )
                and len(self.contents) >= count
            )

    def whole(self, text: str) -> bool:
        """Vapi got the full reply and a clean end: no cut, finish ``stop``, ``[DONE]``."""
        return (
            self.status == 200
            and self.error is None
            and not self.comments
            and "".join(self.contents) == text
            and self.finish == "stop"
            and self.done
        )


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Check ``condition`` until it holds; for state another process owns (no event to wait on)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


def refuses(port: int) -> bool:
    """True once nothing listens on the loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # reset: it was queued as the socket closed
        return False
    return False


def replica_of(fake: FakeSambaNova) -> dict[str, str]:
    """Which replica (by its SambaNova key) asked the fake for each turn (by its tag)."""
    out = {}
    for received in list(fake.requests):
        key = received.headers.get("Authorization", "").removeprefix("Bearer ")
        out[received.body["messages"][-1]["content"]] = key
    return out


def test_streams_arrive_unbuffered_through_nginx(cluster: Cluster, fake: FakeSambaNova) -> None:
    opened = threading.Event()
    chunks = Gated(text_chunks(["one ", "two ", "three ", "four"]), at=3, opened=opened)
    fake.push(Script(chunks=chunks))
    turn = Turn(cluster.url, "paced")
    thread = turn.start()
    try:
        arrived = turn.wait_contents(3, timeout=5)
    finally:
        opened.set()
    thread.join(10)
    assert arrived and not chunks.forced, (
        f"the third chunk did not arrive while the fake held the last one back: buffered "
        f"somewhere between the bridge and the client (got {turn.contents})"
    )
    assert turn.whole("one two three four")


def test_turns_spread_over_both_replicas(cluster: Cluster, fake: FakeSambaNova) -> None:
    turns = [Turn(cluster.url, f"turn {i}") for i in range(10)]
    for turn in turns:
        turn.run()
    assert all(turn.whole("Sure! Let me check Tuesday for you.") for turn in turns)
    served = Counter(replica_of(fake).values())
    assert sum(served.values()) == 10
    assert all(served[key] >= 3 for key in KEYS), f"load not spread: {served}"
    log = cluster.nginx.access_log.read_text()
    assert {f"127.0.0.1:{r.port}" for r in cluster.replicas} <= set(
        re.findall(r"upstream=(\S+)", log)
    ), "the access log names the replica behind each turn"


def test_sigterm_drains_a_replica_without_losing_a_turn(
    cluster: Cluster, fake: FakeSambaNova
) -> None:
    opened = threading.Event()
    long_reply = ["tok "] * 30
    fake.push(
        *[Script(chunks=Gated(text_chunks(long_reply), 3, opened), gap=0.02) for _ in range(6)]
    )
    live = [Turn(cluster.url, f"live {i}") for i in range(6)]
    threads = [turn.start() for turn in live]
    for turn in live:
        assert turn.wait_contents(3, timeout=10), (turn.contents, turn.error)
    where = replica_of(fake)
    stopped, other = cluster.replicas
    on_stopped = [turn for turn in live if where[turn.tag] == stopped.key]
    assert 1 <= len(on_stopped) < len(live), f"least_conn spreads live streams: {where}"

    sigterm = time.monotonic()
    stopped.serve.proc.send_signal(signal.SIGTERM)
    stopped.serve.wait_stderr(lambda line: "Stopping" in line)
    # New turns are sent once the replica has closed its listening socket. A connection that
    # arrives in the moment before (up to werkzeug's 50 ms poll) waits in the kernel's accept
    # queue and is reset when the socket closes; see docs/deploy.md and bench/nginx_drain.py.
    assert wait_until(lambda: refuses(stopped.port), timeout=5), "the replica kept listening"
    new = [Turn(cluster.url, f"new {i}") for i in range(6)]
    for turn in new:
        turn.run()
    draining = stopped.serve.proc.poll() is None
    released = time.monotonic()
    opened.set()
    for thread in threads:
        thread.join(15)
    assert stopped.serve.proc.wait(15) == 0
    exited = time.monotonic()

    lost = [t.tag for t in live if not t.whole("".join(long_reply))]
    lost += [t.tag for t in new if not t.whole("Sure! Let me check Tuesday for you.")]
    where = replica_of(fake)
    last_end = max(turn.ended_at or exited for turn in on_stopped)
    retried = sum("Connection refused" in line for line in cluster.nginx.lines)
    print(
        f"\ndrain: {len(live) + len(new)} turns ({len(on_stopped)} live on the stopped replica, "
        f"{len(live) - len(on_stopped)} on the other, {len(new)} new during the drain), "
        f"lost {len(lost)}; connects refused by the stopped replica and retried: {retried}; "
        f"replica exited {exited - sigterm:.2f} s after SIGTERM (its streams were held "
        f"{released - sigterm:.2f} s of that), {(exited - last_end) * 1000:.0f} ms after its "
        f"last stream ended"
    )
    assert draining, "the replica should still be finishing its streams"
    assert lost == [], [(t.tag, t.status, t.error, t.comments, t.contents) for t in live + new]
    assert {where[t.tag] for t in new} == {other.key}, "new turns go to the running replica"
    assert "outcome=" not in stopped.serve.stderr, "no stream was cut by the shutdown"


def test_nginx_answers_its_own_errors_in_openai_shape(cluster: Cluster) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    too_large = httpx.post(
        cluster.url + "/chat/completions", content=b" " * (5 << 20), headers=headers, timeout=10
    )
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"
    metrics = httpx.get(cluster.url + "/metrics", timeout=5)
    assert metrics.status_code == 404
    assert "each replica" in metrics.json()["error"]["message"]
    for replica in cluster.replicas:
        assert replica.serve.stop("SIGTERM") == 0
    gone = httpx.post(cluster.url + "/chat/completions", json=vapi_request(), headers=headers)
    assert gone.status_code == 502
    assert gone.json()["error"] == {
        "message": "No vapi-bridge replica could take the request.",
        "type": "server_error",
        "code": "upstream_unreachable",
        "param": None,
    }
