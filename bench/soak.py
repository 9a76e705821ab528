"""Barge-in and load soak: many Vapi-like conversations through one bridge, for a fixed time.

Clients hang up mid-stream at random (barge-in), and the upstream fails at random (before the
first byte and mid-stream). The report counts what happened, checks every stream byte for
what Vapi would choke on (garbled streams must be 0), asks the fake upstream how many of its
streams are still open after the clients left (must be 0), and compares the bridge process's
memory, threads and open descriptors before and after.

    python bench/soak.py [--concurrency 100] [--duration 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    SECRET,
    ProcStats,
    proc_stats,
    start_bridge,
    start_fake,
    stop,
)
from vapi_bridge import sse
from vapi_bridge.server import Workers

MESSAGES = [
    {"role": "system", "content": "You are Riley, a scheduling assistant. Keep answers short."},
    {"role": "assistant", "content": "Hi, this is Riley. How can I help?"},
    {"role": "user", "content": "I'd like to book an appointment for next Tuesday afternoon."},
]
# scenario -> (weight, model asked of the fake upstream)
SCENARIOS = {
    "complete": (55, "paced-30-20"),
    "barge_in": (25, "paced-30-20"),
    # 401: a failure the apology never hides, so the bridge answers it with a status.
    "upstream_fails_before_first_byte": (10, "fail-401"),
    "upstream_drops_mid_stream": (10, "drop"),
}

# The server keeps a finished connection's thread this long for the next connection: thread
# counts are compared once those have ended.
SETTLE = Workers.IDLE + 1


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.garbled: list[str] = []

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def error(self, key: str) -> None:
        with self.lock:
            self.errors[key] += 1

    def garble(self, why: str) -> None:
        with self.lock:
            self.garbled.append(why)


def check_event(event: sse.Event) -> str | None:
    """Why Vapi would choke on this event, or None."""
    if event.comment is not None:
        ok = event.comment.startswith(sse.CUT_PREFIX)
        return None if ok else f"an unexpected comment: {event.comment[:60]!r}"
    if event.event:
        return f"an event line: {event.event[:60]!r}"
    if event.done:
        return None
    try:
        chunk = json.loads(event.data)
    except ValueError:
        return "non-JSON data"
    if not isinstance(chunk.get("choices"), list):
        return "choices is not a list"
    if not isinstance(chunk.get("created"), int):
        return "created is not an int"
    return None


def conversation(
    client: httpx.Client, url: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][0] for n in names]
    while time.monotonic() < deadline:
        scenario = rng.choices(names, weights)[0]
        body = {
            "model": SCENARIOS[scenario][1],
            "messages": MESSAGES,
            "stream": True,
            "temperature": 0.5,
            "max_tokens": 250,
            "call": {"id": f"soak-{rng.randrange(10**9)}"},
        }
        hang_up_after = rng.randint(1, 10) if scenario == "barge_in" else None
        tally.add("requests")
        try:
            with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    tally.error(f"HTTP {response.status_code}")
                    continue
                done = False
                events = sse.events(response.iter_lines(), comments=True)
                for seen, event in enumerate(events, start=1):
                    if done:
                        tally.garble("data after [DONE]")
                    problem = check_event(event)
                    if problem:
                        tally.garble(problem)
                    done = done or event.done
                    if hang_up_after is not None and seen >= hang_up_after:
                        break
                if hang_up_after is not None and not done:
                    tally.add("aborted_by_client")
                elif done:
                    tally.add("completed_streams")
                else:
                    tally.garble("stream ended without [DONE]")
        except httpx.HTTPError as exc:
            tally.error(exc.__class__.__name__)


def run_load(
    clients: list[httpx.Client],
    url: str,
    duration: float,
    tally: Tally,
    seed: int,
    pid: int,
    port: int,
) -> ProcStats:
    """One conversation loop per client until ``duration`` passes; returns the peak stats."""
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=conversation, args=(c, url, deadline, tally, random.Random(seed + i))
        )
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    peak = proc_stats(pid, port)
    while any(t.is_alive() for t in threads):
        now = proc_stats(pid, port)
        if (now.rss_mb or 0) > (peak.rss_mb or 0):
            peak = now
        time.sleep(0.5)
    return peak


def upstream_open_streams(fake_url: str, settle: float = 5.0) -> int:
    """Open upstream streams once the clients are gone (waits up to ``settle`` s for zero)."""
    stats_url = fake_url.removesuffix("/v1") + "/stats"
    end = time.monotonic() + settle
    while True:
        count = int(httpx.get(stats_url).json()["open_streams"])
        if count == 0 or time.monotonic() > end:
            return count
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="RSS is reported after each")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    fake, fake_url = start_fake()
    bridge, bridge_url = start_bridge(fake_url)
    port = int(fake_url.rsplit(":", 1)[1].split("/")[0])
    url = bridge_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {SECRET}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.Client(headers=headers, timeout=30, limits=limits) for _ in range(args.concurrency)
    ]
    try:
        # Warm up at full concurrency first, so "start" is the steady state (imports done,
        # upstream connection pool filled) and any growth after it is a leak.
        run_load(clients, url, args.warmup, Tally(), args.seed + 10_000, bridge.pid, port)
        upstream_open_streams(fake_url)
        time.sleep(SETTLE)
        before = proc_stats(bridge.pid, port)
        tally = Tally()
        started = time.monotonic()
        peak = before
        after_rounds = []
        for round_number in range(args.rounds):
            seed = args.seed + 1000 * round_number
            top = run_load(clients, url, args.duration / args.rounds, tally, seed, bridge.pid, port)
            peak = top if (top.rss_mb or 0) > (peak.rss_mb or 0) else peak
            left_open = upstream_open_streams(fake_url)
            time.sleep(SETTLE if round_number == args.rounds - 1 else 1)
            after_rounds.append(proc_stats(bridge.pid, port))
        elapsed = time.monotonic() - started
        after = after_rounds[-1]
    finally:
        for client in clients:
            client.close()
        stop(bridge)
        stop(fake)

    counts = tally.counts
    print(f"soak: {args.concurrency} concurrent conversations for {elapsed:.0f} s")
    print(f"  requests                      {counts['requests']}")
    print(f"  completed streams             {counts['completed_streams']}")
    print(f"  aborted by client (barge-in)  {counts['aborted_by_client']}")
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(tally.errors.items())) or "none"
    print(f"  errors by class               {errors}")
    print(
        f"  garbled streams               {len(tally.garbled)}"
        + (f"  ({collections.Counter(tally.garbled).most_common(3)})" if tally.garbled else "")
    )
    print(f"  upstream streams left open    {left_open}")
    print(f"  bridge at start               {before}")
    print(f"  bridge at peak RSS            {peak}")
    print(f"  bridge at end                 {after}")
    rss = ", ".join(f"{s.rss_mb} MB" for s in after_rounds)
    print(f"  RSS after each round          {rss}  (a plateau is the allocator's high-water mark)")
    grew = [
        name
        for name, a, b in (
            ("threads", before.threads, after.threads),
            ("fds", before.own_fds, after.own_fds),
        )
        if a is not None and b is not None and b > a
    ]
    print(
        f"  growth in threads or fds      {', '.join(grew) or 'none'}"
        "  (fds compared without the upstream keep-alive pool)"
    )


if __name__ == "__main__":
    main()
