"""The HTTP app: ``create_app(settings, upstream)`` builds a Flask app serving Vapi.

Data flows one way: auth -> parse -> translate -> (middleware) -> upstream -> normalise ->
frame. Failures before the first byte become an HTTP status with an OpenAI-style body
(:mod:`vapi_bridge.errors`); failures after it end the stream cleanly with a finish reason and
``[DONE]``, because the 200 is already on the wire.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from vapi_bridge import __version__, sse
from vapi_bridge.errors import (
    BridgeError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamStreamBroken,
)
from vapi_bridge.normalise import StreamNormaliser, normalise_completion
from vapi_bridge.reqlog import RequestRecord, safe_id, safe_path
from vapi_bridge.settings import Settings
from vapi_bridge.translate import ChatRequest, translate
from vapi_bridge.upstream import Upstream

log = logging.getLogger("vapi_bridge")

CHAT_PATHS = ("/chat/completions", "/v1/chat/completions", "/chat/completions/chat/completions")

Prepare = Callable[[ChatRequest], ChatRequest]
Reply = dict[str, Any]
OnReply = Callable[[ChatRequest, Reply], None]


def create_app(
    settings: Settings,
    upstream: Upstream,
    *,
    prepare: Prepare | None = None,
    on_reply: OnReply | None = None,
) -> Flask:
    """The bridge's WSGI app. ``prepare`` and ``on_reply`` are the middleware seams."""
    app = Flask("vapi_bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    # Set by the server when shutdown's grace period is over: live streams then end cleanly.
    stopping = threading.Event()
    app.extensions["vapi_bridge.stopping"] = stopping
    model_map = dict(settings.model_map)

    def authorise() -> None:
        if settings.secret is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else header.strip()
        if not token or not hmac.compare_digest(token.encode(), settings.secret.encode()):
            raise Unauthorized(
                "Missing or wrong bridge key.",
                hint="In Vapi, set the Custom LLM credential to the key `vapi-bridge serve` "
                "printed (sent as 'Authorization: Bearer <key>').",
            )

    def read_json() -> Any:
        try:
            return json.loads(request.get_data(cache=False), parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise InvalidRequest(
                "The request body is not valid JSON.",
                hint="Send an OpenAI chat-completions JSON body.",
                code="invalid_json",
            ) from None

    def chat() -> Response:
        record: RequestRecord = g.record
        authorise()
        chat_request = translate(
            read_json(),
            default_model=settings.default_model,
            forced_model=settings.model,
            model_map=model_map,
        )
        record.call_id = safe_id(chat_request.call_id)
        if prepare is not None:
            chat_request = prepare(chat_request)
        record.model = chat_request.model
        record.stream = chat_request.stream
        if not chat_request.stream:
            return complete(chat_request, record)
        return relay(chat_request, record)

    def complete(chat_request: ChatRequest, record: RequestRecord) -> Response:
        body = normalise_completion(upstream.complete(chat_request.params), chat_request.model)
        record.first_token()
        record.usage(body.get("usage"))
        if on_reply is not None:
            on_reply(chat_request, _reply_from_completion(body, record))
        return Response(json.dumps(body), mimetype="application/json")

    def relay(chat_request: ChatRequest, record: RequestRecord) -> Response:
        stream = upstream.open_stream(chat_request.params)
        normaliser = StreamNormaliser(
            model=chat_request.model, forward_usage=chat_request.include_usage
        )
        chunks = iter(stream)
        try:
            first = _first_frame(chunks, normaliser)
        except BaseException:
            stream.close()
            raise
        record.first_token()
        g.deferred_log = True
        finished = threading.Event()

        def finish(never_started: bool = False) -> None:
            # Runs once: from the generator's end, or from the server closing a response whose
            # generator never started (the client left before the first write).
            if finished.is_set():
                return
            finished.set()
            if never_started:
                record.outcome = "client_closed"
            stream.close()
            record.chunks = normaliser.chunks
            record.usage(normaliser.usage)
            record.emit(settings.log_format)
            if on_reply is not None and record.outcome != "client_closed":
                on_reply(chat_request, _reply_from_stream(normaliser, record))

        response = Response(
            _frames(first, chunks, normaliser, record, finish),
            status=200,
            content_type=sse.CONTENT_TYPE,
            headers=sse.HEADERS,
        )
        response.call_on_close(lambda: finish(never_started=True))
        return response

    def _frames(
        first: bytes | None,
        chunks: Iterator[Any],
        normaliser: StreamNormaliser,
        record: RequestRecord,
        finish: Callable[[], None],
    ) -> Iterator[bytes]:
        try:
            if first is not None:
                yield first
            try:
                for raw in chunks:
                    out = normaliser.feed(raw)
                    if out is not None:
                        yield sse.frame(out)
                    if stopping.is_set():
                        record.outcome = "shutdown"
                        break
            except UpstreamStreamBroken as exc:
                record.outcome, record.error = "upstream_error", exc.message
            except Exception as exc:
                log.exception("stream relay failed")
                record.outcome, record.error = "bridge_error", exc.__class__.__name__
            final = normaliser.final_chunk()
            if final is not None:
                yield sse.frame(final)
            yield sse.DONE
        except GeneratorExit:
            record.outcome = "client_closed"
            raise
        finally:
            finish()

    for path in CHAT_PATHS:
        app.add_url_rule(path, f"chat:{path}", chat, methods=["POST"])

    @app.get("/health")
    def health() -> Response:
        body = {"status": "ok", "version": __version__, "demo": settings.demo}
        return Response(json.dumps(body), mimetype="application/json")

    @app.get("/models")
    @app.get("/v1/models")
    def models() -> Response:
        authorise()
        names = [settings.model] if settings.model else [settings.default_model]
        names += [name for name in model_map if name not in names]
        created = int(time.time())
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "vapi-bridge"}
            for n in names
        ]
        return Response(json.dumps({"object": "list", "data": data}), mimetype="application/json")

    @app.before_request
    def start_record() -> None:
        g.record = RequestRecord(method=request.method, path=safe_path(request.path))
        g.deferred_log = False

    @app.after_request
    def finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None and not g.get("deferred_log"):
            record.status = response.status_code
            if response.status_code >= 400:
                record.outcome = "rejected" if response.status_code < 500 else "failed"
            record.emit(settings.log_format)
        elif record is not None:
            record.status = response.status_code
        return response

    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None:
            record.error = f"{exc.code}: {exc.message}"
        response = Response(json.dumps(exc.body()), status=exc.status, mimetype="application/json")
        if exc.retry_after:
            response.headers["Retry-After"] = exc.retry_after
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return bridge_error(_from_http(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return bridge_error(BridgeError("The bridge failed unexpectedly; see its log."))

    return app


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; forwarding them would send SambaNova an invalid body."""
    raise ValueError(f"{name} is not valid JSON")


def _first_frame(chunks: Iterator[Any], normaliser: StreamNormaliser) -> bytes | None:
    """Read until the first chunk worth sending, so early failures can still be a status."""
    for raw in chunks:
        out = normaliser.feed(raw)
        if out is not None:
            return sse.frame(out)
    return None


def _from_http(exc: HTTPException) -> BridgeError:
    code = exc.code or 500
    if code == 404:
        return NotFound(
            f"No route {request.method} {safe_path(request.path)}.",
            hint="POST to <bridge URL>/chat/completions.",
        )
    if code == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {safe_path(request.path)}.")
    if code == 413:
        return PayloadTooLarge(
            "The request body is too large.",
            hint="Shorten the conversation or raise `serve --max-body`.",
        )
    if 400 <= code < 500:
        return InvalidRequest(exc.description or "Bad request.", status=code)
    return BridgeError(exc.description or "Server error.", status=code)


def _reply_from_stream(normaliser: StreamNormaliser, record: RequestRecord) -> Reply:
    return {
        "text": normaliser.text,
        "tool_calls": [normaliser.tool_calls[i] for i in sorted(normaliser.tool_calls)],
        "finish_reason": normaliser.finish_reason,
        "ttft_ms": record.ttft_ms,
        "total_ms": record.total_ms,
        "usage": normaliser.usage,
        "outcome": record.outcome,
    }


def _reply_from_completion(body: dict[str, Any], record: RequestRecord) -> Reply:
    choice = body["choices"][0] if body["choices"] else {}
    message = choice.get("message") or {}
    calls = [
        {"id": c.get("id"), **(c.get("function") or {})}
        for c in message.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return {
        "text": message.get("content") or "",
        "tool_calls": calls,
        "finish_reason": choice.get("finish_reason"),
        "ttft_ms": record.ttft_ms,
        "total_ms": round((time.perf_counter() - record.started) * 1000, 1),
        "usage": body.get("usage"),
        "outcome": "ok",
    }
