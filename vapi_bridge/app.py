"""The HTTP app: ``create_app(settings)`` wires routes, auth and error handlers over a bridge.

The CLI, the ``--workers`` processes and the tests all build the app here. A request flows one
way: auth -> parse -> translate -> middleware -> :class:`~vapi_bridge.turn.Turn` (upstream,
stages, framing). Errors are :class:`BridgeError` types; the handlers below are the one place
they become an HTTP status with an OpenAI-style body.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from vapi_bridge import __version__, relay, sse
from vapi_bridge.attempts import Cooldowns, Policy
from vapi_bridge.auth import Guard, token_endpoint
from vapi_bridge.errors import (
    BridgeError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
)
from vapi_bridge.metrics import OTHER, Metrics
from vapi_bridge.middleware import Middleware, build_middleware, build_prepare
from vapi_bridge.models import reasoning_params
from vapi_bridge.profiles import HEADER as PROFILE_HEADER
from vapi_bridge.profiles import Profiles
from vapi_bridge.reasoning import ReasoningFilter, strip_reasoning
from vapi_bridge.reqlog import RequestRecord, safe_id, safe_path
from vapi_bridge.settings import Settings
from vapi_bridge.speech import SpeechFilter, speakable_completion
from vapi_bridge.stages import StageFactory, Trace
from vapi_bridge.translate import Prepare, translate
from vapi_bridge.turn import BodyFilter, LiveTurns, ParamsPolicy, Turn, TurnContext
from vapi_bridge.upstream import Upstream, open_upstream

log = logging.getLogger("vapi_bridge")

CHAT_PATHS = ("/chat/completions", "/v1/chat/completions", "/chat/completions/chat/completions")
# Load balancers and orchestrators ask these every few seconds: logged only when they fail.
PROBE_PATHS = ("/health", "/ready")
METRICS_PATH = "/metrics"
TOKEN_PATH = "/oauth/token"
# Counted in the metrics like every request, but logged only when they fail.
QUIET_PATHS = (*PROBE_PATHS, METRICS_PATH)
EXTENSION = "vapi_bridge"


@dataclass(frozen=True)
class Route:
    """What a request runs with: the base settings, or a profile's."""

    settings: Settings
    prepare: Prepare | None
    turns: TurnContext

    @property
    def model_map(self) -> dict[str, str]:
        return dict(self.settings.model_map)


class Bridge:
    """What one app holds open: the upstream client, middleware, live turns and profiles."""

    def __init__(self, settings: Settings, upstream: Upstream | None = None) -> None:
        # Built in the order things can fail, and released if a later part fails.
        self.settings = settings
        self.guard = Guard.from_settings(settings)
        self.metrics = Metrics(settings.metrics_dir)
        self.upstream = upstream if upstream is not None else open_upstream(settings)
        try:
            self.middleware: Middleware = build_middleware(settings)
        except BaseException:
            self.upstream.close()
            raise
        self.live = LiveTurns(stall_timeout=settings.stall_timeout)
        self.cooldowns = Cooldowns()
        self.draining = False
        try:
            self.base = self.route(settings, self.middleware.prepare)
            self.profiles = (
                Profiles(settings.profiles, settings, self.route)
                if settings.profiles is not None
                else None
            )
        except BaseException:
            self.close(0)
            raise

    def route(self, settings: Settings, prepare: Prepare | None = None) -> Route:
        """The route for these settings (a profile's prompt and hooks are its own)."""
        if settings is not self.settings:
            prepare = build_prepare(settings)
        turns = TurnContext(
            upstream=self.upstream,
            live=self.live,
            policy=Policy(
                fallbacks=settings.fallback_models,
                attempt_timeout=settings.attempt_timeout,
                turn_timeout=settings.upstream_timeout,
                hedge_after=settings.hedge_after,
                cooldowns=self.cooldowns,
            ),
            apology=None if settings.no_apology else settings.apology,
            stages=stage_factories(settings),
            body_filters=body_filters(settings),
            params_for=params_policy(settings),
            on_reply=self.middleware.on_reply,
            log_format=settings.log_format,
        )
        return Route(settings, prepare, turns)

    def route_for(self, profile: str | None) -> Route:
        """The route a request's profile header asks for (none: the base settings)."""
        if profile is None:
            return self.base
        if self.profiles is None:
            raise InvalidRequest(
                f"This bridge has no profiles, but the request asks for '{profile[:64]}'.",
                hint="Start it with --profiles FILE, or drop the X-Vapi-Bridge-Profile header.",
                code="unknown_profile",
            )
        return self.profiles.get(profile)

    def end_live_turns(self) -> int:
        """Shutdown's grace is over: end every live reply cleanly now; returns how many."""
        return self.live.end_all()

    def close(self, grace: float = 5.0) -> int:
        """Release everything; returns how many after-reply jobs could not run in ``grace``."""
        lost = self.middleware.close(grace)
        self.upstream.close()
        return lost


def stage_factories(settings: Settings) -> list[StageFactory]:
    """The stages between Normalise and Collect: reasoning is never spoken, and markup only
    when the speech filter is off. Reasoning goes first so the speech filter sees only speech."""
    stages: list[StageFactory] = [ReasoningFilter]
    if settings.speech_filter:
        stages.append(SpeechFilter)
    return stages


def body_filters(settings: Settings) -> list[BodyFilter]:
    """The same for a whole (non-streamed) reply."""
    filters: list[BodyFilter] = [_without_reasoning]
    if settings.speech_filter:
        filters.append(lambda body, trace: speakable_completion(body, trace.removed))
    return filters


def _without_reasoning(body: dict[str, Any], trace: Trace) -> dict[str, Any]:
    clean, reasoning = strip_reasoning(body)
    if reasoning:
        trace.reasoning.append(reasoning)
    return clean  # type: ignore[no-any-return]


def params_policy(settings: Settings) -> ParamsPolicy:
    """What the bridge adds to a request for the model it goes to: the reasoning controls."""
    policy, budget = settings.reasoning.value, settings.reasoning_budget

    def params_for(params: dict[str, Any]) -> dict[str, Any]:
        extra = reasoning_params(params["model"], policy, params.get("max_tokens"), budget, params)
        return {**params, **extra} if extra else params

    return params_for


def bridge_of(app: Flask) -> Bridge:
    bridge: Bridge = app.extensions[EXTENSION]
    return bridge


def create_app(settings: Settings, *, upstream: Upstream | None = None) -> Flask:
    """The bridge's WSGI app; ``upstream`` replaces the one the settings would open."""
    bridge = Bridge(settings, upstream)
    app = Flask("vapi_bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.extensions[EXTENSION] = bridge
    for path in CHAT_PATHS:
        app.add_url_rule(path, f"chat:{path}", chat, methods=["POST"])
    register_service_routes(app, bridge)
    register_request_log(app, settings, bridge.metrics)
    register_error_handlers(app)
    return app


def chat() -> Response:
    """One turn: auth, profile, translate, middleware, then the turn answers."""
    bridge = bridge_of(current_app)
    bridge.guard.chat(request.headers.get("Authorization", ""))
    record: RequestRecord = g.record
    profile = request.headers.get(PROFILE_HEADER)
    record.profile = safe_id(profile)
    route = bridge.route_for(profile)
    chat_request = translate(
        read_json(),
        default_model=route.settings.default_model,
        forced_model=route.settings.model,
        model_map=route.model_map,
    )
    record.call_id = safe_id(chat_request.call_id)
    if route.prepare is not None:
        chat_request = route.prepare(chat_request)
    record.model, record.stream = chat_request.model, chat_request.stream
    record.requested_model = chat_request.model
    turn = Turn(chat_request, record, route.turns)
    if not chat_request.stream:
        response = json_response(turn.complete())
        _name_models(response, turn, chat_request.model)
        return response
    g.deferred_log = True
    frames = turn.start()
    try:
        body = relay.body(frames, turn, request.environ)
        response = Response(body, content_type=sse.CONTENT_TYPE, headers=sse.HEADERS)
        _name_models(response, turn, chat_request.model)
    except BaseException:
        turn.close()
        raise
    response.call_on_close(turn.close)
    bridge.metrics.stream_started()
    response.call_on_close(bridge.metrics.stream_ended)
    return response


def _name_models(response: Response, turn: Turn, asked: str) -> None:
    """Which model answered, and when it was a fallback, which one was asked: for
    `vapi-bridge test --model` and curl. No model answered an apology: the outcome says so."""
    if turn.record.outcome != "ok":
        response.headers[sse.OUTCOME_HEADER] = turn.record.outcome
    if turn.answered is not None:
        response.headers[sse.MODEL_HEADER] = turn.answered
        if turn.answered != asked:
            response.headers[sse.FALLBACK_HEADER] = asked


def register_service_routes(app: Flask, bridge: Bridge) -> None:
    """Health and readiness (no key), metrics, the OAuth2 token endpoint, the model list."""
    settings = bridge.settings

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok", "version": __version__, "demo": settings.demo})

    @app.get("/ready")
    def ready() -> Response:
        if bridge.draining or bridge.live.stopping.is_set():
            return json_response({"status": "draining"}, status=503)
        return json_response({"status": "ready"})

    @app.get(METRICS_PATH)
    def scrape() -> Response:
        bridge.guard.metrics(request.headers.get("Authorization", ""))
        body, content_type = bridge.metrics.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    if bridge.guard.oauth is not None:
        client = bridge.guard.oauth

        @app.post(TOKEN_PATH)
        def oauth_token() -> Response:
            answer = token_endpoint(
                client,
                authorization=request.headers.get("Authorization", ""),
                content_type=request.headers.get("Content-Type", ""),
                body=request.get_data(cache=False),
            )
            if answer.status != 200:
                g.record.error = answer.body["error"]
            response = json_response(answer.body, status=answer.status)
            response.headers.update(answer.headers)
            return response

    @app.get("/models")
    @app.get("/v1/models")
    def models() -> Response:
        bridge.guard.chat(request.headers.get("Authorization", ""))
        names = [settings.model or settings.default_model]
        names += [name for name in dict(settings.model_map) if name not in names]
        created = int(time.time())
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "vapi-bridge"}
            for n in names
        ]
        return json_response({"object": "list", "data": data})


def read_json() -> Any:
    data = request.get_data(cache=False)
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        limit = request.max_content_length
        if limit is not None and len(data) >= limit:
            # A body with no declared length (chunked) is read up to the limit, no further:
            # one that stops there and does not parse went on past it.
            raise _too_large() from None
        raise InvalidRequest(
            "The request body is not valid JSON.",
            hint="Send an OpenAI chat-completions JSON body.",
            code="invalid_json",
        ) from None


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        "The request body is too large.",
        hint="Shorten the conversation or raise `serve --max-body`.",
    )


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def register_request_log(app: Flask, settings: Settings, metrics: Metrics) -> None:
    """One log line per request (a stream logs its own line when it ends), and every finished
    record counted in the metrics under its route pattern: bounded, never the raw path."""

    @app.before_request
    def start_record() -> None:
        record = RequestRecord(method=request.method, path=safe_path(request.path))
        route = request.url_rule.rule if request.url_rule is not None else OTHER
        record.observer = partial(metrics.observe, route=route)
        g.record = record
        g.quiet = request.path in QUIET_PATHS

    @app.after_request
    def finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is None:
            return response
        record.status = response.status_code
        if response.status_code >= 400:
            record.outcome = "rejected" if response.status_code < 500 else "failed"
            record.emit(settings.log_format)
        elif g.get("deferred_log"):
            pass  # the stream emits its record when it ends
        elif g.get("quiet"):
            record.finish()
        else:
            record.emit(settings.log_format)
        return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None:
            record.error = f"{exc.code}: {exc.message}"
            if isinstance(exc, UpstreamError) and not record.upstream_failures:
                record.upstream_failures.append(exc.code)
        response = json_response(exc.body(), status=exc.status)
        if exc.retry_after:
            response.headers["Retry-After"] = exc.retry_after
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="vapi-bridge"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return bridge_error(_from_http(exc))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return bridge_error(BridgeError("The bridge failed unexpectedly; see its log."))


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; forwarding them would send SambaNova an invalid body."""
    raise ValueError(f"{name} is not valid JSON")


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
        return _too_large()
    if 400 <= code < 500:
        return InvalidRequest(exc.description or "Bad request.", status=code)
    return BridgeError(exc.description or "Server error.", status=code)
