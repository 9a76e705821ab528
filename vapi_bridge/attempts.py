"""The turn's attempt policy: which model to ask, when to give up on it, what to try next.

Everything here happens **before the first byte** reaches Vapi, while the turn can still
change its mind. The request's own model is asked first, then each ``--fallback-model`` in
order; with no fallback the same model is retried (429/5xx/connection failures, pausing as
``Retry-After`` asks while the turn's deadline leaves room). An attempt that has no first
token after ``--attempt-timeout`` is abandoned when there is something else to try. With
``--hedge-after`` the next model starts beside the first instead, and the first to produce a
token wins. Abandoned attempts are aborted at once (their connection closed), so no tokens
are spent on an answer nobody hears.

A 429 puts its model on cooldown (``Retry-After``, else the rate-limit reset header, else
:data:`DEFAULT_COOLDOWN`), and so does an answer saying no requests remain; while a model
cools down, turns go straight to the next one. Cooldowns are per process.

Each attempt runs its request and first read on a short-lived thread, so the turn can wait
for whichever attempt answers first; after that the turn reads the winner itself.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vapi_bridge.errors import InBandError, UpstreamError
from vapi_bridge.ratelimit import RateLimit, seconds
from vapi_bridge.stages import error_text
from vapi_bridge.upstream import ChunkStream, Upstream

log = logging.getLogger("vapi_bridge")

DEFAULT_COOLDOWN = 10.0
# Failures worth another try: rate limits, overload, server errors, the network (None).
RETRYABLE = frozenset({429, 500, 502, 503, 504, None})
# Failures of one model that another model may not have.
FALL_THROUGH = RETRYABLE | {403, 404, 410}
SAME_MODEL_RETRIES = 2


class Cooldowns:
    """Models resting after a rate limit, shared by every turn of the process."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def left(self, model: str) -> float:
        """Seconds until ``model`` may be asked again (0 when it may now)."""
        with self._lock:
            until = self._until.get(model)
        return max(0.0, until - time.monotonic()) if until is not None else 0.0

    def rest(self, model: str, seconds_: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds_
            self._until[model] = max(until, self._until.get(model, 0.0))

    def after_error(self, model: str, error: UpstreamError) -> float | None:
        """Put ``model`` on cooldown after a 429; returns for how long."""
        if error.upstream_status != 429:
            return None
        wait = seconds(error.retry_after)
        if wait is None and error.rate is not None:
            wait = error.rate.reset_s
        wait = DEFAULT_COOLDOWN if wait is None else wait
        self.rest(model, wait)
        return wait

    def after_answer(self, model: str, rate: RateLimit | None) -> None:
        """An answer that says no requests remain: rest until the reset it names."""
        if rate is not None and rate.remaining == 0:
            self.rest(model, rate.reset_s if rate.reset_s is not None else DEFAULT_COOLDOWN)


@dataclass(frozen=True)
class Policy:
    """The attempt settings of one app (``fallbacks`` come after the request's model)."""

    fallbacks: tuple[str, ...] = ()
    attempt_timeout: float = 3.0
    turn_timeout: float = 15.0
    hedge_after: float | None = None
    cooldowns: Cooldowns = field(default_factory=Cooldowns)


class Attempt:
    """One request to one model, up to its first chunk (or whole answer), on its own thread."""

    def __init__(self, model: str, params: dict[str, Any], *, whole: bool = False) -> None:
        self.model = model
        self.params = params
        self.whole = whole
        self.started = time.monotonic()
        self.stream: ChunkStream | None = None
        self.chunks: Iterator[Any] | None = None
        self.first: Any = None
        self.error: UpstreamError | None = None
        self.abandoned = False
        self._claimed = False
        self._finished = False
        self._lock = threading.Lock()

    def start(self, upstream: Upstream, timeout: float, done: queue.Queue[Attempt | None]) -> None:
        thread = threading.Thread(
            target=self._run, args=(upstream, timeout, done), name="vapi-bridge-attempt"
        )
        thread.daemon = True
        thread.start()

    def claim(self) -> bool:
        """Make this attempt the winner, unless it was abandoned first (one or the other)."""
        with self._lock:
            if self.abandoned:
                return False
            self._claimed = True
            return True

    def abandon(self) -> None:
        """Stop this attempt from any thread; its connection is closed at once. A claimed
        winner is no longer an attempt: the turn owns its stream."""
        with self._lock:
            if self._claimed:
                return
            self.abandoned = True
            stream, finished = self.stream, self._finished
        if stream is not None:
            stream.abort()
            if finished:
                stream.close()

    def _run(self, upstream: Upstream, timeout: float, done: queue.Queue[Attempt | None]) -> None:
        self.run_here(upstream, timeout)
        done.put(self)

    def run_here(self, upstream: Upstream, timeout: float) -> None:
        """The attempt in the calling thread: up to its first chunk, an error, or abandon."""
        try:
            if self.whole:
                self.first = upstream.complete(self.params, timeout=timeout)
            else:
                self._open(upstream, timeout)
        except UpstreamError as exc:
            self.error = exc
        except Exception as exc:
            log.exception("an upstream attempt failed unexpectedly")
            self.error = UpstreamError(f"The request to SambaNova failed: {type(exc).__name__}.")
        with self._lock:
            self._finished = True
            close = self.stream is not None and (self.error is not None or self.abandoned)
        if close and self.stream is not None:
            self.stream.close()

    def _open(self, upstream: Upstream, timeout: float) -> None:
        stream = upstream.open_stream(self.params, timeout=timeout)
        with self._lock:
            self.stream = stream
            if self.abandoned:
                return
        self.chunks = iter(stream)
        self.first = next(self.chunks, None)
        if isinstance(self.first, dict) and self.first.get("error") is not None:
            raise InBandError(f"SambaNova reported an error: {error_text(self.first)}")


@dataclass
class Outcome:
    """How the attempts went: the winner (or none) and each failure, for the log."""

    winner: Attempt | None = None
    tried: list[str] = field(default_factory=list)
    errors: list[UpstreamError] = field(default_factory=list)
    hedged: bool = False
    story: list[str] = field(default_factory=list)
    """What happened to each attempt, in order: ``A(429)``, ``A(slow)``, ``B(lost)``, ``C``."""

    @property
    def last_error(self) -> UpstreamError | None:
        return self.errors[-1] if self.errors else None

    @property
    def transient(self) -> bool:
        """Every failure was a passing one (a caller may simply try again)."""
        return bool(self.errors) and all(e.upstream_status in RETRYABLE for e in self.errors)


class Attempts:
    """Runs the policy for one turn; :meth:`run` returns the winning attempt or raises."""

    def __init__(
        self,
        upstream: Upstream,
        policy: Policy,
        model: str,
        params_for: Callable[[str], dict[str, Any]],
        stopping: threading.Event,
        *,
        whole: bool = False,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.policy = policy
        self.params_for = params_for
        self.stopping = stopping
        self.deadline = time.monotonic() + policy.turn_timeout
        self.outcome = Outcome()
        self.whole = whole
        self._done: queue.Queue[Attempt | None] = queue.Queue()
        self._running: list[Attempt] = []
        self._pending = self._candidates(model)
        self._wake = threading.Event()
        self._aborted = False
        # One attempt at a time runs in the caller's thread; the turn's watchdog calls
        # expire() at its deadline (see due()). Only hedging needs attempts side by side.
        self.current: Attempt | None = None
        self._on_deadline = on_deadline

    def _candidates(self, model: str) -> list[str]:
        fallbacks = [m for m in dict.fromkeys(self.policy.fallbacks) if m != model]
        if not fallbacks:
            return [model] * (1 + SAME_MODEL_RETRIES)
        chain = [model, *fallbacks]
        # A model on cooldown is skipped while a model that is not remains.
        ready = [m for m in chain if self.policy.cooldowns.left(m) == 0]
        return ready or chain

    def abort(self) -> None:
        """Give up on every running attempt now (shutdown); :meth:`run` returns at once."""
        self._aborted = True
        self._wake.set()
        self._done.put(None)
        current = self.current
        if current is not None:
            current.abandon()

    def due(self) -> float:
        """When the attempt running in the caller's thread must be abandoned (else never)."""
        current = self.current
        if current is None or current.abandoned:
            return math.inf
        return self._attempt_deadline(current)

    def expire(self) -> None:
        """The watchdog's call at :meth:`due`: give up on the current attempt, try the next."""
        current = self.current
        if current is not None:
            current.abandon()

    def run(self) -> Outcome:
        """Try models until one produces a first chunk, or none is left, or time runs out."""
        if self.policy.hedge_after is None:
            return self._one_at_a_time()
        while True:
            if not self._running and not self._start_next():
                return self.outcome
            now = time.monotonic()
            wait = self._next_event(now) - now
            try:
                attempt = self._done.get(timeout=max(wait, 0.0))
            except queue.Empty:
                if self._on_time(time.monotonic()):
                    return self._give_up()
                continue
            if attempt is None:
                return self._give_up()
            if attempt.abandoned or attempt not in self._running:
                continue
            self._running.remove(attempt)
            if attempt.error is None and attempt.claim():
                return self._won(attempt)
            if attempt.abandoned:
                continue
            if self._failed(attempt):
                return self._give_up()

    def _one_at_a_time(self) -> Outcome:
        """The usual path: each attempt in the caller's thread, no thread handoff per turn."""
        while self._pending and not (self._aborted or self.stopping.is_set()):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0.05:
                break
            model = self._pending.pop(0)
            attempt = Attempt(model, self.params_for(model), whole=self.whole)
            self.outcome.tried.append(model)
            self._running = [attempt]
            self.current = attempt
            limit = self._attempt_deadline(attempt) - time.monotonic()
            if self._on_deadline is not None:
                self._on_deadline()
            attempt.run_here(self.upstream, max(limit, 0.01))
            self.current = None
            self._running = []
            if attempt.error is None and attempt.claim():
                return self._won(attempt)
            if attempt.abandoned:
                if self._aborted or self.stopping.is_set():
                    break
                self.outcome.errors.append(self._slow(attempt))
                self.outcome.story.append(f"{attempt.model}(slow)")
            elif self._failed(attempt):
                break
        return self.outcome

    def lost(self, attempt: Attempt, error: UpstreamError) -> None:
        """The winner failed before its first frame: one more failed attempt after all."""
        attempt.error = error
        self.outcome.winner = None
        if self.outcome.story and self.outcome.story[-1] == attempt.model:
            self.outcome.story.pop()
        if self._failed(attempt):
            self._pending.clear()

    def _give_up(self) -> Outcome:
        for attempt in self._running:
            attempt.abandon()
        self._running.clear()
        return self.outcome

    def _start_next(self) -> bool:
        if not self._pending or self.stopping.is_set():
            return False
        model = self._pending.pop(0)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0.05:
            return False
        attempt = Attempt(model, self.params_for(model), whole=self.whole)
        self.outcome.tried.append(model)
        self._running.append(attempt)
        attempt.start(self.upstream, remaining, self._done)
        return True

    def _attempt_deadline(self, attempt: Attempt) -> float:
        # Only an attempt with another model to fall back to gets the short per-attempt limit;
        # a slow model is not asked the same question again (that only queues it twice).
        other_model = any(model != attempt.model for model in self._pending)
        if other_model or len(self._running) > 1:
            return min(attempt.started + self.policy.attempt_timeout, self.deadline)
        return self.deadline

    def _hedge_time(self) -> float | None:
        hedge = self.policy.hedge_after
        if hedge is None or not self._pending or len(self._running) != 1:
            return None
        return self._running[0].started + hedge / 1000

    def _next_event(self, now: float) -> float:
        times = [self._attempt_deadline(a) for a in self._running]
        hedge = self._hedge_time()
        if hedge is not None:
            times.append(hedge)
        return min(times, default=now)

    def _on_time(self, now: float) -> bool:
        """A deadline passed: hedge, or abandon slow attempts. True when the turn must stop."""
        if self.stopping.is_set():
            return True
        hedge = self._hedge_time()
        if hedge is not None and now >= hedge:
            self.outcome.hedged = True
            self._start_next()
        for attempt in list(self._running):
            if now >= self._attempt_deadline(attempt):
                self.outcome.errors.append(self._slow(attempt))
                self._running.remove(attempt)
                attempt.abandon()
                self.outcome.story.append(f"{attempt.model}(slow)")
        return now >= self.deadline

    def _slow(self, attempt: Attempt) -> UpstreamError:
        limit = self._attempt_deadline(attempt) - attempt.started
        return UpstreamError(
            f"SambaNova did not start answering within {limit:.1f}s ({attempt.model}).",
            hint="Retry; raise --upstream-timeout (keep it under Vapi's 20 s) if it persists.",
            upstream_status=504,
            code="upstream_timeout",
        )

    def _won(self, attempt: Attempt) -> Outcome:
        for other in self._running:
            other.abandon()
            self.outcome.story.append(f"{other.model}(lost)")
        self._running.clear()
        self.outcome.story.append(attempt.model)
        if attempt.stream is not None:
            self.policy.cooldowns.after_answer(attempt.model, attempt.stream.rate)
        self.outcome.winner = attempt
        return self.outcome

    def _failed(self, attempt: Attempt) -> bool:
        """Note a failed attempt; True when no other attempt should be made."""
        error = attempt.error
        assert error is not None
        self.outcome.errors.append(error)
        self.outcome.story.append(f"{attempt.model}({error.upstream_status or 'failed'})")
        rested = self.policy.cooldowns.after_error(attempt.model, error)
        if rested is not None:
            log.info("%s is rate limited: cooling down for %.1fs", attempt.model, rested)
        status = error.upstream_status
        same_model = bool(self._pending) and self._pending[0] == attempt.model
        if status not in (RETRYABLE if same_model else FALL_THROUGH):
            return True
        if same_model and not self._running:
            return not self._pause_before_retry(error)
        return False

    def _pause_before_retry(self, error: UpstreamError) -> bool:
        """Wait as the error asks before asking the same model again; False if no time."""
        if error.code == "upstream_timeout":
            return False
        tries = len(self.outcome.tried)
        pause = 0.1 * 2 ** (tries - 1)
        asked = seconds(error.retry_after)
        if error.retry_after is not None and asked is None:
            return False
        pause = max(pause, asked or 0.0)
        if time.monotonic() + pause >= self.deadline - 0.05:
            return False
        return not self._wake.wait(pause)
