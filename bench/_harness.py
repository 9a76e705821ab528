"""Shared benchmark plumbing: start the fake upstream and the bridge as separate processes,
and read a process's memory, threads and open descriptors from /proc (Linux)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "vb_bench_secret_0123456789"


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.sambanova"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_bridge(base_url: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    home = tempfile.mkdtemp(prefix="vapi-bridge-bench-")
    env = {
        **os.environ,
        "SAMBANOVA_API_KEY": "test-key",
        "SAMBANOVA_BASE_URL": base_url,
        "VAPI_BRIDGE_HOME": home,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vapi_bridge",
            "serve",
            "--no-tunnel",
            "--port",
            "0",
            "--secret",
            SECRET,
            "--shutdown-grace",
            "1",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


@dataclass
class ProcStats:
    rss_mb: float | None
    threads: int | None
    fds: int | None
    pooled: int | None = None

    @property
    def own_fds(self) -> int | None:
        """Descriptors other than idle upstream keep-alive sockets (the pool varies by design)."""
        return None if self.fds is None else self.fds - (self.pooled or 0)

    def __str__(self) -> str:
        def show(value: float | int | None, unit: str = "") -> str:
            return "n/a" if value is None else f"{value:g}{unit}"

        return (
            f"RSS {show(self.rss_mb, ' MB')}, threads {show(self.threads)}, "
            f"fds {show(self.fds)} ({show(self.pooled)} upstream keep-alive)"
        )


def _socket_inodes_to(port: int) -> set[str]:
    """Inodes of TCP sockets whose remote port is ``port`` (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def proc_stats(pid: int, upstream_port: int | None = None) -> ProcStats:
    """Read from /proc; on other platforms the figures are reported as n/a."""
    rss = threads = fds = pooled = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:  # closed between listing and reading
                continue
        fds = len(links)
        if upstream_port is not None:
            upstream = _socket_inodes_to(upstream_port)
            pooled = sum(
                1 for link in links if link.startswith("socket:[") and link[8:-1] in upstream
            )
    except OSError:
        pass
    return ProcStats(rss, threads, fds, pooled)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
