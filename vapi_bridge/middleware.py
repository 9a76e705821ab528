"""Middleware: what runs before the upstream call, and after a reply, off the hot path.

Before: the system prompt, then each ``--hook`` in order. After: transcripts and each
``--reply-hook``, on one background thread so the caller never waits for them; at shutdown
that queue is drained within the grace period and what could not run is counted. With none
of these set, :func:`build_middleware` returns no callables and the request path is unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vapi_bridge import hooks
from vapi_bridge.errors import HookFailed
from vapi_bridge.hooks import HookRequest
from vapi_bridge.prompt import SystemPrompt
from vapi_bridge.reply import Reply
from vapi_bridge.settings import Settings
from vapi_bridge.transcripts import TranscriptWriter
from vapi_bridge.translate import FORWARDED_PARAMS, ChatRequest, OnReply, Prepare

log = logging.getLogger("vapi_bridge")


class Worker:
    """Runs after-reply work in order on one daemon thread, started with the first job."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                # A turn that ended after the drain: said, never run on a new thread.
                log.warning("a transcript line / reply hook call came after shutdown; not run")
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="vapi-bridge-after", daemon=True
                )
                self._thread.start()
        self._queue.put(job)

    def close(self, timeout: float = 5.0) -> int:
        """Run what is queued for up to ``timeout`` s; returns how many jobs did not run."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is None:
            return 0
        self._queue.put(None)
        thread.join(timeout)
        # Still running: the job in hand and those queued behind it (the stop marker excluded).
        return self._queue.qsize() if thread.is_alive() else 0

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("after-reply work failed")


@dataclass
class Middleware:
    prepare: Prepare | None = None
    on_reply: OnReply | None = None
    worker: Worker | None = field(default=None, repr=False)

    def close(self, timeout: float = 5.0) -> int:
        """Drain after-reply work; returns how many transcripts/reply hooks were lost."""
        lost = self.worker.close(timeout) if self.worker is not None else 0
        if lost:
            log.warning(
                "%d transcript line(s) / reply hook call(s) could not run before shutdown", lost
            )
        return lost


def build_middleware(settings: Settings) -> Middleware:
    """The middleware the settings ask for; raises ConfigError on a bad prompt file or hook."""
    prepare = build_prepare(settings)
    reply_hooks = [(spec, hooks.load(spec)) for spec in settings.reply_hooks]
    writer = TranscriptWriter(settings.transcript_dir) if settings.transcript_dir else None
    middleware = Middleware(prepare=prepare)
    if reply_hooks or writer is not None:
        worker = Worker()

        def on_reply(chat_request: ChatRequest, reply: Reply) -> None:
            worker.submit(lambda: _after_reply(chat_request, reply, writer, reply_hooks))

        middleware.on_reply, middleware.worker = on_reply, worker
    return middleware


def build_prepare(settings: Settings) -> Prepare | None:
    """The system prompt and request hooks, as one step before the upstream call."""
    steps: list[Prepare] = []
    if settings.system_prompt or settings.system_prompt_file:
        prompt = SystemPrompt(
            text=settings.system_prompt,
            path=settings.system_prompt_file,
            mode=settings.system_prompt_mode,
        )
        steps.append(lambda r: _with_messages(r, prompt.apply(r.params["messages"])))
    request_hooks = [(spec, hooks.load(spec)) for spec in settings.hooks]
    if request_hooks:
        steps.append(lambda r: _run_request_hooks(r, request_hooks))
    return _chain(steps) if steps else None


def _chain(steps: list[Prepare]) -> Prepare:
    def prepare(chat_request: ChatRequest) -> ChatRequest:
        for step in steps:
            chat_request = step(chat_request)
        return chat_request

    return prepare


def _with_messages(chat_request: ChatRequest, messages: list[dict[str, Any]]) -> ChatRequest:
    return replace(chat_request, params={**chat_request.params, "messages": messages})


def _run_request_hooks(
    chat_request: ChatRequest, request_hooks: list[tuple[str, Callable[..., Any]]]
) -> ChatRequest:
    fixed = ("model", "messages", "stream", "stream_options")
    request = HookRequest(
        messages=[dict(m) for m in chat_request.params["messages"]],
        model=chat_request.model,
        params={k: v for k, v in chat_request.params.items() if k not in fixed},
        call_id=chat_request.call_id,
        metadata=dict(chat_request.metadata),
    )
    for spec, hook in request_hooks:
        try:
            result = hook(request)
        except Exception as exc:
            log.exception("request hook %s failed", spec)
            raise HookFailed(
                f"The request hook {spec} raised {exc.__class__.__name__}.",
                hint="See the bridge's log for the traceback.",
            ) from None
        if result is not None and not isinstance(result, HookRequest):
            raise HookFailed(
                f"The request hook {spec} returned {type(result).__name__}, not a HookRequest.",
                hint="Return the request (changed or not), or None.",
            )
        request = result or request
    # A hook cannot switch streaming, and only forwardable parameters go upstream.
    params = {k: v for k, v in request.params.items() if k in FORWARDED_PARAMS and k not in fixed}
    params.update({k: chat_request.params[k] for k in fixed[2:] if k in chat_request.params})
    params["model"], params["messages"] = request.model, request.messages
    return replace(chat_request, params=params)


def _after_reply(
    chat_request: ChatRequest,
    reply: Reply,
    writer: TranscriptWriter | None,
    reply_hooks: list[tuple[str, Callable[..., Any]]],
) -> None:
    if writer is not None:
        writer.write(chat_request.params["messages"], reply)
    for spec, hook in reply_hooks:
        try:
            hook(reply)
        except Exception:
            log.exception("reply hook %s failed", spec)
