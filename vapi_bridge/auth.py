"""Who may call the bridge: bridge keys (several at once, to rotate), OAuth2 tokens, and the
metrics token.

Bridge keys are compared in constant time against every valid key. When the bridge serves the
stored keys, it follows the stored config: ``configure-key --new-bridge-key`` and
``--retire-old-keys`` take effect on running bridges (every worker checks the file itself),
so Vapi's credential can move to a new key without a restart or a rejected call.

OAuth2 (RFC 6749 client credentials): ``POST /oauth/token`` trades the client id and secret for
a short-lived bearer token. A token is its expiry signed with HMAC-SHA256 under a key derived
from the client secret, so every worker and replica that knows the client verifies it
without shared state. This module knows no web framework: the app hands it a header and a
body and gets back a verdict or an answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

from vapi_bridge import keystore
from vapi_bridge.errors import ConfigError, Unauthorized
from vapi_bridge.settings import Settings, pick

log = logging.getLogger("vapi_bridge")

TOKEN_LIFETIME = 3600
TOKEN_PREFIX = "vbat."
_SIGNING_CONTEXT = b"vapi-bridge oauth2 access token v1"


def presented(header: str) -> str:
    """The credential in an ``Authorization`` header: ``Bearer <key>``, or the bare key."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else header.strip()


def matches_any(token: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key, with no early exit on a match."""
    given = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


class KeyRing:
    """The bridge keys accepted now.

    Keys given by flag or environment are fixed. Keys that are the stored set are re-read
    when the config file changes (a ``stat`` per check; the file is replaced atomically). A
    config that cannot be read, or holds no key, keeps the keys in use and says so once.
    """

    def __init__(self, keys: tuple[str, ...], home: Path | None = None) -> None:
        self._keys = keys
        self._path: Path | None = None
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if keys and home is not None:
            path = keystore.config_path(home)
            seen = _signature(path)
            if _stored_or_none(home) == keys:
                self._path, self._seen = path, seen

    @property
    def follows_store(self) -> bool:
        return self._path is not None

    def current(self) -> tuple[str, ...]:
        if self._path is None:
            return self._keys
        seen = _signature(self._path)
        if seen != self._seen:
            with self._lock:
                if seen != self._seen:
                    self._reload(seen)
        return self._keys

    def _reload(self, seen: tuple[int, int, int] | None) -> None:
        assert self._path is not None
        self._seen = seen
        try:
            keys = _stored_keys(self._path.parent)
        except ConfigError as exc:
            log.warning("bridge keys not reloaded: %s Keeping the keys in use.", exc.message)
            return
        if not keys:
            log.warning("the stored config holds no bridge key now; keeping the keys in use.")
            return
        if keys != self._keys:
            log.info("bridge keys reloaded from the stored config: %d valid.", len(keys))
            self._keys = keys


def _stored_keys(home: Path) -> tuple[str, ...]:
    """The stored keys, through the same validation as ``serve`` (ConfigError when bad)."""
    try:
        data = keystore.load(home)
    except keystore.ConfigFileError as exc:
        raise ConfigError(f"Cannot read the stored config: {exc}.") from None
    keys: tuple[str, ...] = pick("secret", None, {}, data, default=())
    return keys


def _stored_or_none(home: Path) -> tuple[str, ...] | None:
    try:
        return _stored_keys(home)
    except ConfigError:
        return None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


@dataclass(frozen=True)
class OAuthClient:
    """The one OAuth2 client Vapi authenticates as, and the tokens it is issued."""

    client_id: str
    client_secret: str
    lifetime: int = TOKEN_LIFETIME
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def _mac(self, expiry: int) -> bytes:
        key = hmac.new(self.client_secret.encode(), _SIGNING_CONTEXT, hashlib.sha256).digest()
        message = f"{self.client_id}\n{expiry}".encode()
        return hmac.new(key, message, hashlib.sha256).digest()

    def issue(self, now: float | None = None) -> str:
        """A bearer token valid for :attr:`lifetime` seconds from ``now``."""
        expiry = int(self.clock() if now is None else now) + self.lifetime
        signature = base64.urlsafe_b64encode(self._mac(expiry)).rstrip(b"=").decode()
        return f"{TOKEN_PREFIX}{expiry}.{signature}"

    def verify(self, token: str) -> str | None:
        """``None`` for a good token, else why not: ``expired`` or ``invalid``."""
        body = token[len(TOKEN_PREFIX) :] if token.startswith(TOKEN_PREFIX) else ""
        expiry_text, _, signature = body.partition(".")
        digits = expiry_text.isascii() and expiry_text.isdigit()
        if not digits or len(expiry_text) > 12 or not signature:
            return "invalid"
        try:
            given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except (binascii.Error, ValueError):
            return "invalid"
        if not hmac.compare_digest(given, self._mac(int(expiry_text))):
            return "invalid"
        return "expired" if int(expiry_text) <= self.clock() else None

    def authenticates(self, client_id: str, client_secret: str) -> bool:
        """Both values checked in constant time; the secret also as a client may have
        form-encoded it (RFC 6749 2.3.1)."""
        id_ok = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        secret_ok = matches_any(client_secret, (self.client_secret,))
        secret_ok |= matches_any(unquote(client_secret), (self.client_secret,))
        return id_ok and secret_ok


class Guard:
    """The checks each route makes; raises :class:`Unauthorized` with an OpenAI-style body."""

    def __init__(
        self,
        keys: KeyRing,
        oauth: OAuthClient | None = None,
        metrics_token: str | None = None,
    ) -> None:
        self.keys = keys
        self.oauth = oauth
        self.metrics_token = metrics_token

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        oauth = None
        if settings.oauth and settings.oauth_client_id and settings.oauth_client_secret:
            oauth = OAuthClient(settings.oauth_client_id, settings.oauth_client_secret)
        elif settings.oauth:
            raise ConfigError(
                "--oauth needs an OAuth2 client id and secret.",
                hint="Create them with `vapi-bridge configure-key --oauth` (or set "
                "VAPI_BRIDGE_OAUTH_CLIENT_ID and VAPI_BRIDGE_OAUTH_CLIENT_SECRET).",
            )
        return cls(KeyRing(settings.secret, settings.home), oauth, settings.metrics_token)

    def chat(self, header: str) -> None:
        """A chat or models request: a bridge key or, with ``--oauth``, a live token."""
        keys = self.keys.current()
        if not keys and self.oauth is None:
            return
        token = presented(header)
        if token and matches_any(token, keys):
            return
        if self.oauth is not None and token.startswith(TOKEN_PREFIX):
            problem = self.oauth.verify(token)
            if problem is None:
                return
            if problem == "expired":
                raise Unauthorized(
                    "The OAuth2 access token has expired.",
                    hint="Vapi fetches a new one from the token URL; if this repeats, check "
                    "the credential's OAuth2 settings in Vapi.",
                    code="token_expired",
                )
            raise Unauthorized(
                "The OAuth2 access token is not valid for this bridge.",
                hint="Check the credential's token URL, client id and client secret in Vapi.",
                code="invalid_token",
            )
        raise Unauthorized(
            "Missing or wrong bridge key.",
            hint="In Vapi, set the Custom LLM credential to the key `vapi-bridge serve` "
            "printed (sent as 'Authorization: Bearer <key>')"
            + (", or use its OAuth2 client." if self.oauth is not None else "."),
        )

    def metrics(self, header: str) -> None:
        """``/metrics``: the metrics token or a bridge key; open only when neither is set."""
        keys = self.keys.current()
        allowed = (*keys, self.metrics_token) if self.metrics_token else keys
        if not allowed:
            return
        token = presented(header)
        if token and matches_any(token, allowed):
            return
        raise Unauthorized(
            "Missing or wrong token for /metrics.",
            hint="Send the bridge key or the --metrics-token as 'Authorization: Bearer <token>' "
            "(Prometheus: authorization.credentials in the scrape config).",
        )


@dataclass
class TokenAnswer:
    """What ``POST /oauth/token`` sends back: RFC 6749 section 5 bodies, never cached."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **self.headers}


def token_error(status: int, error: str, description: str) -> TokenAnswer:
    headers = {"WWW-Authenticate": 'Basic realm="vapi-bridge"'} if status == 401 else {}
    return TokenAnswer(status, {"error": error, "error_description": description}, headers)


def token_endpoint(
    client: OAuthClient, *, authorization: str, content_type: str, body: bytes
) -> TokenAnswer:
    """The client-credentials grant: client id and secret in HTTP Basic or in the body
    (form-encoded, or JSON), never both; a bearer token when they match."""
    try:
        params = _token_params(content_type, body)
    except ValueError as exc:
        return token_error(400, "invalid_request", str(exc))
    basic = _basic_credentials(authorization)
    in_body = "client_id" in params or "client_secret" in params
    if basic is not None and in_body:
        return token_error(
            400, "invalid_request", "Send the client credentials one way: Basic or the body."
        )
    client_id, client_secret = basic or (
        params.get("client_id", ""),
        params.get("client_secret", ""),
    )
    if not client_id or not client_secret:
        return token_error(401, "invalid_client", "Client authentication is required.")
    if not client.authenticates(client_id, client_secret):
        return token_error(401, "invalid_client", "Unknown client or wrong client secret.")
    grant = params.get("grant_type")
    if not grant:
        return token_error(400, "invalid_request", "grant_type is required.")
    if grant != "client_credentials":
        return token_error(
            400, "unsupported_grant_type", "Only grant_type=client_credentials is supported."
        )
    return TokenAnswer(
        200,
        {"access_token": client.issue(), "token_type": "Bearer", "expires_in": client.lifetime},
    )


def _token_params(content_type: str, body: bytes) -> dict[str, str]:
    """The request's parameters; each at most once (RFC 6749 3.2)."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("The body is not UTF-8.") from None
    if kind == "application/json":
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            raise ValueError("The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ValueError("The JSON body must be an object.")
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str | int)}
    if kind not in ("", "application/x-www-form-urlencoded"):
        raise ValueError("Send application/x-www-form-urlencoded (or JSON).")
    pairs = parse_qsl(text, keep_blank_values=True)
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Parameter sent more than once: {', '.join(repeated)[:80]}.")
    return dict(pairs)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return "", ""
    return unquote_plus(client_id), secret
