"""Stop a replica behind nginx while turns keep coming, and count the turns lost.

    python bench/nginx_drain.py [--rounds 10] [--clients 6] [--non-idempotent]

Each round starts the fake SambaNova's two replicas behind Debian's nginx running
``deploy/nginx/vapi-bridge.conf`` (as ``tests/test_nginx.py`` does), keeps ``--clients``
streamed turns in flight without pause, sends SIGTERM to one replica, and goes on until the
other has answered as many turns again. A turn is lost when Vapi would not have got the whole
reply. ``--non-idempotent`` lets nginx pass a POST it already sent to the other replica when
the connection failed before any reply byte (``proxy_next_upstream ... non_idempotent``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import test_nginx as harness
from tests.fakes.sambanova import FakeSambaNova
from tests.process import free_port

REPLY = "Sure! Let me check Tuesday for you."


def one_round(fake: FakeSambaNova, conf: Path, clients: int) -> tuple[int, int, int, int]:
    """Turns answered, turns lost, resets and refusals nginx logged for the stopped replica."""
    tmp = Path(tempfile.mkdtemp(prefix="vapi-bridge-drain-"))
    serves = [harness.start_replica(fake, tmp / f"home-{i}", k) for i, k in enumerate(harness.KEYS)]
    nginx = None
    try:
        ports = [int(s.stdout_line().rsplit(":", 1)[1]) for s in serves]
        nginx = harness.Nginx(tmp / "nginx", free_port(), ports, conf)
        done: list[harness.Turn] = []
        changed = threading.Condition()
        stop = threading.Event()

        def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                turn = harness.Turn(nginx.url, f"client {n} turn {i}")
                turn.run()
                with changed:
                    done.append(turn)
                    changed.notify_all()
                i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        with changed:
            changed.wait_for(lambda: len(done) >= 5 * clients, 30)
        serves[0].proc.send_signal(signal.SIGTERM)
        serves[0].proc.wait(20)
        with changed:
            target = len(done) + 5 * clients
            changed.wait_for(lambda: len(done) >= target, 30)
        stop.set()
        for thread in threads:
            thread.join(30)
        lost = sum(not turn.whole(REPLY) for turn in done)
        resets = sum("reset by peer" in line for line in nginx.lines)
        refused = sum("Connection refused" in line for line in nginx.lines)
        return len(done), lost, resets, refused
    finally:
        if nginx is not None:
            nginx.stop()
        for serve in serves:
            serve.__exit__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--non-idempotent", action="store_true")
    args = parser.parse_args()
    if harness.NGINX is None:
        sys.exit("nginx is not installed (Debian: apt-get install nginx)")
    text = harness.CONF.read_text()
    if args.non_idempotent:
        plain = "proxy_next_upstream error timeout;"
        text = text.replace(plain, plain[:-1] + " non_idempotent;")
    conf = Path(tempfile.mkdtemp()) / "vapi-bridge.conf"
    conf.write_text(text)
    totals = [0, 0, 0, 0]
    with FakeSambaNova() as fake:
        for n in range(args.rounds):
            figures = one_round(fake, conf, args.clients)
            totals = [a + b for a, b in zip(totals, figures, strict=True)]
            turns, lost, resets, refused = figures
            print(f"round {n + 1}: {turns} turns, lost {lost}, resets {resets}, refused {refused}")
    turns, lost, resets, refused = totals
    print(
        f"nginx drain: {args.rounds} stops under {args.clients} clients, {turns} turns, "
        f"lost {lost}; nginx saw {resets} connections reset and {refused} refused"
    )


if __name__ == "__main__":
    main()
