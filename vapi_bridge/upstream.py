"""The SambaNova side: one SDK client per server, voice-sized timeouts, bounded retries.

The SDK's defaults (600 s timeout, two retries with multi-second backoff) would leave a caller
in silence, so the client is built with ``max_retries=0`` and this module retries itself: only
before the first byte, and only while the first-token deadline leaves room. Streams are read
as raw SSE lines (``with_streaming_response``), so each chunk is parsed once with ``json``
instead of being validated into a model and serialised again.

The first-token deadline and the between-chunk stall limit are enforced by the turn's
watchdog, which calls :meth:`ChunkStream.abort`; the read timeout here is only a backstop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from vapi_bridge import sse
from vapi_bridge.errors import (
    ConfigError,
    InBandError,
    UpstreamError,
    UpstreamStreamBroken,
    upstream_status_message,
)
from vapi_bridge.ratelimit import RateLimit
from vapi_bridge.settings import DEFAULT_BASE_URL

if TYPE_CHECKING:
    from sambanova import APIStatusError, SambaNova

    from vapi_bridge.settings import Settings

log = logging.getLogger("vapi_bridge")


class ChunkStream(Protocol):
    """An open upstream stream: parsed chunk objects, closable at any point."""

    rate: RateLimit | None

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """From any thread: make a read that is waiting for data return at once."""


class Upstream(Protocol):
    """What a turn needs from a model: one attempt at a stream or a whole completion.

    Each call is a single attempt with ``timeout`` seconds to get an answer started; whether
    to retry, fall back to another model or give up is the turn's attempt policy.
    """

    def open_stream(self, params: dict[str, Any], *, timeout: float) -> ChunkStream: ...

    def complete(self, params: dict[str, Any], *, timeout: float) -> Any: ...

    def close(self) -> None: ...


class SambaNovaUpstream:
    """SambaNova Cloud (or any OpenAI-compatible base URL) through the ``sambanova`` SDK."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        stall_timeout: float = 10.0,
        connect_timeout: float = 3.0,
    ) -> None:
        from sambanova import SambaNova

        self.base_url = base_url
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        http_client = httpx.Client(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=self._timeout(15.0),
        )
        # x_api_key is passed explicitly: otherwise the SDK sends SAMBANOVA_API_KEY from the
        # environment as x-api-key even when another key was configured. Retries are the
        # turn's (max_retries=0): the SDK's would sleep seconds with the caller in silence.
        self._client: SambaNova = SambaNova(
            api_key=api_key,
            x_api_key=api_key,
            base_url=base_url,
            max_retries=0,
            http_client=http_client,
        )
        self._create = self._client.chat.completions.with_streaming_response.create

    def open_stream(self, params: dict[str, Any], *, timeout: float) -> ChunkStream:
        """Start a streamed completion; raises :class:`UpstreamError` before the first byte."""
        try:
            context = self._create(**_sdk_args(params), timeout=self._timeout(timeout))
            response = context.__enter__()
        except Exception as exc:
            raise self._map(exc, params, timeout) from None
        # The headers are in; the body's reads get a backstop timeout (httpcore reads this
        # value when the body starts), the turn's watchdog enforces the real limits.
        backstop = max(timeout, self.stall_timeout) + 1
        response.http_response.request.extensions["timeout"]["read"] = backstop
        return SSEStream(context, response)

    def complete(self, params: dict[str, Any], *, timeout: float) -> Any:
        """A whole (non-streamed) completion as a JSON object."""
        try:
            with self._create(**_sdk_args(params), timeout=self._timeout(timeout)) as response:
                body = response.read()
        except Exception as exc:
            raise self._map(exc, params, timeout) from None
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamError(
                "SambaNova answered with a body that is not JSON.",
                hint="Check --base-url: it must be an OpenAI-compatible API.",
                code="upstream_bad_response",
            ) from None

    def list_models(self) -> list[str]:
        """Model ids the key can use; also the cheapest way to verify a key."""
        try:
            return [model.id for model in self._client.models.list(timeout=10.0).data]
        except Exception as exc:
            raise self._map(exc, {"model": ""}, 10.0) from None

    def close(self) -> None:
        self._client.close()

    def _timeout(self, remaining: float) -> httpx.Timeout:
        remaining = max(remaining, 0.001)
        return httpx.Timeout(remaining, connect=min(self.connect_timeout, remaining))

    def _map(self, exc: Exception, params: dict[str, Any], timeout: float) -> UpstreamError:
        """The one translation from SDK/network exceptions to :class:`UpstreamError`."""
        from sambanova import APIConnectionError, APIStatusError, APITimeoutError

        if isinstance(exc, APIStatusError):
            return _status_error(exc, str(params.get("model", "")))
        if isinstance(exc, APITimeoutError | httpx.TimeoutException):
            return UpstreamError(
                f"SambaNova did not start answering within {timeout:g}s.",
                hint="Retry; raise --upstream-timeout (keep it under Vapi's 20 s) if it persists.",
                upstream_status=504,
                code="upstream_timeout",
            )
        if isinstance(exc, APIConnectionError | httpx.HTTPError):
            return UpstreamError(
                f"Could not reach SambaNova at {self.base_url}.",
                hint="Check the network, a proxy or firewall, and --base-url.",
            )
        raise exc


def _sdk_args(params: dict[str, Any]) -> dict[str, Any]:
    """The SDK call for already-validated parameters, without its per-request transform.

    ``create()`` walks ``messages`` and ``tools`` recursively against its typed schema (about
    0.4 ms for a Vapi request, measured); ``extra_body`` is merged into the JSON body as is, so
    the bytes sent are identical and that walk only sees an empty list.
    """
    rest = {k: v for k, v in params.items() if k not in ("model", "stream")}
    return {
        "model": params["model"],
        "messages": [],
        "stream": params["stream"],
        "extra_body": rest,
    }


def _status_error(exc: APIStatusError, model: str) -> UpstreamError:
    body = exc.body
    detail = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            detail = str(inner.get("message") or inner.get("code") or "")
        elif isinstance(inner, str):
            detail = inner
    if exc.status_code in (401, 402):
        detail = ""
    message, hint = upstream_status_message(exc.status_code, model, detail[:300])
    return UpstreamError(
        message,
        hint=hint,
        upstream_status=exc.status_code,
        retry_after=exc.response.headers.get("retry-after"),
        rate=RateLimit.from_headers(exc.response.headers),
    )


class SSEStream:
    """Reads SambaNova's SSE lines and yields each event's JSON; closing drops the connection."""

    def __init__(self, context: Any, response: Any) -> None:
        self._context = context
        self._response = response
        self.rate = RateLimit.from_headers(response.headers)

    def __iter__(self) -> Iterator[Any]:
        try:
            for event in sse.events(self._response.iter_lines()):
                if event.done:
                    return
                try:
                    parsed = json.loads(event.data)
                except ValueError:
                    log.warning("SambaNova sent a data line that is not JSON; skipped it")
                    continue
                if event.event == "error":
                    raise InBandError(
                        f"SambaNova reported an error in its stream: {event.data[:300]}"
                    )
                yield parsed
        except httpx.TimeoutException:
            raise UpstreamStreamBroken(
                "SambaNova stopped sending data mid-stream.", upstream_status=504
            ) from None
        except httpx.HTTPError:
            raise UpstreamStreamBroken("The connection to SambaNova dropped mid-stream.") from None

    def close(self) -> None:
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        """Shut the socket down: unlike close(), that wakes a read blocked in another thread."""
        stream = self._response.http_response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            self.close()
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def open_upstream(settings: Settings) -> Upstream:
    """The upstream these settings ask for: SambaNova, or the offline demo model."""
    if settings.demo:
        from vapi_bridge.demo import DemoUpstream

        return DemoUpstream()
    if not settings.api_key:
        raise ConfigError(
            "No SambaNova API key.",
            hint="Run `vapi-bridge configure-key`, set SAMBANOVA_API_KEY, "
            "or try the offline model with `vapi-bridge serve --demo`.",
        )
    return SambaNovaUpstream(
        api_key=settings.api_key, base_url=settings.base_url, stall_timeout=settings.stall_timeout
    )


def verify_key(api_key: str, base_url: str) -> list[str]:
    """Check a SambaNova key against the models endpoint; returns the model ids."""
    upstream = SambaNovaUpstream(api_key=api_key, base_url=base_url)
    try:
        return upstream.list_models()
    finally:
        upstream.close()


def check_model_later(settings: Settings) -> None:
    """Warn in the log, without delaying start-up, when SambaNova does not list the model
    ``serve`` forces or defaults to (or rejects the key)."""
    import threading

    models = [settings.model or settings.default_model, *settings.fallback_models]

    def check() -> None:
        try:
            available = verify_key(settings.api_key or "", settings.base_url)
        except UpstreamError as exc:
            log.warning("Could not check the model list: %s", exc.message)
            return
        for model in dict.fromkeys(models):
            if model not in available:
                log.warning(
                    "SambaNova does not list model '%s' for this key; requests for it will "
                    "fail. `vapi-bridge models` lists the ones it serves.",
                    model,
                )

    if not settings.demo:
        threading.Thread(target=check, name="vapi-bridge-model-check", daemon=True).start()
