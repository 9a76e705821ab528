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
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import h11
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

KEEPALIVE = 16


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
        # httpcore (1.0.x) walks every pooled connection for each idle one on every request
        # and response close, and keeps idle connections only while the pool holds at most
        # KEEPALIVE in all: a small pool keeps the upstream connection (and its TLS handshake)
        # across turns at everyday concurrency without that walk growing with the square of
        # the streams at a hundred (1.5 ms of CPU per request there with 200).
        http_client = httpx.Client(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=KEEPALIVE),
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
    """Reads SambaNova's SSE body and yields each event's JSON; closing drops the connection.

    Per chunk the read side is one ``recv``, one HTTP/1.1 parse step, one split of the bytes
    into events (:class:`sse.ByteParser`) and one ``json`` parse. On the usual transport
    (HTTP/1.1 over a plain or TLS socket) the body is read straight from httpcore's own
    ``h11`` connection, skipping the seven generators httpx stacks on top of it; the
    connection's state stays httpcore's, so it returns to the pool as usual. Any other
    transport is read through httpx's public iterators.
    """

    def __init__(self, context: Any, response: Any) -> None:
        self._context = context
        self._response = response
        self.rate = RateLimit.from_headers(response.headers)
        self._wire = _Wire.of(response.http_response)
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        parser = sse.ByteParser()
        blocks = self._wire.blocks() if self._wire is not None else self._httpx_blocks()
        try:
            while True:
                block = next(blocks, None)
                for name, data in parser.feed(block) if block is not None else parser.end():
                    if data.startswith(b"[DONE]"):
                        self._done = True
                        return
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        text = data.decode("utf-8", "replace")
                    try:
                        parsed = json.loads(text)
                    except ValueError:
                        log.warning("SambaNova sent a data line that is not JSON; skipped it")
                        continue
                    if name == b"error":
                        raise InBandError(
                            f"SambaNova reported an error in its stream: {text[:300]}"
                        )
                    yield parsed
                if block is None:
                    return
        except (httpx.TimeoutException, TimeoutError):
            raise UpstreamStreamBroken(
                "SambaNova stopped sending data mid-stream.", upstream_status=504
            ) from None
        except (httpx.HTTPError, OSError, h11.ProtocolError):
            raise UpstreamStreamBroken("The connection to SambaNova dropped mid-stream.") from None

    def _httpx_blocks(self) -> Iterator[bytes]:
        """The body's bytes through httpx (decompressed when the upstream compressed them)."""
        http = self._response.http_response
        encoding = http.headers.get("content-encoding", "identity").strip().lower()
        return iter(http.iter_raw() if encoding == "identity" else http.iter_bytes())

    def close(self) -> None:
        """Release the response; after a whole reply its connection goes back to the pool."""
        if self._done and self._wire is not None:
            self._wire.finish()
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


class _Wire:
    """The ``h11`` connection and socket under an httpx response on httpcore's sync stack."""

    READ = 64 * 1024
    # After [DONE] the body's last bytes are on their way; waiting this long for them keeps the
    # connection (and, over TLS, its handshake) for the next turn. Vapi already has [DONE].
    FINISH_WAIT = 0.05

    def __init__(
        self, state: h11.Connection, sock: socket.socket, timeout: float | None, chunked: bool
    ) -> None:
        self.state = state
        self.sock = sock
        self.timeout = timeout
        self.chunked = chunked

    @classmethod
    def of(cls, response: httpx.Response) -> _Wire | None:
        """The wire under ``response``, or ``None`` for any other transport (HTTP/2, a proxy
        tunnel, a mock, compressed content): those are read through httpx's iterators."""
        from httpcore._backends.sync import SyncStream
        from httpcore._sync.http11 import HTTP11ConnectionByteStream

        if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
            return None
        stream: Any = response.stream
        try:
            stream = stream._stream._httpcore_stream._stream
            if type(stream) is not HTTP11ConnectionByteStream:
                return None
            connection = stream._connection
            state, network = connection._h11_state, connection._network_stream
            timeout = response.request.extensions["timeout"]["read"]
        except (AttributeError, KeyError, TypeError):
            return None
        if type(network) is not SyncStream or state.their_state is not h11.SEND_BODY:
            return None
        chunked = "chunked" in response.headers.get("transfer-encoding", "").lower()
        return cls(state, network._sock, timeout, chunked)

    def blocks(self) -> Iterator[bytes]:
        """The body's data as it arrives, as httpcore would read it (one read timeout).

        In a chunked body, data that leaves h11's buffer empty always needs more bytes to
        go on (the chunk's CRLF at least), so the read comes without asking h11 first.
        """
        state, recv, size = self.state, self.sock.recv, self.READ
        chunked = self.chunked
        self.sock.settimeout(self.timeout)
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                state.receive_data(recv(size))
            elif type(event) is h11.Data:
                yield bytes(event.data)
                if chunked and not state.trailing_data[0]:
                    state.receive_data(recv(size))
            else:
                return

    def finish(self) -> None:
        """Read the body's end if it comes within :attr:`FINISH_WAIT`; else leave it (the
        connection is then closed, not reused)."""
        deadline = time.monotonic() + self.FINISH_WAIT
        try:
            while True:
                event = self.state.next_event()
                if event is h11.NEED_DATA:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.sock.settimeout(left)
                    self.state.receive_data(self.sock.recv(self.READ))
                elif type(event) is not h11.Data:
                    return
        except (OSError, h11.ProtocolError):
            return


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

    model = settings.model or settings.default_model

    def check() -> None:
        try:
            available = verify_key(settings.api_key or "", settings.base_url)
        except UpstreamError as exc:
            log.warning("Could not check the model list: %s", exc.message)
            return
        if model not in available:
            log.warning(
                "SambaNova does not list model '%s' for this key; requests for it will fail. "
                "`vapi-bridge models` lists the ones it serves.",
                model,
            )

    if not settings.demo:
        threading.Thread(target=check, name="vapi-bridge-model-check", daemon=True).start()
