"""Start-up cost: `vapi-bridge --help`, and `serve --demo --no-tunnel` until /health answers.

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


def time_serve_ready() -> float:
    port = free_port()
    env = {**os.environ, "VAPI_BRIDGE_HOME": tempfile.mkdtemp(prefix="vapi-bridge-startup-")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*command(), "serve", "--demo", "--no-tunnel", "--port", str(port)],
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
    helps = [time_help() for _ in range(args.runs)]
    serves = [time_serve_ready() for _ in range(args.runs)]
    print(f"command: {' '.join(command())}  ({args.runs} runs each, median)")
    print(
        f"  vapi-bridge --help                          {statistics.median(helps) * 1000:6.0f} ms"
        f"  (min {min(helps) * 1000:.0f}, max {max(helps) * 1000:.0f})"
    )
    print(
        f"  serve --demo --no-tunnel until /health 200  {statistics.median(serves) * 1000:6.0f} ms"
        f"  (min {min(serves) * 1000:.0f}, max {max(serves) * 1000:.0f})"
    )


if __name__ == "__main__":
    main()
