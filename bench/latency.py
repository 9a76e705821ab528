"""What the bridge costs in latency, measured against the direct path (and LiteLLM's proxy).

A fake SambaNova upstream streams a fixed reply (40 chunks, 20 ms apart, 50 ms to the first
token). At 1, 10, 50 and 100 concurrent streams, the same client measures, alternating in one
run: the direct path (client -> upstream), vapi-bridge (client -> bridge -> upstream) and,
when its `litellm` command is found, LiteLLM's proxy configured to the same upstream. Added
figures are differences from the direct path at the same level.

    python bench/latency.py [--levels 1,10,50,100] [--litellm PATH] [--floor json|bytes]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import ROOT, SECRET, start_bridge, stop

MODEL = "paced-40-20-50"
CHUNKS, GAP_S, TTFT_S = 40, 0.020, 0.050
STREAMS_PER_LEVEL = {1: 30, 10: 60, 50: 150, 100: 200}
LITELLM_KEY = "sk-bench-0123456789abcdef"  # LiteLLM refuses to start without a master key
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Run:
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    chunks: int = 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def one_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], run: Run
) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 250,
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "You are a scheduling assistant."},
            {"role": "user", "content": "Book me for next Tuesday afternoon."},
        ],
    }
    started = time.perf_counter()
    last = None
    rest = b""
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                run.errors += 1
                return
            # Events split on bytes: httpx's line iterator would cost the client (which
            # shares the cores with the bridge) several times what the bridge spends.
            async for block in response.aiter_bytes():
                now = time.perf_counter()
                *events, rest = (rest + block).split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    if last is None:
                        run.ttfts.append(now - started)
                    else:
                        run.gaps.append(now - last)
                    last = now
                    run.chunks += 1
        run.completed += 1
    except httpx.HTTPError:
        run.errors += 1


async def level(url: str, headers: dict[str, str], concurrency: int, total: int) -> Run:
    run = Run()
    per_worker = max(1, total // concurrency)
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(seed: int) -> None:
            await asyncio.sleep(random.Random(seed).uniform(0, TTFT_S + CHUNKS * GAP_S))
            for _ in range(per_worker):
                await one_stream(client, url, headers, run)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return run


def tree(pid: int) -> list[int]:
    """The process and its descendants (a multi-process server counts whole)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / TICK


def rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakRSS:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_backlogged_fake() -> tuple[subprocess.Popen[str], str]:
    """The fake upstream, listening with a backlog for a hundred connects at once.

    socketserver listens with a backlog of 5: at 100 streams a burst of connects overflowed
    it, and each dropped SYN added a one-second retry to a direct-path TTFT.
    """
    code = (
        "import socketserver; socketserver.TCPServer.request_queue_size = 1024; "
        "from tests.fakes.sambanova import main; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_floor(fake_url: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    """bench/floor.py's relay, in its own process like the bridge."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "floor.py"), fake_url, "--mode", mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_litellm(command: str, fake_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = 40000 + random.randrange(10000)
    config = Path(tempfile.mkdtemp()) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {fake_url}\n"
        "      api_key: test-key\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    proc = subprocess.Popen(
        [command, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health/liveliness", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(proc)  # type: ignore[arg-type]
    raise RuntimeError("LiteLLM's proxy did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,10,50,100")
    parser.add_argument(
        "--litellm",
        default=shutil.which("litellm"),
        help="path of LiteLLM's `litellm` command (default: from PATH)",
    )
    parser.add_argument("--bridge-args", default="", help="extra `serve` options, space-separated")
    parser.add_argument(
        "--floor",
        choices=("json", "bytes"),
        help="also measure bench/floor.py's do-nothing relay in this mode, as a floor",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    fake, fake_url = start_backlogged_fake()
    bridge, bridge_url = start_bridge(fake_url, *args.bridge_args.split())
    paths = {
        "direct": (fake_url + "/chat/completions", {}),
        "vapi-bridge": (bridge_url + "/chat/completions", {"Authorization": f"Bearer {SECRET}"}),
    }
    owned = {"vapi-bridge": bridge}
    if args.floor:
        floor, floor_url = start_floor(fake_url, args.floor)
        owned["floor"] = floor
        paths["floor"] = (floor_url + "/chat/completions", {})
    litellm_proc = None
    note = ""
    if args.litellm:
        try:
            litellm_proc, litellm_url = start_litellm(args.litellm, fake_url)
            paths["litellm"] = (
                litellm_url + "/chat/completions",
                {"Authorization": f"Bearer {LITELLM_KEY}"},
            )
        except (RuntimeError, OSError) as exc:
            note = f"LiteLLM skipped: {exc}"
    else:
        note = "LiteLLM skipped: `litellm` not found (pip install 'litellm[proxy]')"
    results: dict[tuple[str, int], Run] = {}
    cpu: dict[tuple[str, int], float] = {}
    try:
        asyncio.run(level(paths["vapi-bridge"][0], paths["vapi-bridge"][1], 2, 10))  # warm-up
        idle_rss = rss_mb(bridge.pid)
        peak = PeakRSS(bridge.pid)
        for n in levels:
            total = STREAMS_PER_LEVEL.get(n, max(2 * n, 120))
            for name, (url, headers) in paths.items():
                proc = owned.get(name)
                before = cpu_seconds(proc.pid) if proc is not None else 0.0
                results[(name, n)] = asyncio.run(level(url, headers, n, total))
                if proc is not None:
                    cpu[(name, n)] = cpu_seconds(proc.pid) - before
        peak_rss = peak.stop()
    finally:
        for proc in owned.values():
            stop(proc)
        stop(fake)
        if litellm_proc is not None:
            stop(litellm_proc)  # type: ignore[arg-type]

    ms = 1000
    print(
        f"upstream: {CHUNKS} chunks, {GAP_S * ms:.0f} ms apart, {TTFT_S * ms:.0f} ms to first "
        f"token; {os.cpu_count()} cores"
    )
    print(
        f"{'path':12} {'streams':>7} {'ok':>5} {'err':>4} {'ttft p50':>9} {'ttft p99':>9} "
        f"{'+ttft p50':>9} {'+ttft p99':>9} {'+gap p99':>9} {'cpu s/1k chunks':>15}"
    )
    for n in levels:
        direct = results[("direct", n)]
        for name in paths:
            run = results[(name, n)]
            added = name != "direct"
            cells = [
                f"{pct(run.ttfts, 50) * ms:8.1f}",
                f"{pct(run.ttfts, 99) * ms:8.1f}",
                f"{(pct(run.ttfts, 50) - pct(direct.ttfts, 50)) * ms:+8.1f}"
                if added
                else "       -",
                f"{(pct(run.ttfts, 99) - pct(direct.ttfts, 99)) * ms:+8.1f}"
                if added
                else "       -",
                f"{(pct(run.gaps, 99) - pct(direct.gaps, 99)) * ms:+8.1f}" if added else "       -",
            ]
            per_k = (
                f"{cpu[(name, n)] / run.chunks * 1000:14.2f}"
                if (name, n) in cpu and run.chunks
                else "             -"
            )
            print(
                f"{name:12} {n:>7} {run.completed:>5} {run.errors:>4}  "
                + "  ".join(cells)
                + f"  {per_k}"
            )
    print(f"vapi-bridge RSS: idle {idle_rss:.1f} MB, peak {peak_rss:.1f} MB")
    for n in levels:
        if ("litellm", n) in results:
            own = pct(results[("vapi-bridge", n)].ttfts, 50) - pct(results[("direct", n)].ttfts, 50)
            peer = pct(results[("litellm", n)].ttfts, 50) - pct(results[("direct", n)].ttfts, 50)
            print(
                f"at {n:>3} streams: vapi-bridge adds {own * ms:.1f} ms to TTFT p50, "
                f"LiteLLM adds {peer * ms:.1f} ms"
            )
    if note:
        print(note)


if __name__ == "__main__":
    main()
