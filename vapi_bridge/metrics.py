"""Prometheus metrics, rendered from each finished request record by ``prometheus_client``.

The figures that matter for a voice Custom LLM are per turn: time to first token and time to
first speech, in buckets sized for a caller waiting on silence. Labels are bounded and carry
nothing private: the matched route pattern (or ``other``), the HTTP status, an error code or a
token kind; never a key, a phone number or a call id.

With ``serve --workers`` each worker process counts into files in a directory shared by the
workers (prometheus_client's multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR`` when
the library is first imported), and whichever worker answers ``/metrics`` adds them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vapi_bridge.reqlog import RequestRecord

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# Seconds: a reply that starts within 0.5 s feels live on a call; past 3 s callers talk over it.
VOICE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# What a reply that broke after its first byte counts as among the upstream failures.
STREAM_BROKEN = "stream_broken"
OTHER = "other"


class Metrics:
    """The bridge's metrics; :meth:`observe` is a request record's observer."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        shared = bool(getattr(values.ValueClass, "_multiprocess", False))
        if multiprocess_dir is not None and not shared:
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
                "the workers' metrics would not add up"
            )
        self.multiprocess_dir = multiprocess_dir if shared else None
        self._registry = CollectorRegistry(auto_describe=True)
        registry = self._registry
        self.requests = Counter(
            "vapi_bridge_requests",
            "Requests answered, by route pattern and HTTP status.",
            ["route", "status"],
            registry=registry,
        )
        self.ttft = Histogram(
            "vapi_bridge_time_to_first_token_seconds",
            "From the request's arrival to the model's first token.",
            buckets=VOICE_BUCKETS,
            registry=registry,
        )
        self.ttfs = Histogram(
            "vapi_bridge_time_to_first_speech_seconds",
            "From the request's arrival to the first words the caller will hear.",
            buckets=VOICE_BUCKETS,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "vapi_bridge_upstream_failures",
            "Upstream failures, by error code (stream_broken: after the reply started).",
            ["kind"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "vapi_bridge_fallbacks",
            "Turns answered by another model than the one asked for.",
            registry=registry,
        )
        self.client_disconnects = Counter(
            "vapi_bridge_client_disconnects",
            "Replies the client abandoned before their end (a caller barging in).",
            registry=registry,
        )
        self.active_streams = Gauge(
            "vapi_bridge_active_streams",
            "Streamed replies in flight now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "vapi_bridge_upstream_tokens",
            "Tokens the upstream reported, by kind (prompt, completion).",
            ["kind"],
            registry=registry,
        )

    def observe(self, record: RequestRecord, route: str) -> None:
        """Count one finished request; ``route`` is the matched route pattern or ``other``."""
        self.requests.labels(route, str(record.status)).inc()
        if record.ttft_ms is not None:
            self.ttft.observe(record.ttft_ms / 1000)
        if record.ttfs_ms is not None:
            self.ttfs.observe(record.ttfs_ms / 1000)
        for kind in record.upstream_failures:
            self.upstream_failures.labels(failure_kind(kind)).inc()
        if record.outcome == "upstream_error":
            self.upstream_failures.labels(STREAM_BROKEN).inc()
        fallbacks = record.fallbacks()
        if fallbacks:
            self.fallbacks.inc(fallbacks)
        if record.outcome == "client_closed":
            self.client_disconnects.inc()
        for kind, count in (
            ("prompt", record.prompt_tokens),
            ("completion", record.completion_tokens),
        ):
            if count is not None and count > 0:
                self.tokens.labels(kind).inc(count)

    def stream_started(self) -> None:
        self.active_streams.inc()

    def stream_ended(self) -> None:
        self.active_streams.dec()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when asked) and its content type."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._collector()), content_type

    def _collector(self) -> CollectorRegistry:
        if self.multiprocess_dir is None:
            return self._registry
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return combined


def failure_kind(code: str) -> str:
    """An error code as a label value: the bridge's own codes are snake_case constants; any
    other text (never expected) is folded into ``other`` so the label stays bounded."""
    return code if code.isascii() and code.replace("_", "").isalpha() and len(code) <= 40 else OTHER


def mark_process_dead(pid: int, multiprocess_dir: Path) -> None:
    """A worker exited: its live gauges (streams in flight) no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(multiprocess_dir))  # type: ignore[no-untyped-call]
