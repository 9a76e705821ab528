"""A caller never hears silence: turns answered under a fault mix, with and without fallback.

The fake SambaNova's primary model answers 429 (Retry-After: 1) to 30 % of requests and
never sends a first token to 10 % (then a second mix: stalls only); the fallback answers
every request (40 chunks, 20 ms apart, 50 ms to the first token). 20 concurrent
conversations each take turns for the run's duration. Reported per configuration: turns,
failed turns (an HTTP error, a cut reply or the apology), and the time to the first spoken
chunk (p50, p99) as the caller would hear it.

    python bench/fallback.py [--seconds 20] [--concurrency 20] [--attempt-timeout 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import SECRET, start_bridge, start_fake, stop
from vapi_bridge import sse

FALLBACK = "paced-40-20-50"
# Fault mixes on the primary model: (429 %, no-first-token %).
MIXES = ((30, 10), (0, 10))


@dataclass
class Run:
    ttfts: list[float] = field(default_factory=list)
    turns: int = 0
    failed: int = 0


async def turn(client: httpx.AsyncClient, url: str, model: str, run: Run) -> None:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 250,
        "messages": [{"role": "user", "content": "Book me for next Tuesday afternoon."}],
    }
    headers = {"Authorization": f"Bearer {SECRET}"}
    started = time.perf_counter()
    first = None
    cut = None
    run.turns += 1
    parser = sse.Parser(comments=True)
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                run.failed += 1
                return
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is None:
                    continue
                if event.comment is not None and event.comment.startswith(sse.CUT_PREFIX):
                    cut = event.comment
                elif first is None and not event.done and event.comment is None:
                    first = time.perf_counter() - started
    except httpx.HTTPError:
        run.failed += 1
        return
    if cut is not None or first is None:
        run.failed += 1
    else:
        run.ttfts.append(first)


async def load(url: str, model: str, concurrency: int, seconds: float) -> Run:
    run = Run()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency + 5)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def conversation() -> None:
            while time.monotonic() < deadline:
                await turn(client, url, model, run)

        await asyncio.gather(*(conversation() for _ in range(concurrency)))
    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--attempt-timeout", type=float, default=1.0)
    args = parser.parse_args()
    configs = {
        "no fallback": ["--no-apology"],
        "fallback": ["--fallback-model", FALLBACK],
        "fallback + hedge 300 ms": ["--fallback-model", FALLBACK, "--hedge-after", "300"],
    }
    fake, base_url = start_fake()
    try:
        print(
            f"{args.concurrency} conversations, {args.seconds:g} s a configuration, "
            f"attempt timeout {args.attempt_timeout:g} s"
        )
        for limited, stalled in MIXES:
            model = f"mix-{limited}-{stalled}-50"
            print(f"\nprimary: {limited}% 429 (Retry-After: 1), {stalled}% no first token")
            print(f"{'configuration':26} {'turns':>6} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}")
            for name, extra in configs.items():
                bridge, url = start_bridge(
                    base_url, "--attempt-timeout", str(args.attempt_timeout), *extra
                )
                try:
                    chat = url + "/chat/completions"
                    run = asyncio.run(load(chat, model, args.concurrency, args.seconds))
                finally:
                    stop(bridge)
                p50 = statistics.median(run.ttfts) * 1000 if run.ttfts else float("nan")
                p99 = percentile(run.ttfts, 0.99) * 1000
                print(f"{name:26} {run.turns:>6} {run.failed:>7} {p50:>8.0f} {p99:>8.0f}")
        print(
            f"\ntarget with a fallback: p99 <= attempt timeout + the fallback's first token "
            f"+ 50 ms = {args.attempt_timeout * 1000 + 50 + 50:.0f} ms"
        )
    finally:
        stop(fake)


if __name__ == "__main__":
    main()
