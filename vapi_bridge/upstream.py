"""The SambaNova side: SDK clients per server, voice-sized timeouts, bounded retries.

The SDK's defaults (600 s timeout, two retries with multi-second backoff) would leave a caller
in silence, so the clients are built with ``max_retries=0`` and the turn retries itself: only
before the first byte, and only while the first-token deadline leaves room. Requests go
through the SDK's untyped ``post`` (its authentication, headers and typed errors) and streams
are read as raw SSE bytes, so each chunk is parsed once with ``json`` instead of being
validated into a model and serialised again.

The first-token deadline and the between-chunk stall limit are enforced by the turn's
watchdog, which calls :meth:`ChunkStream.abort`; the read timeout here is only a backstop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

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
CHAT_PATH = "/chat/completions"


class Blocked:
    """Yielded by a stream reading without waiting, in place of a chunk: nothing can be read
    until ``sock`` is ready for ``events`` (``selectors.EVENT_READ``, or ``EVENT_WRITE`` when
    TLS must write before it can read). The relay loop waits for that, then iterates again."""

    __slots__ = ("events", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.events = selectors.EVENT_READ


class ChunkStream(Protocol):
    """An open upstream stream: parsed chunk objects, closable at any point."""

    rate: RateLimit | None

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """From any thread: make a read that is waiting for data return at once."""

    def without_waiting(self) -> bool:
        """From now on, yield a :class:`Blocked` where a read would wait (so that one thread
        can relay many streams); ``False`` when this stream cannot, and then nothing changed."""


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
        self.base_url = base_url
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        self._pools = _Pools(api_key, base_url, self._timeout(15.0))

    def open_stream(self, params: dict[str, Any], *, timeout: float) -> ChunkStream:
        """Start a streamed completion; raises :class:`UpstreamError` before the first byte."""
        pool = self._pools.take()
        try:
            response = pool.post(params, self._timeout(timeout), stream=True)
        except Exception as exc:
            pool.give_back()
            raise self._map(exc, params, timeout) from None
        # The headers are in; the body's reads get a backstop timeout (httpcore reads this
        # value when the body starts), the turn's watchdog enforces the real limits.
        backstop = max(timeout, self.stall_timeout) + 1
        response.request.extensions["timeout"]["read"] = backstop
        return SSEStream(response, pool.give_back)

    def complete(self, params: dict[str, Any], *, timeout: float) -> Any:
        """A whole (non-streamed) completion as a JSON object."""
        pool = self._pools.take()
        try:
            body = pool.post(params, self._timeout(timeout), stream=False).content
        except Exception as exc:
            raise self._map(exc, params, timeout) from None
        finally:
            pool.give_back()
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
            return [model.id for model in self._pools.first.models.list(timeout=10.0).data]
        except Exception as exc:
            raise self._map(exc, {"model": ""}, 10.0) from None

    def close(self) -> None:
        self._pools.close()

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


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: SambaNova's API has no use for cookies, and httpx
    builds urllib's request and response wrappers on every response to look for them (about
    0.1 ms of CPU per request)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Nothing to keep."""


class _HTTPClient(httpx.Client):
    """httpx's client, without a cookie jar."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        """Ignored."""


_NO_COOKIES = _NoCookies()


class _Pool:
    """One SDK client and its connection pool, with the requests it is carrying now."""

    def __init__(self, client: SambaNova, pools: _Pools) -> None:
        self.client = client
        self.busy = 0
        self.idle_since = time.monotonic()
        self._pools = pools
        # Absolute and parsed once: the SDK and httpx each parse and join a relative path
        # with the base URL on every request (about 5% of a request's CPU, profiled).
        self._url = client.base_url.join(CHAT_PATH.lstrip("/"))

    def post(self, params: dict[str, Any], timeout: httpx.Timeout, *, stream: bool) -> Any:
        """The chat completion request for already-validated ``params``, answered with the
        raw HTTP response (its body still unread when ``stream``); an HTTP error status
        raises the SDK's typed error, as ``chat.completions.create()`` does.

        This is the SDK's documented call for a request it need not type: ``create()`` would
        walk every parameter against its typed schema and wrap the response in two more
        objects (about 0.2 ms of CPU per request, measured), only for the bridge to take the
        bytes back out.
        """
        return self.client.post(
            cast(str, self._url),
            cast_to=httpx.Response,
            body=params,
            options={"timeout": timeout},
            stream=stream,
        )

    def give_back(self) -> None:
        """One request on this pool ended (its response closed)."""
        self._pools.give_back(self)


class _Pools:
    """SDK clients, each with its own connection pool, filled one after another.

    httpcore (1.0.x) walks every connection of a pool on each request and each response
    close, and keeps idle connections only while the pool holds at most ``KEEPALIVE`` in
    all. One pool carrying a hundred streams spent about 1 ms of CPU per request in those
    walks. A pool takes up to ``PER_POOL`` requests at once and the next one, opened when
    first needed, the overflow: at everyday concurrency that is one pool, whose connections
    (and TLS handshakes) serve turn after turn.
    """

    PER_POOL = 8
    # As long as httpx keeps an idle connection (its default keep-alive expiry).
    IDLE_CLOSE = 5.0

    def __init__(self, api_key: str, base_url: str, timeout: httpx.Timeout) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        # One TLS context for every pool (loading the CA bundle takes about 25 ms of CPU),
        # built as httpx builds its own (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
        self._tls = httpx.create_ssl_context()
        self._lock = threading.Lock()
        self._pools: list[_Pool] = [self._new()]

    @property
    def first(self) -> SambaNova:
        return self._pools[0].client

    def _new(self) -> _Pool:
        from sambanova import SambaNova

        http_client = _HTTPClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=KEEPALIVE),
            timeout=self._timeout,
            verify=self._tls,
        )
        # x_api_key is passed explicitly: otherwise the SDK sends SAMBANOVA_API_KEY from the
        # environment as x-api-key even when another key was configured. Retries are the
        # turn's (max_retries=0): the SDK's would sleep seconds with the caller in silence.
        client = SambaNova(
            api_key=self._api_key,
            x_api_key=self._api_key,
            base_url=self._base_url,
            max_retries=0,
            http_client=http_client,
        )
        return _Pool(client, self)

    def take(self) -> _Pool:
        """The first pool with room (a new one when none has), counted busy once more."""
        with self._lock:
            for pool in self._pools:
                if pool.busy < self.PER_POOL:
                    break
            else:
                pool = self._new()
                self._pools.append(pool)
            pool.busy += 1
            return pool

    def give_back(self, pool: _Pool) -> None:
        """Count a request as ended, and close the overflow pools (last first) idle for
        :attr:`IDLE_CLOSE`: httpcore expires idle connections only in a pool that is used,
        so an overflow pool nothing uses after a burst would keep its sockets open (half
        closed by SambaNova) until the next one. By then httpx would not reuse them anyway."""
        now = time.monotonic()
        idle: list[_Pool] = []
        with self._lock:
            pool.busy -= 1
            if pool.busy == 0:
                pool.idle_since = now
            pools = self._pools
            while len(pools) > 1 and pools[-1].busy == 0:
                if now - pools[-1].idle_since < self.IDLE_CLOSE:
                    break
                idle.append(pools.pop())
        for closing in idle:
            closing.client.close()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.client.close()


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
    """Reads SambaNova's SSE body and yields each event's JSON; closing releases the
    connection (back to the pool after a whole reply, else closed).

    Per chunk the read side is one ``recv``, one HTTP/1.1 parse step, one split of the bytes
    into events (:class:`sse.ByteParser`) and one ``json`` parse. On the usual transport
    (HTTP/1.1 over a plain or TLS socket) the body is read straight from httpcore's own
    ``h11`` connection, skipping the seven generators httpx stacks on top of it; the
    connection's state stays httpcore's, so it returns to the pool as usual. Any other
    transport is read through httpx's public iterators.
    """

    def __init__(
        self, response: httpx.Response, released: Callable[[], None] | None = None
    ) -> None:
        self._response = response
        self._released = released
        self.rate = RateLimit.from_headers(response.headers)
        self._wire = _Wire.of(response)
        self._done = False
        # close() and abort() come from different threads (the turn, its watchdog): once
        # closed, the connection may be another turn's, and abort must leave it alone.
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        parser = sse.ByteParser()
        blocks = self._wire.blocks() if self._wire is not None else self._httpx_blocks()
        try:
            while True:
                block = next(blocks, None)
                if block.__class__ is Blocked:
                    yield block
                    continue
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

    def without_waiting(self) -> bool:
        if self._wire is None:
            return False
        self._wire.without_waiting()
        return True

    def _httpx_blocks(self) -> Iterator[bytes]:
        """The body's bytes through httpx (decompressed when the upstream compressed them)."""
        http = self._response
        return iter(http.iter_raw() if _uncompressed(http) else http.iter_bytes())

    def close(self) -> None:
        """Release the response; after a whole reply its connection goes back to the pool."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._done and self._wire is not None:
                self._wire.finish()
            try:
                self._response.close()
            finally:
                if self._released is not None:
                    self._released()
            # httpx's response and its body stream refer to each other: without this, the
            # response (request, headers, SDK wrappers) waits for the GC's next full pass.
            self._response.stream = _CLOSED

    def abort(self) -> None:
        """Shut the socket down: unlike close(), that wakes a read blocked in another thread.
        A stream already closed is left alone: its connection may be serving another turn."""
        with self._lock:
            if self._closed:
                return
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return
        self.close()


_CLOSED = httpx.ByteStream(b"")


def _uncompressed(response: httpx.Response) -> bool:
    """The body is sent as is (its raw bytes are the events)."""
    encoding = str(response.headers.get("content-encoding", "identity"))
    return encoding.strip().lower() == "identity"


class _Wire:
    """The socket under an httpx response on httpcore's sync stack, and its ``h11`` state.

    A chunked body (what an SSE stream is) is decoded here, a few slices per read; ``h11``
    sees the bytes only where it needs them to stay in step with the connection: what it
    already held with the headers, up to the first chunk boundary, and the body's end. The
    connection's state is httpcore's throughout, so a whole body returns it to the pool.
    Any other body is read through ``h11`` event by event, as httpcore would.
    """

    READ = 64 * 1024
    # After [DONE] the body's last bytes are on their way; waiting this long for them keeps the
    # connection (and, over TLS, its handshake) for the next turn. Vapi already has [DONE].
    FINISH_WAIT = 0.05
    # A body that never reaches a chunk boundary at the end of a read is not worth keeping
    # the connection for.
    CATCH_UP_MAX = 1 << 20

    def __init__(
        self, state: h11.Connection, sock: socket.socket, timeout: float | None, chunked: bool
    ) -> None:
        self.state = state
        self.sock = sock
        self.timeout = timeout
        self.chunked = chunked
        self.deadline = math.inf
        self._blocks: Iterator[Any] | None = None
        # Set while reading without waiting: yielded when the socket has nothing to read.
        self.blocked: Blocked | None = None
        self._read_since_wait = False
        self._pending: Callable[[], int] | None = getattr(sock, "pending", None)

    @classmethod
    def of(cls, response: httpx.Response) -> _Wire | None:
        """The wire under ``response``, or ``None`` for any other transport (HTTP/2, a proxy
        tunnel, a mock, compressed content): those are read through httpx's iterators."""
        try:  # httpcore's own modules: another httpcore may lay them out otherwise
            from httpcore._backends.sync import SyncStream
            from httpcore._sync.http11 import HTTP11ConnectionByteStream
        except ImportError:
            return None
        if not _uncompressed(response):
            return None
        stream: Any = response.stream
        try:
            stream = stream._stream._httpcore_stream._stream
            if type(stream) is not HTTP11ConnectionByteStream:
                return None
            connection = stream._connection
            state, network = connection._h11_state, connection._network_stream
            timeout = response.request.extensions["timeout"]["read"]
            if type(network) is not SyncStream or state.their_state is not h11.SEND_BODY:
                return None
            sock = network._sock
        except (AttributeError, KeyError, TypeError, RuntimeError):
            return None
        chunked = response.headers.get("transfer-encoding", "").strip().lower() == "chunked"
        return cls(state, sock, timeout, chunked)

    def blocks(self) -> Iterator[Any]:
        """The body's data as it arrives (one read timeout for the whole body); a
        :class:`Blocked` where a read would wait, once :meth:`without_waiting` was called."""
        self.sock.settimeout(self.timeout)
        self._blocks = self._chunked() if self.chunked else self._events()
        return self._blocks

    def without_waiting(self) -> None:
        """Reads from now on never wait: :meth:`blocks` yields :attr:`blocked` instead."""
        self.sock.setblocking(False)
        self.blocked = Blocked(self.sock)
        self._read_since_wait = False

    def finish(self) -> None:
        """Read the body's end if it comes within :attr:`FINISH_WAIT`; else leave it (the
        connection is then closed, not reused)."""
        if self._blocks is None:
            return
        self.deadline = time.monotonic() + self.FINISH_WAIT
        self.blocked = None
        try:
            self.sock.settimeout(self.FINISH_WAIT)
            for _ in self._blocks:
                pass
        except (OSError, h11.ProtocolError):
            return

    def _recv(self) -> bytes | None:
        """One read from the socket (a deadline only while finishing); ``None`` when reading
        without waiting and there is nothing to read.

        Without waiting, one read is made per wake of the relay loop: the next one is left
        to the loop's next look at the socket, which serves every ready stream at once, unless
        TLS holds bytes already decrypted (the socket would not show them as readable)."""
        if time.monotonic() > self.deadline:
            raise TimeoutError
        blocked = self.blocked
        if blocked is None:
            return self.sock.recv(self.READ)
        if self._read_since_wait and not (self._pending is not None and self._pending()):
            self._read_since_wait = False
            blocked.events = selectors.EVENT_READ
            return None
        try:
            block = self.sock.recv(self.READ)
        except (BlockingIOError, ssl.SSLWantReadError):
            self._read_since_wait = False
            blocked.events = selectors.EVENT_READ
            return None
        except ssl.SSLWantWriteError:
            self._read_since_wait = False
            blocked.events = selectors.EVENT_WRITE
            return None
        self._read_since_wait = True
        return block

    def _events(self) -> Iterator[Any]:
        """A body that is not chunked, read through ``h11`` event by event."""
        state = self.state
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                block = self._recv()
                while block is None:
                    yield self.blocked
                    block = self._recv()
                state.receive_data(block)
            elif type(event) is h11.Data:
                yield bytes(event.data)
            else:
                return

    def _chunked(self) -> Iterator[Any]:
        """A chunked body's data, decoded here; ``h11`` kept in step at its ends."""
        state, decoder = self.state, _Chunks()
        held, _ = state.trailing_data  # body bytes that came with the headers: h11 has them
        data = decoder.feed(held)
        # h11 is fed what completes the chunk it holds part of, if any; after that a last
        # chunk of its own stands for the rest of the body (h11 needs only the framing).
        catch_up: bytearray | None = None if decoder.at_boundary else bytearray()
        has_end = decoder.done
        kept = True  # False once h11 cannot be brought in step: the connection is not reused
        while True:
            if data:
                yield data
            if decoder.done:
                break
            block = self._recv()
            while block is None:
                yield self.blocked
                block = self._recv()
            if not block:
                raise h11.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    "(incomplete chunked read)"
                )
            data = decoder.feed(block)
            if catch_up is not None:
                catch_up += block
                if decoder.done:
                    has_end = True
                elif decoder.at_boundary:
                    state.receive_data(bytes(catch_up))
                    catch_up = None
                elif len(catch_up) > self.CATCH_UP_MAX:
                    catch_up, kept = None, False  # the body is still read to its end
        if decoder.excess or not kept:
            return  # bytes after the body, or h11 left behind: not a connection to reuse
        if catch_up is not None:
            state.receive_data(bytes(catch_up))
        elif not has_end:
            state.receive_data(b"0\r\n\r\n")
        with contextlib.suppress(h11.ProtocolError):
            while type(state.next_event()) is h11.Data:
                pass


class _Chunks:
    """HTTP/1.1 chunked transfer coding, decoded a read at a time (as ``h11`` parses it)."""

    __slots__ = ("_buf", "_left", "_step", "done", "excess")

    HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")
    WHOLE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")
    LINE_MAX = 16 * 1024

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # chunk data still to come
        self._step = "size"  # size | data | crlf | trailer
        self.done = False
        self.excess = False

    @property
    def at_boundary(self) -> bool:
        """Between two chunks (or past the last), with nothing half-read."""
        return self.done or (self._step == "size" and not self._buf)

    def feed(self, block: bytes) -> bytes:
        """The chunk data ``block`` carries (the framing removed)."""
        if self._step == "size" and not self._buf:
            # The usual read: exactly one whole chunk.
            match = self.WHOLE.match(block)
            if match is not None:
                start = match.end()
                end = start + int(match[1], 16)
                if start < end == len(block) - 2 and block.endswith(b"\r\n"):
                    return block[start:end]
        buf = self._buf + block if self._buf else block
        out: list[bytes] = []
        i, n = 0, len(buf)
        while i < n and not self.done:
            step = self._step
            if step == "data":
                end = min(n, i + self._left)
                out.append(buf[i:end])
                self._left -= end - i
                i = end
                if not self._left:
                    self._step = "crlf"
            elif step == "crlf":
                if n - i < 2:
                    break
                if buf[i : i + 2] != b"\r\n":
                    raise h11.RemoteProtocolError("malformed chunk footer")
                i += 2
                self._step = "size"
            else:
                end = buf.find(b"\r\n", i)
                if end < 0:
                    if n - i > self.LINE_MAX:
                        raise h11.RemoteProtocolError("chunk header too long")
                    break
                line, i = buf[i:end], end + 2
                if step == "trailer":
                    self.done = not line
                    continue
                match = self.HEADER.fullmatch(line)
                if match is None:
                    raise h11.RemoteProtocolError(f"illegal chunk header: {line[:40]!r}")
                self._left = int(match[1], 16)
                self._step = "data" if self._left else "trailer"
        self._buf = buf[i:]
        self.excess = self.done and bool(self._buf)
        return out[0] if len(out) == 1 else b"".join(out)


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
