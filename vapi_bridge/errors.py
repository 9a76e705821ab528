"""Error types, and the one place that maps them to HTTP answers and CLI messages.

Every failure the bridge can report is a :class:`BridgeError` carrying a plain message (what
went wrong) and a hint (what to do). The HTTP app turns it into an OpenAI-style error body
with a meaningful status, because Vapi turns that status into the call's "ended reason";
the CLI prints the same message and hint without a traceback.
"""

from __future__ import annotations

from typing import Any

from vapi_bridge.ratelimit import RateLimit


class BridgeError(Exception):
    """Base of every error the bridge reports to a client or a user."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        status: int | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body; the hint is appended so Vapi's logs show the fix."""
        text = f"{self.message} {self.hint}".strip()
        return {"error": {"message": text, "type": self.type, "code": self.code, "param": None}}

    def cli_message(self) -> str:
        """Two lines for a terminal: the cause, then the fix."""
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class InvalidRequest(BridgeError):
    """The client's request is malformed; never forwarded upstream."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(BridgeError):
    """The bridge key is missing or wrong."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(BridgeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(BridgeError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(BridgeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HookFailed(BridgeError):
    """A user hook raised: the request is answered with an error instead of hanging."""

    status = 500
    type = "server_error"
    code = "hook_failed"


class UpstreamError(BridgeError):
    """SambaNova (or the network to it) failed. ``upstream_status`` is its HTTP status."""

    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        upstream_status: int | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: str | None = None,
        rate: RateLimit | None = None,
    ) -> None:
        mapped_status, mapped_code = _map_upstream_status(upstream_status)
        super().__init__(
            message,
            hint=hint,
            status=status if status is not None else mapped_status,
            code=code if code is not None else mapped_code,
            retry_after=retry_after,
        )
        self.upstream_status = upstream_status
        self.rate = rate


class UpstreamStreamBroken(UpstreamError):
    """The upstream stream failed after the first chunk; the answer is already on its way."""


class InBandError(UpstreamStreamBroken):
    """SambaNova sent ``data: {"error": ...}`` instead of a chunk."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message, hint="Retry; SambaNova reported the error itself.", code="upstream_error"
        )


class ConfigError(BridgeError):
    """Missing or invalid configuration found by the CLI (exit code 2)."""

    code = "config_error"


class TunnelError(BridgeError):
    """The ngrok tunnel could not open; the bridge keeps serving locally."""

    code = "tunnel_error"


class VapiError(BridgeError):
    """Vapi's REST API (wiring an assistant) failed; ``vapi_status`` is its HTTP status.

    The bridge keeps serving: wiring is a convenience on top of a working bridge.
    """

    code = "vapi_error"

    def __init__(self, message: str, *, hint: str = "", vapi_status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.vapi_status = vapi_status


class ProbeError(BridgeError):
    """``vapi-bridge test`` could not get a good reply from the server it checked."""

    code = "probe_failed"


# SambaNova's status -> (status sent to Vapi, error code). Vapi names the call's ended reason
# after the status, so a rejected *SambaNova* key must not come back as 401: that would read as
# a rejected Vapi credential. 403 keeps its meaning ("model access denied").
_UPSTREAM_STATUS: dict[int, tuple[int, str]] = {
    400: (400, "upstream_bad_request"),
    401: (502, "upstream_authentication_failed"),
    402: (502, "upstream_payment_required"),
    403: (403, "upstream_permission_denied"),
    404: (404, "model_not_found"),
    408: (504, "upstream_timeout"),
    410: (404, "model_not_found"),
    413: (400, "context_length_exceeded"),
    422: (400, "upstream_bad_request"),
    429: (429, "rate_limit_exceeded"),
    500: (502, "upstream_server_error"),
    502: (502, "upstream_server_error"),
    503: (503, "upstream_overloaded"),
    504: (504, "upstream_timeout"),
}


def _map_upstream_status(upstream_status: int | None) -> tuple[int, str]:
    if upstream_status is None:
        return 502, "upstream_unreachable"
    if upstream_status in _UPSTREAM_STATUS:
        return _UPSTREAM_STATUS[upstream_status]
    if upstream_status >= 500:
        return 502, "upstream_server_error"
    return 502, "upstream_error"


def upstream_status_message(upstream_status: int, model: str, detail: str) -> tuple[str, str]:
    """Message and hint for an HTTP error status SambaNova answered with."""
    detail = f" SambaNova said: {detail}" if detail else ""
    if upstream_status == 401:
        return (
            "SambaNova rejected the bridge's SambaNova API key (HTTP 401); "
            "this is not about the Vapi credential.",
            "Store a valid key with `vapi-bridge configure-key` and restart `vapi-bridge serve`.",
        )
    if upstream_status == 402:
        return (
            "SambaNova requires a payment method on this account (HTTP 402).",
            "Add a payment method in the SambaNova Cloud console, then retry.",
        )
    if upstream_status == 403:
        return (
            f"SambaNova denied access to model '{model}' (HTTP 403).{detail}",
            "Use a model your SambaNova plan includes (serve --model).",
        )
    if upstream_status in (404, 410):
        return (
            f"SambaNova does not serve model '{model}' (HTTP {upstream_status}).{detail}",
            "Enter a SambaNova model name in Vapi, e.g. Meta-Llama-3.3-70B-Instruct, "
            "or force one with `serve --model`.",
        )
    if upstream_status == 429:
        return (
            f"SambaNova's rate limit was reached (HTTP 429).{detail}",
            "Wait and retry, or raise your SambaNova plan's limits.",
        )
    if upstream_status in (408, 504):
        return (
            f"SambaNova timed out (HTTP {upstream_status}).",
            "Retry; if it persists, try a smaller model or shorter prompts.",
        )
    if upstream_status == 503:
        return (
            f"SambaNova is overloaded or in maintenance (HTTP 503).{detail}",
            "Retry in a moment.",
        )
    if upstream_status >= 500:
        return (
            f"SambaNova had a server error (HTTP {upstream_status}).{detail}",
            "Retry in a moment.",
        )
    return (
        f"SambaNova rejected the request (HTTP {upstream_status}).{detail}",
        "Check the assistant's model settings in Vapi (messages, tools, max_tokens).",
    )
