"""The server's worker threads: one connection after another, never a cap on calls."""

from __future__ import annotations

import threading

import pytest

from vapi_bridge.server import Workers


class Served:
    """Records which thread served each job; a job may wait for a gate."""

    def __init__(self) -> None:
        self.threads: dict[str, threading.Thread] = {}
        self.done = {name: threading.Event() for name in "abcdef"}

    def __call__(self, name: str, gate: threading.Barrier | None = None) -> None:
        self.threads[name] = threading.current_thread()
        if gate is not None:
            gate.wait(5)
        self.done[name].set()


def test_a_finished_thread_serves_the_next_connection() -> None:
    served = Served()
    workers = Workers(served)
    workers.serve("a")
    assert served.done["a"].wait(5)
    for name in "bc":
        assert wait_idle(workers)
        workers.serve(name)
        assert served.done[name].wait(5)
    assert served.threads["a"] is served.threads["b"] is served.threads["c"]
    workers.close()
    served.threads["a"].join(5)
    assert not served.threads["a"].is_alive(), "close ends idle workers"


def test_concurrent_connections_each_get_a_thread() -> None:
    served = Served()
    workers = Workers(served)
    together = threading.Barrier(3)
    for name in "abc":
        workers.serve(name, together)  # each waits for the other two: all run at once
    assert all(served.done[name].wait(5) for name in "abc")
    assert len({served.threads[name] for name in "abc"}) == 3
    workers.close()


def test_an_idle_worker_ends_and_the_next_connection_still_gets_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Workers, "IDLE", 0.01)
    served = Served()
    workers = Workers(served)
    workers.serve("a")
    assert served.done["a"].wait(5)
    served.threads["a"].join(5)
    assert not served.threads["a"].is_alive()
    workers.serve("b")
    assert served.done["b"].wait(5)
    assert served.threads["b"] is not served.threads["a"]
    workers.close()


def wait_idle(workers: Workers) -> bool:
    """Until a worker waits for a job (it counts itself idle after its connection)."""
    deadline = threading.Event()
    for _ in range(500):
        with workers._lock:
            if workers._idle:
                return True
        deadline.wait(0.01)
    return False
