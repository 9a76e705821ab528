"""Start-up cost: `vapi-bridge --help`, and `serve --no-tunnel` until /health answers, with the
demo model and with the SambaNova SDK (which is imported but not called at start-up).

python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def command() -> list[str]:
    found = shutil.which("vapi-bridge")
    return [found] if found else [sys.executable, "-m", "vapi_bridge"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_help() -> float:
    started = time.perf_counter()
    subprocess.run([*command(), "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_serve_ready(demo: bool) -> float:
    port = free_port()
    env = {
        **os.environ,
        "VAPI_BRIDGE_HOME": tempfile.mkdtemp(prefix="vapi-bridge-startup-"),
        "SAMBANOVA_API_KEY": "unused",
        "SAMBANOVA_BASE_URL": "http://127.0.0.1:9/v1",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*command(), "serve", *(["--demo"] if demo else []), "--no-tunnel", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("serve exited before /health answered")
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    time_help()  # warm the file cache, as a user's second run would be
    rows = [
        ("vapi-bridge --help", [time_help() for _ in range(args.runs)]),
        (
            "serve --demo --no-tunnel until /health 200",
            [time_serve_ready(demo=True) for _ in range(args.runs)],
        ),
        (
            "serve --no-tunnel (SDK) until /health 200",
            [time_serve_ready(demo=False) for _ in range(args.runs)],
        ),
    ]
    print(f"command: {' '.join(command())}  ({args.runs} runs each, median)")
    for label, runs in rows:
        print(
            f"  {label:43} {statistics.median(runs) * 1000:6.0f} ms"
            f"  (min {min(runs) * 1000:.0f}, max {max(runs) * 1000:.0f})"
        )


if __name__ == "__main__":
    main()
