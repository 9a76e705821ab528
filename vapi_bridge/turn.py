"""One turn of a call, from a validated request to the last byte Vapi receives.

A turn opens the upstream stream, runs each chunk through the stages, and frames what comes
out. **Before the first byte** reaches Vapi a failure is still an HTTP status with an
OpenAI-style body (Vapi names the call's ended reason after it). **After it** the 200 is on
the wire, so a failure, a stall or a shutdown ends the reply cleanly: an SSE comment saying
it was cut (clients ignore it, ``vapi-bridge test`` reads it), a finish chunk, ``[DONE]``.

:class:`LiveTurns` knows every turn streaming now. Its watchdog thread aborts an upstream
read that passed the first-token deadline or stalled between chunks, and at shutdown it ends
every live turn at once, even one whose upstream is sending nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vapi_bridge import sse
from vapi_bridge.attempts import Attempt, Attempts, Outcome, Policy
from vapi_bridge.errors import BridgeError, UpstreamError, UpstreamStreamBroken
from vapi_bridge.normalise import normalise_completion
from vapi_bridge.reply import Reply, ToolCall
from vapi_bridge.reqlog import RequestRecord
from vapi_bridge.stages import Collect, Normalise, Pipeline, StageFactory, Trace
from vapi_bridge.translate import ChatRequest, OnReply
from vapi_bridge.upstream import Blocked, ChunkStream, Upstream

log = logging.getLogger("vapi_bridge")


class ShuttingDown(BridgeError):
    """The bridge stopped before this turn could send its first byte."""

    status = 503
    code = "shutting_down"


# A whole reply's counterpart of a stage; and what to add to a request for its model.
BodyFilter = Callable[[dict[str, Any], Trace], dict[str, Any]]
ParamsPolicy = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class TurnContext:
    """What every turn of one app shares."""

    upstream: Upstream
    live: LiveTurns
    policy: Policy = field(default_factory=Policy)
    apology: str | None = None
    stages: Sequence[StageFactory] = ()
    body_filters: Sequence[BodyFilter] = ()
    params_for: ParamsPolicy | None = None
    on_reply: OnReply | None = None
    log_format: str = "text"


class Turn:
    """One request's way through upstream, stages and framing."""

    def __init__(self, request: ChatRequest, record: RequestRecord, ctx: TurnContext) -> None:
        self.request = request
        self.record = record
        self.ctx = ctx
        self._new_pipeline()
        self.model = request.model
        self.answered: str | None = None  # the model that answered, once one has
        self.last_data: float | None = None
        self.abort_reason: str | None = None
        self._attempts: Attempts | None = None
        self._stream: ChunkStream | None = None
        self._finished = False
        self._lock = threading.Lock()

    def _new_pipeline(self) -> None:
        """Fresh stages (and trace) for an attempt: a failed one leaves nothing behind."""
        self.trace = Trace(started=self.record.started)
        self.collect = Collect(self.trace)
        self.normalise = Normalise(
            self.trace, model=self.request.model, forward_usage=self.request.include_usage
        )
        extra = [factory(self.trace) for factory in self.ctx.stages]
        self.pipeline = Pipeline([self.normalise, *extra, self.collect])

    # A whole (non-streamed) reply.

    def complete(self) -> dict[str, Any]:
        winner = self._attempt(whole=True)
        if winner is None:
            body = self._apology_completion()
        else:
            body = normalise_completion(winner.first, self.model)
            for whole in self.ctx.body_filters:
                body = whole(body, self.trace)
            self.record.first_token()
        self.record.first_speech()
        self.record.usage(body.get("usage"))
        if self.ctx.on_reply is not None:
            self.ctx.on_reply(self.request, self._reply_from(body))
        return body

    # A streamed reply.

    def start(self) -> Iterator[bytes | Blocked]:
        """Find a model that answers and read to the first frame; raises :class:`BridgeError`
        (an HTTP status for Vapi) when none does before the first byte.

        The frames yield a :class:`Blocked` only after :meth:`without_waiting`.

        A model counts as answering at its first chunk, but the first *frame* can come much
        later (a reasoning model thinks first): a failure in between is still before the
        first byte, so it is one more failed attempt and the next model (or the apology)
        takes over.
        """
        self.ctx.live.add(self)
        try:
            attempts = self._attempts_for(whole=False)
            while True:
                winner = self._decide(attempts.run())
                if winner is None:
                    return self._relay(self._apology_frame(), iter(()))
                self._stream = winner.stream
                self._saw_data()
                rest = winner.chunks if winner.chunks is not None else iter(())
                chunks = itertools.chain([winner.first], rest) if winner.first else rest
                try:
                    first = self._first_frame(chunks)
                    break
                except UpstreamStreamBroken as exc:
                    error = self._before_first_byte(exc)
                    if isinstance(error, ShuttingDown) or not isinstance(error, UpstreamError):
                        raise error from None
                    self._retry_after(winner, error, attempts)
        except BaseException as exc:
            self.ctx.live.discard(self)
            if self._stream is not None:
                self._stream.close()
            if isinstance(exc, UpstreamStreamBroken):
                raise self._before_first_byte(exc) from None
            raise
        return self._relay(first, chunks)

    def _retry_after(self, winner: Attempt, error: UpstreamError, attempts: Attempts) -> None:
        """Forget a model that failed before the first frame; the attempts go on."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self.last_data = None
        with self._lock:
            self.abort_reason = None
        self.answered = None
        self._new_pipeline()
        attempts.lost(winner, error)

    def _attempts_for(self, *, whole: bool) -> Attempts:
        attempts = Attempts(
            self.ctx.upstream,
            self.ctx.policy,
            self.request.model,
            self._params_for,
            self.ctx.live.stopping,
            whole=whole,
            on_deadline=None if whole else lambda: self.ctx.live.watch(self),
        )
        self._attempts = attempts
        if self.abort_reason is not None:
            attempts.abort()
        return attempts

    def _attempt(self, *, whole: bool) -> Attempt | None:
        """Run the attempt policy; the winning attempt, ``None`` for the apology, or raise."""
        return self._decide(self._attempts_for(whole=whole).run())

    def _decide(self, outcome: Outcome) -> Attempt | None:
        """The winning attempt, ``None`` for the apology, or the error Vapi should get."""
        self.record.attempts(outcome.story, hedged=outcome.hedged)
        self.record.upstream_failures = [error.code for error in outcome.errors]
        if outcome.winner is not None:
            self.model = self.record.model = self.normalise.model = outcome.winner.model
            self.answered = outcome.winner.model
            stream = outcome.winner.stream
            self.record.rate_remaining = stream.rate.remaining if stream and stream.rate else None
            return outcome.winner
        if self.abort_reason == "shutdown" or self.ctx.live.stopping.is_set():
            raise ShuttingDown(
                "The bridge is shutting down.", hint="Vapi may retry; the bridge is restarting."
            )
        error = outcome.last_error or UpstreamError(
            "SambaNova did not start answering in time.",
            hint="Retry; raise --upstream-timeout (keep it under Vapi's 20 s) if it persists.",
            upstream_status=504,
            code="upstream_timeout",
        )
        if self.ctx.apology is None or not outcome.transient:
            raise error
        self.record.outcome, self.record.error = "apology", f"{error.code}: {error.message}"
        return None

    def _params_for(self, model: str) -> dict[str, Any]:
        params = self.request.params
        if model != params["model"]:
            params = {**params, "model": model}
        return self.ctx.params_for(params) if self.ctx.params_for is not None else params

    def _apology_frame(self) -> bytes | None:
        """The apology as the first frame: spoken, but no token came from any model."""
        delta = {"role": "assistant", "content": self.ctx.apology}
        chunk = {
            "id": self.normalise.id,
            "object": "chat.completion.chunk",
            "created": self.normalise.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        out = self.pipeline.feed(chunk)
        self.record.first_speech_at(self.collect.first_speech)
        return sse.frame(out) if out is not None else None

    def _apology_completion(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.ctx.apology}
        return {
            "id": self.normalise.id,
            "object": "chat.completion",
            "created": self.normalise.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    def without_waiting(self) -> bool:
        """Let the frames yield a :class:`Blocked` where the upstream read would wait, so that
        a relay loop can carry this turn with many others; ``False`` (and nothing changed) when
        its stream cannot (the apology, the demo model, an unusual transport)."""
        stream = self._stream
        return stream is not None and stream.without_waiting()

    def close(self) -> None:
        """Called when the server is done with the response, whether or not it ever started.

        The upstream is released here, once the reply's last byte has gone out: after
        ``[DONE]``, reading the upstream body's end (to keep its connection) may wait a little,
        and the client must not wait with it."""
        self._finish(client_left=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def due(self) -> float:
        """When the watchdog must step in: the current attempt's deadline while models are
        tried, then the stall limit once one is answering."""
        attempts = self._attempts  # read once: the turn's end clears it from another thread
        if self.last_data is None:
            return attempts.due() if attempts is not None else math.inf
        return self.last_data + self.ctx.live.stall_timeout

    def expire(self, now: float) -> None:
        """The watchdog's call when :meth:`due` had passed; checked again, since the turn
        may have moved on (a first chunk, another attempt) since the watchdog looked."""
        if self.due() > now:
            return
        attempts = self._attempts
        if self.last_data is None and attempts is not None:
            attempts.expire()
        else:
            self.abort("stall")

    def abort(self, reason: str) -> None:
        """Stop waiting on upstream (from the watchdog or shutdown); the reader ends the turn."""
        with self._lock:
            if self.abort_reason is None:
                self.abort_reason = reason
        attempts, stream = self._attempts, self._stream
        if attempts is not None and reason == "shutdown":
            attempts.abort()
        if stream is not None:
            stream.abort()

    def _first_frame(self, chunks: Iterator[Any]) -> bytes | None:
        for raw in chunks:
            self._saw_data()
            out = self.pipeline.feed(raw)
            if out is not None:
                self.record.first_speech_at(self.collect.first_speech)
                return sse.frame(out)
        return None

    def _saw_data(self) -> None:
        if self.last_data is None:
            self.record.first_token()
            self.last_data = time.monotonic()
            self.ctx.live.watch(self)
        self.last_data = time.monotonic()

    def _relay(self, first: bytes | None, chunks: Iterator[Any]) -> Iterator[bytes | Blocked]:
        record = self.record
        try:
            if first is not None:
                yield first
            try:
                for raw in chunks:
                    if raw.__class__ is Blocked:
                        yield raw
                        continue
                    self._saw_data()
                    out = self.pipeline.feed(raw)
                    if out is not None:
                        if record.ttfs_ms is None:
                            record.first_speech_at(self.collect.first_speech)
                        yield sse.frame(out)
                    if self.abort_reason == "shutdown":
                        break
            except UpstreamStreamBroken as exc:
                record.outcome, record.error = self._after_first_byte(exc)
            except Exception as exc:
                log.exception("stream relay failed")
                record.outcome, record.error = "bridge_error", exc.__class__.__name__
            if self.abort_reason is not None and record.outcome == "ok":
                record.outcome = "shutdown" if self.abort_reason == "shutdown" else "upstream_error"
            for held in self.pipeline.flush():
                yield sse.frame(held)
            if record.ttfs_ms is None:
                record.first_speech_at(self.collect.first_speech)
            if self.collect.finish_reason is None:
                if record.outcome != "ok":
                    yield sse.cut_comment(record.outcome)
                yield sse.frame(self._final_chunk())
            yield sse.DONE
        except GeneratorExit:
            # Closed by the server: the client left, or the bridge stopping released a reply
            # its client had stopped reading.
            record.outcome = "shutdown" if self.abort_reason == "shutdown" else "client_closed"
            raise
        finally:
            self._finish(client_left=False)

    def _final_chunk(self) -> dict[str, Any]:
        self.collect.finish_reason = "stop"
        chunk = {
            "id": self.normalise.id,
            "object": "chat.completion.chunk",
            "created": self.normalise.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        self.collect.chunks += 1
        return chunk

    def _before_first_byte(self, exc: UpstreamStreamBroken) -> BridgeError:
        if self.abort_reason == "shutdown":
            return ShuttingDown(
                "The bridge is shutting down.", hint="Vapi may retry; the bridge is restarting."
            )
        if self.abort_reason == "stall":
            limit = self.ctx.live.stall_timeout
            return UpstreamError(
                f"SambaNova stalled before the reply began: no data for {limit:g}s.",
                hint="Retry; a fallback model (--fallback-model) keeps the call going.",
                upstream_status=504,
                code="upstream_timeout",
            )
        return exc

    def _after_first_byte(self, exc: UpstreamStreamBroken) -> tuple[str, str]:
        if self.abort_reason == "shutdown":
            return "shutdown", "the bridge stopped"
        if self.abort_reason == "stall":
            limit = self.ctx.live.stall_timeout
            return "upstream_error", f"SambaNova stalled: no data for {limit:g}s."
        return "upstream_error", exc.message

    def _finish(self, *, client_left: bool) -> None:
        # Runs once: from the relay's end, or from the server closing a response whose relay
        # never started (the client left before the first write).
        with self._lock:
            if self._finished:
                return
            self._finished = True
        record = self.record
        if client_left:
            record.outcome = "client_closed"
        self.ctx.live.discard(self)
        # The attempts hold this turn (through _params_for): a cycle that would keep the
        # whole turn, its threads and its upstream response for the GC's next full pass.
        self._attempts = None
        record.chunks = self.collect.chunks
        record.usage(self.trace.usage)
        record.think_ms = self.trace.think_ms
        record.emit(self.ctx.log_format)
        if self.ctx.on_reply is not None and record.outcome != "client_closed":
            self.ctx.on_reply(self.request, self._reply())

    def _reply(self) -> Reply:
        record = self.record
        return Reply(
            text=self.collect.text,
            tool_calls=self.collect.tool_calls.complete(),
            finish_reason=self.collect.finish_reason,
            ttft_ms=record.ttft_ms,
            ttfs_ms=record.ttfs_ms,
            total_ms=record.total_ms,
            usage=self.trace.usage,
            outcome=record.outcome,
            reasoning="".join(self.trace.reasoning),
            call_id=self.request.call_id,
            model=self.model,
        )

    def _reply_from(self, body: dict[str, Any]) -> Reply:
        choice = body["choices"][0] if body["choices"] else {}
        message = choice.get("message") or {}
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        return Reply(
            text=message.get("content") or "",
            tool_calls=[
                ToolCall(
                    id=c.get("id"),
                    name=str((c.get("function") or {}).get("name") or ""),
                    arguments=str((c.get("function") or {}).get("arguments") or ""),
                )
                for c in calls
            ],
            finish_reason=choice.get("finish_reason"),
            ttft_ms=self.record.ttft_ms,
            ttfs_ms=self.record.ttfs_ms,
            total_ms=round((time.perf_counter() - self.record.started) * 1000, 1),
            usage=body.get("usage"),
            outcome=self.record.outcome,
            reasoning="".join(self.trace.reasoning),
            call_id=self.request.call_id,
            model=self.model,
        )


class LiveTurns:
    """The turns streaming now, and the one thread that watches their deadlines."""

    def __init__(self, *, stall_timeout: float) -> None:
        self.stall_timeout = stall_timeout
        self.stopping = threading.Event()
        self._turns: set[Turn] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        # When the watchdog will look next (-inf while it is looking). It never sleeps longer
        # than the stall limit, so a stall deadline (set at a chunk, always a stall limit
        # away) never needs to wake it: no thread switch on the way to a first frame.
        self._wakes_at = -math.inf

    def add(self, turn: Turn) -> None:
        with self._changed:
            if self.stopping.is_set():
                turn.abort_reason = "shutdown"
            self._turns.add(turn)
            if self._thread is None:
                # Started on first use, so a process that forks workers after building the
                # app (gunicorn) has no thread to lose in the fork.
                self._thread = threading.Thread(
                    target=self._watch, name="vapi-bridge-watchdog", daemon=True
                )
                self._thread.start()
            self._wake_if_sooner(turn)

    def watch(self, turn: Turn) -> None:
        """``turn`` has a new deadline (an attempt began, its first token came): wake the
        watchdog only if it would otherwise look too late."""
        with self._changed:
            self._wake_if_sooner(turn)

    def _wake_if_sooner(self, turn: Turn) -> None:
        if turn.abort_reason is None and turn.due() < self._wakes_at:
            self._changed.notify()

    def discard(self, turn: Turn) -> None:
        with self._changed:
            self._turns.discard(turn)

    def __len__(self) -> int:
        with self._changed:
            return len(self._turns)

    def end_all(self) -> int:
        """End every live turn cleanly now (shutdown's grace is over); returns how many."""
        self.stopping.set()
        with self._changed:
            turns = list(self._turns)
        for turn in turns:
            turn.abort("shutdown")
        return len(turns)

    def _watch(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                pending = [(t.due(), t) for t in self._turns if t.abort_reason is None]
                expired = [t for due, t in pending if due <= now]
                if not expired:
                    soonest = min((due for due, _ in pending), default=math.inf)
                    self._wakes_at = min(soonest, now + self.stall_timeout)
                    self._changed.wait(self._wakes_at - now)
                    self._wakes_at = -math.inf
                    continue
            for turn in expired:
                turn.expire(now)
