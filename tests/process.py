"""Run ``vapi-bridge`` as a subprocess and wait on its output, never on the clock."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import SECRET, cli

SIGNALS = {
    name: getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Sockets bound for closed_port(), held for the whole run.
_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once).

    The port stays bound, never listening, until the run ends: a port merely freed could be
    taken by another socket, or picked as a client's own source port (a self-connection).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])


class Serve:
    """A running ``vapi-bridge serve`` with its stdout and stderr read line by line.

    ``own_group`` starts it in a new session, so :meth:`stop` with ``group=True`` can signal its
    whole process group, as a terminal's Ctrl-C does to the foreground job.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, own_group: bool = False
    ) -> None:
        self.own_group = own_group
        self.proc = subprocess.Popen(
            cli("serve", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=own_group,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        self._err_changed = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, None), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, True), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: IO[str], is_err: bool | None) -> None:
        for line in stream:
            if is_err:
                with self._err_changed:
                    self.err_lines.append(line.rstrip("\n"))
                    self._err_changed.notify_all()
            else:
                self.out.put(line.rstrip("\n"))

    def stdout_line(self, timeout: float = 15.0) -> str:
        try:
            return self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stdout line; stderr: {self.stderr}") from None

    def wait_stderr(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        with self._err_changed:
            ok = self._err_changed.wait_for(
                lambda: any(predicate(line) for line in self.err_lines), timeout
            )
            assert ok, f"no such stderr line; stderr: {self.stderr}"
            return next(line for line in self.err_lines if predicate(line))

    @property
    def stderr(self) -> str:
        with self._err_changed:
            return "\n".join(self.err_lines)

    def stop(self, sig: str = "SIGINT", timeout: float = 15.0, group: bool = False) -> int:
        """Signal the bridge (or, with ``group``, every process in its group) and wait for it
        and for its output: the pumps may still hold lines it wrote just before it exited."""
        if self.proc.poll() is None:
            if group:
                assert self.own_group, "signal a group only when the bridge leads its own"
                os.killpg(self.proc.pid, SIGNALS[sig])
            else:
                self.proc.send_signal(SIGNALS[sig])
        code = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(timeout)
        return code

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that failed mid-run still stops the bridge the way a user does, so it
        stops its tunnel agent too (a kill would leave the agent behind, by design)."""
        if self.proc.poll() is None:
            self.proc.send_signal(SIGNALS["SIGINT"])
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def state_file(home: Path, serve: Serve) -> Path:
    """The state file of that running bridge (one per bridge, named after its pid)."""
    return home / "run" / f"{serve.proc.pid}.json"


def bridge_state(home: Path, serve: Serve) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(state_file(home, serve).read_text())
    return data


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_fake_agent(directory: Path) -> Path:
    """The fake ngrok agent as an executable file, the way a real binary would sit on disk."""
    source = Path(__file__).parent / "fakes" / "ngrok_agent.py"
    agent = directory / "ngrok"
    agent.write_text(f"#!{sys.executable}\n" + source.read_text())
    agent.chmod(0o755)
    return agent


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tunnel_env(fake: FakeSambaNova, tmp_path: Path) -> tuple[dict[str, str], list[str], Path]:
    """Environment and ``serve`` arguments for a bridge on the fake SambaNova behind the fake
    ngrok agent, and the file where the agent records its pid."""
    agent = write_fake_agent(tmp_path)
    pidfile = tmp_path / "pids"
    env = {
        "SAMBANOVA_API_KEY": "test-key",
        "SAMBANOVA_BASE_URL": fake.base_url,
        "NGROK_AUTHTOKEN": "2fakeTokenForTests_abcdefghijklmnop",
        "FAKE_NGROK_PIDFILE": str(pidfile),
    }
    args = ["--port", "0", "--secret", SECRET, "--ngrok-path", str(agent)]
    return env, [*args, "--shutdown-grace", "0.5"], pidfile


def agents_left(pidfile: Path) -> list[int]:
    pids = [int(pid) for pid in pidfile.read_text().split()] if pidfile.exists() else []
    return [pid for pid in pids if process_alive(pid)]


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker`` (Linux /proc; [] elsewhere)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if marker.encode() in cmdline and "\nState:\tZ" not in status:
                found.append(int(entry))
    return found
