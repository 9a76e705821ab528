"""Vapi's REST API: the three calls that wire an assistant to the bridge.

Plain httpx rather than the official ``vapi-server-sdk`` (3.0.0), measured in a scratch venv
on Python 3.11: ``import vapi`` itself is lazy (~15 ms), but the first use of
``Vapi(...).assistants`` imports and builds its generated pydantic models, ~19 s wall and
358 MB peak RSS on the development machine, against 0.08 s and 23 MB for ``import httpx``,
which the bridge already depends on. The SDK would also add pydantic and 40 MB (2,492 files)
to every install. And the bridge must send an assistant's ``model`` back with every field
exactly as Vapi gave it, which plain JSON objects do and a typed model may not (unknown
fields dropped, defaults filled in). Three endpoints need no SDK.

The private API key is sent only in the ``Authorization`` header: it never appears in a
message, a log line or a ``repr``, and is cut out of anything Vapi's answers quote.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import httpx

from vapi_bridge import __version__
from vapi_bridge.errors import VapiError
from vapi_bridge.settings import DEFAULT_VAPI_BASE_URL

DEFAULT_TIMEOUT = 10.0
ASSISTANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# What an HTTP header can carry, without spaces: printable ASCII.
API_KEY = re.compile(r"^[\x21-\x7e]{8,512}$")
DASHBOARD_KEYS = "https://dashboard.vapi.ai/org/api-keys"
STATUS_PAGE = "https://status.vapi.ai"
_MAX_QUOTE = 300


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def is_local_host(host: str) -> bool:
    """Loopback names and addresses: never reached through the environment's proxy."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_key(api_key: str) -> None:
    """Refuse a key an HTTP header cannot carry, without ever quoting it."""
    if not API_KEY.match(api_key):
        raise VapiError(
            "That Vapi API key has spaces or characters an API key cannot have, or is too short.",
            hint=f"Copy the private key again from {DASHBOARD_KEYS}.",
        )


def check_assistant_id(assistant_id: str) -> None:
    if not ASSISTANT_ID.match(assistant_id):
        raise VapiError(
            f"{assistant_id[:80]!r} is not a Vapi assistant ID.",
            hint="List the account's assistants and their IDs with `vapi-bridge assistants`.",
        )


class VapiClient:
    """A small synchronous client for ``/assistant``; every failure is one :class:`VapiError`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_VAPI_BASE_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not is_http_url(base_url):
            raise VapiError(
                f"{base_url[:200]!r} is not a valid Vapi API URL.",
                hint=f"Leave it out to use {DEFAULT_VAPI_BASE_URL}, or give a full http(s) URL.",
            )
        check_api_key(api_key)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._key = api_key
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"vapi-bridge/{__version__}",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            trust_env=not is_local_host(httpx.URL(self.base_url).host),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"VapiClient(base_url={self.base_url!r})"

    def __enter__(self) -> VapiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get_assistant(self, assistant_id: str) -> dict[str, Any]:
        check_assistant_id(assistant_id)
        data = self._call("GET", f"/assistant/{assistant_id}", assistant_id=assistant_id)
        return self._assistant(data, "GET", assistant_id)

    def list_assistants(self, limit: int = 100) -> list[dict[str, Any]]:
        """The account's assistants, newest first, at most ``limit`` (Vapi allows 1000)."""
        data = self._call("GET", "/assistant", params={"limit": limit})
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise self._not_vapi("GET /assistant", "a list of assistants")
        return data

    def update_assistant(self, assistant_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """PATCH: top-level fields given are replaced whole (``model`` included)."""
        check_assistant_id(assistant_id)
        data = self._call(
            "PATCH", f"/assistant/{assistant_id}", assistant_id=assistant_id, json=patch
        )
        return self._assistant(data, "PATCH", assistant_id)

    def _assistant(self, data: Any, method: str, assistant_id: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self._not_vapi(f"{method} /assistant/{assistant_id}", "an assistant")
        return data

    def _not_vapi(self, what: str, expected: str) -> VapiError:
        return VapiError(
            f"{self.base_url} answered {what} with something that is not {expected}.",
            hint=f"Check --vapi-base-url / VAPI_BASE_URL (Vapi's API is {DEFAULT_VAPI_BASE_URL}).",
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        assistant_id: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException:
            raise VapiError(
                f"Vapi did not answer {method} {path} within {self.timeout:g} s.",
                hint=f"Check your network and retry; {STATUS_PAGE} shows Vapi's outages.",
            ) from None
        except httpx.HTTPError as exc:
            raise VapiError(
                f"Could not reach Vapi at {self.base_url} ({exc.__class__.__name__}).",
                hint="Check your network (and --vapi-base-url / VAPI_BASE_URL), then retry.",
            ) from None
        if response.status_code >= 400:
            raise self._status_error(response, method, path, assistant_id)
        if response.status_code >= 300:
            raise self._not_vapi(f"{method} {path}", f"an answer (HTTP {response.status_code})")
        try:
            return response.json()
        except ValueError:
            raise self._not_vapi(f"{method} {path}", "JSON") from None

    def _status_error(
        self, response: httpx.Response, method: str, path: str, assistant_id: str | None
    ) -> VapiError:
        status = response.status_code
        said = self._quote(response)
        if status in (401, 403):
            message = f"Vapi rejected the Vapi API key (HTTP {status})."
            hint = (
                f"Use the *private* API key from {DASHBOARD_KEYS} (the public key cannot "
                "manage assistants): `vapi-bridge configure-key --vapi`, or VAPI_API_KEY."
            )
        elif status == 404 and assistant_id is not None:
            message = f"Vapi has no assistant {assistant_id} in this account (HTTP 404)."
            hint = "List the account's assistants with `vapi-bridge assistants`, and pick an ID."
        elif status == 404:
            message = f"{self.base_url} answered HTTP 404 to {method} {path}."
            hint = f"Check --vapi-base-url / VAPI_BASE_URL (Vapi's API is {DEFAULT_VAPI_BASE_URL})."
        elif status in (400, 422):
            message = f"Vapi refused {method} {path} (HTTP {status}): {said or 'no reason given'}."
            hint = "Nothing was changed; fix what Vapi names (in its dashboard or the options)."
        elif status == 429:
            message = "Vapi's rate limit was reached (HTTP 429)."
            hint = "Wait a minute and retry."
        elif status >= 500:
            message = f"Vapi had a server error (HTTP {status})."
            hint = f"Retry in a moment; {STATUS_PAGE} shows Vapi's outages."
        else:
            message = f"Vapi answered {method} {path} with HTTP {status}: {said or 'no reason'}."
            hint = f"Check --vapi-base-url / VAPI_BASE_URL (Vapi's API is {DEFAULT_VAPI_BASE_URL})."
        return VapiError(message, hint=hint, vapi_status=status)

    def _quote(self, response: httpx.Response) -> str:
        """Vapi's own reason (``message``, a string or a list), on one short line."""
        try:
            body = response.json()
        except ValueError:
            body = response.text
        reason = body.get("message") or body.get("error") if isinstance(body, dict) else body
        if isinstance(reason, list):
            reason = "; ".join(str(item) for item in reason)
        text = " ".join(str(reason or "").replace(self._key, "***").split())
        if len(text) > _MAX_QUOTE:
            text = text[: _MAX_QUOTE - 3] + "..."
        return f'"{text}"' if text else ""
