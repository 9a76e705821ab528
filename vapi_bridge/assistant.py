"""Point a Vapi assistant at the bridge, and put it back the way it was.

:func:`wire` first saves the assistant's own ``model`` and ``credentials`` in a ``0600`` file
in the bridge's home, then switches the model to ``custom-llm`` at the bridge's URL, keeping
its prompt, tools and settings, with a custom-llm credential holding the bridge key (and,
with ``serve --oauth``, the OAuth2 plan Vapi then fetches its tokens with).
:func:`restore` puts the saved original back and deletes the file.

The bridge never saves its own configuration as the original. When the assistant already
points at a bridge (a URL this bridge wired, the bridge key, or the marker header), an
earlier run ended without restoring (a crash, a ``kill -9``): a saved original is kept as it
is, and without one nothing is saved. When it does not, a saved file is stale (the user put
the assistant back by hand) and the current configuration is saved instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vapi_bridge import keystore, state
from vapi_bridge.errors import ConfigError, VapiError
from vapi_bridge.vapi import VapiClient, check_assistant_id, is_http_url, is_local_host

SAVED_DIR = "assistants"
CUSTOM_LLM = "custom-llm"
# Set on every model the bridge writes, so a later run (or another machine) recognises it.
MARKER_HEADER = "X-Vapi-Bridge-Wired"
# Model fields every provider shares: the assistant's prompt, tools and generation settings.
SHARED_FIELDS = (
    "messages",
    "tools",
    "toolIds",
    "toolRefs",
    "knowledgeBase",
    "temperature",
    "maxTokens",
    "emotionRecognitionEnabled",
    "numFastTurns",
)
# Fields only a custom-llm model has: kept when the assistant already was one.
CUSTOM_LLM_FIELDS = ("metadataSendMode", "timeoutSeconds", "wordLevelConfidenceEnabled")
# What a user edits in the dashboard while the bridge runs: kept when restoring.
EDITABLE_FIELDS = ("messages", "tools", "toolIds", "knowledgeBase", "temperature", "maxTokens")
_REPLACED = frozenset({"provider", "url", "model", "headers"})


@dataclass(frozen=True)
class WiredAssistant:
    """What :func:`wire` did, for the panel."""

    id: str
    name: str
    url: str
    model: str
    original: str
    """``saved`` now, ``kept`` from an earlier run, or ``none`` (it already pointed at a bridge)."""
    dropped: tuple[str, ...] = ()
    """Fields of the old model a custom-llm model cannot have (e.g. ``fallbackModels``)."""

    def describe(self) -> str:
        line = f"Vapi assistant {self.name!r} ({self.id}) now uses this bridge, model {self.model}."
        if self.original == "kept":
            line += " Its original, saved by an earlier run that did not restore it, is kept."
        elif self.original == "none":
            line += " It already pointed at a bridge, so there is no original to restore."
        if self.dropped:
            line += f" Not kept (custom-llm has no such field): {', '.join(self.dropped)}."
        return line


@dataclass(frozen=True)
class ListedAssistant:
    """One row of ``vapi-bridge assistants``."""

    id: str
    name: str
    model: str
    bridge: str
    """``this`` (this bridge's URL or key), ``other`` (another bridge's marker) or ``""``."""


def saved_path(home: Path, assistant_id: str) -> Path:
    check_assistant_id(assistant_id)
    return home / SAVED_DIR / f"{assistant_id}.json"


def read_saved(home: Path, assistant_id: str) -> dict[str, Any] | None:
    """The saved original of an assistant, or ``None``; an unreadable file is an error."""
    path = saved_path(home, assistant_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise VapiError(
            f"The saved original of assistant {assistant_id} ({path}) cannot be read "
            f"({exc.__class__.__name__}); the assistant was not changed.",
            hint="Check the assistant in Vapi's dashboard, then delete that file and retry.",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("original"), dict):
        raise VapiError(
            f"The saved original of assistant {assistant_id} ({path}) is not one the bridge "
            "wrote; the assistant was not changed.",
            hint="Check the assistant in Vapi's dashboard, then delete that file and retry.",
        )
    return data


def bridge_url(url: str) -> str:
    """The base URL Vapi is given: it appends ``/chat/completions`` itself."""
    base = url.strip().rstrip("/")
    base = base.removesuffix("/chat/completions").rstrip("/")
    if not is_http_url(base):
        raise VapiError(
            f"{url[:200]!r} is not a URL Vapi can call.",
            hint="Give the bridge's public https URL (the tunnel's, or --public-url).",
        )
    return base


def same_url(a: str, b: str) -> bool:
    """Equal as bridge base URLs (``/v1`` and ``/chat/completions`` suffixes ignored)."""

    def norm(url: str) -> str:
        url = url.strip().rstrip("/").removesuffix("/chat/completions").rstrip("/")
        return url.removesuffix("/v1").rstrip("/").lower()

    return norm(a) == norm(b)


def bridge_model(
    current: Mapping[str, Any] | None,
    *,
    url: str,
    model: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The custom-llm model for the bridge, keeping the assistant's prompt, tools and settings;
    also returns the fields left out."""
    current = current or {}
    new: dict[str, Any] = {"provider": CUSTOM_LLM, "url": url, "model": model}
    kept = SHARED_FIELDS + (CUSTOM_LLM_FIELDS if current.get("provider") == CUSTOM_LLM else ())
    for name in kept:
        if name in current:
            new[name] = current[name]
    new["headers"] = {MARKER_HEADER: "1", **_checked_headers(headers or {})}
    dropped = [name for name in current if name not in kept and name not in _REPLACED]
    old_headers = current.get("headers")
    if isinstance(old_headers, dict) and any(
        name not in new["headers"] and not name.lower().startswith("x-vapi-bridge")
        for name in old_headers
    ):
        dropped.append("headers")
    return new, tuple(sorted(dropped))


@dataclass(frozen=True)
class OAuthPlan:
    """The OAuth2 client (``serve --oauth``) Vapi fetches its tokens with."""

    client_id: str
    client_secret: str = field(repr=False)

    def plan(self, base_url: str) -> dict[str, str]:
        """Vapi's ``OAuth2AuthenticationPlan`` for the bridge at ``base_url`` (the token
        endpoint is at the server's root, whatever path the chat URL was given with)."""
        root = base_url.removesuffix("/v1")
        return {
            "type": "oauth2",
            "url": root + "/oauth/token",
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
        }


def bridge_credentials(
    current: Any, bridge_key: str | None, *, oauth: OAuthPlan | None = None, url: str = ""
) -> list[Any]:
    """The assistant's credentials with its custom-llm one replaced by the bridge's: the
    bridge key, and with ``oauth`` the OAuth2 plan Vapi then authenticates with (Vapi's
    schema asks for an ``apiKey`` beside the plan; the bridge key, still valid, is it)."""
    others = [c for c in (current if isinstance(current, list) else []) if not _is_custom(c)]
    if not bridge_key and oauth is None:
        return others
    credential: dict[str, Any] = {"provider": CUSTOM_LLM, "name": "vapi-bridge"}
    if bridge_key:
        credential["apiKey"] = bridge_key
    if oauth is not None:
        credential["authenticationPlan"] = oauth.plan(url)
    return [*others, credential]


def points_at_bridge(
    assistant: Mapping[str, Any], *, urls: Collection[str], keys: Collection[str]
) -> str:
    """``this`` when the assistant uses one of these URLs or bridge keys, ``other`` when it
    carries a bridge's marker header, else ``""``."""
    model = assistant.get("model")
    if not isinstance(model, dict) or model.get("provider") != CUSTOM_LLM:
        return ""
    url = model.get("url")
    if isinstance(url, str) and any(same_url(url, known) for known in urls):
        return "this"
    credentials = assistant.get("credentials")
    for credential in credentials if isinstance(credentials, list) else []:
        if _is_custom(credential) and credential.get("apiKey") in keys:
            return "this"
    headers = model.get("headers")
    if isinstance(headers, dict) and any(h.lower() == MARKER_HEADER.lower() for h in headers):
        return "other"
    return ""


def wire(
    client: VapiClient,
    assistant_id: str,
    *,
    url: str,
    model: str,
    bridge_key: str | None,
    oauth: OAuthPlan | None = None,
    headers: Mapping[str, str] | None = None,
    home: Path,
) -> WiredAssistant:
    """Save the assistant's model and credentials (unless already saved), then point it at
    the bridge at ``url`` (its public base URL). Raises :class:`VapiError`."""
    check_assistant_id(assistant_id)
    url = bridge_url(url)
    headers = _checked_headers(headers or {})
    if is_local_host(httpx.URL(url).host):
        raise VapiError(
            f"Vapi's servers cannot reach {url}: it is this machine's own address.",
            hint="Wire the assistant once the tunnel is open, or pass --public-url.",
        )
    secrets = [bridge_key] if bridge_key else []
    if oauth is not None:
        secrets.append(oauth.client_secret)
    try:
        current = client.get_assistant(assistant_id)
        secrets += _credential_secrets(current.get("credentials"))
        saved = read_saved(home, assistant_id)
        new_model, dropped = bridge_model(_model_of(current), url=url, model=model, headers=headers)
        original, saved = _original(current, saved, assistant_id, url=url, keys=secrets)
        if saved is not None:
            # Recorded before the PATCH: if its answer is lost, the URL may be in use already.
            urls = _wired_urls(saved)
            saved["wired_urls"] = [*urls, url] if url not in urls else urls
            _write(home, assistant_id, saved)
        patch = {
            "model": new_model,
            "credentials": bridge_credentials(
                current.get("credentials"), bridge_key, oauth=oauth, url=url
            ),
        }
        try:
            client.update_assistant(assistant_id, patch)
        except VapiError as exc:
            if original == "saved" and exc.vapi_status is not None:
                # Vapi said no, so the assistant is unchanged: nothing of ours to restore.
                _delete(home, assistant_id)
            raise
    except VapiError as exc:
        raise _redacted(exc, secrets) from None
    return WiredAssistant(assistant_id, _name(current), url, model, original, dropped)


def _original(
    current: Mapping[str, Any],
    saved: dict[str, Any] | None,
    assistant_id: str,
    *,
    url: str,
    keys: list[str],
) -> tuple[str, dict[str, Any] | None]:
    """What to keep as the assistant's original: ``saved`` now, ``kept`` (an earlier run
    saved it), or ``none`` (it already held a bridge's configuration, never to be saved)."""
    if points_at_bridge(current, urls=[url, *_wired_urls(saved)], keys=keys):
        return ("none" if saved is None else "kept"), saved
    # Its own configuration (a saved file, if any, is stale: it was put back by hand).
    return "saved", {
        "assistant_id": assistant_id,
        "name": _name(current),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "original": {"model": current.get("model"), "credentials": current.get("credentials")},
        "wired_urls": [],
    }


def restore(client: VapiClient, assistant_id: str, home: Path) -> str:
    """Put back the saved model and credentials, then delete the saved file; returns what
    happened. Prompt and tool edits made in the dashboard meanwhile are kept. An assistant
    that no longer points at the bridge is left alone. Raises :class:`VapiError`."""
    saved = read_saved(home, assistant_id)
    if saved is None:
        return f"No saved original for assistant {assistant_id}: nothing to restore."
    current = client.get_assistant(assistant_id)
    name = _name(current)
    model = _model_of(current) or {}
    url = str(model.get("url") or "")
    ours = model.get("provider") == CUSTOM_LLM and any(
        same_url(url, known) for known in _wired_urls(saved)
    )
    if not ours:
        if points_at_bridge(current, urls=(), keys=()) == "other":
            return (
                f"Vapi assistant {name!r} ({assistant_id}) now points at another bridge; left "
                f"as it is. Its original stays saved in {saved_path(home, assistant_id)}."
            )
        _delete(home, assistant_id)
        return (
            f"Vapi assistant {name!r} ({assistant_id}) no longer uses this bridge "
            "(changed meanwhile); left as it is."
        )
    original = saved["original"]
    credentials = original.get("credentials")
    patch: dict[str, Any] = {"credentials": credentials if isinstance(credentials, list) else []}
    kept: list[str] = []
    if isinstance(original.get("model"), dict):
        patch["model"], kept = _restored_model(original["model"], model)
    try:
        client.update_assistant(assistant_id, patch)
    except VapiError as exc:
        secrets = _credential_secrets(credentials) + _credential_secrets(current.get("credentials"))
        raise _redacted(exc, secrets) from None
    _delete(home, assistant_id)
    restored = patch.get("model") or {}
    line = (
        f"Vapi assistant {name!r} ({assistant_id}) is back on its own model "
        f"({restored.get('provider', '?')}/{restored.get('model', '?')})."
    )
    if kept:
        line += f" Edits made meanwhile are kept: {', '.join(kept)}."
    return line


def listing(
    assistants: Iterable[Mapping[str, Any]], *, urls: Collection[str], keys: Collection[str]
) -> list[ListedAssistant]:
    rows = []
    for item in assistants:
        model = _model_of(item) or {}
        provider, name = model.get("provider") or "?", model.get("model") or "?"
        rows.append(
            ListedAssistant(
                id=_printable(str(item.get("id", "?"))),
                name=_name(item),
                model=_printable(f"{provider}/{name}"),
                bridge=points_at_bridge(item, urls=urls, keys=keys),
            )
        )
    return rows


def table(rows: list[ListedAssistant]) -> str:
    """Aligned columns for a terminal; the ID first, to copy into ``serve --assistant``."""
    header = ListedAssistant("ID", "NAME", "MODEL", "BRIDGE")
    shown = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in shown) for f in ("id", "name", "model")]
    lines = []
    for r in shown:
        bridge = {"this": "this bridge", "other": "a bridge"}.get(r.bridge, r.bridge or "-")
        cells = [r.id.ljust(widths[0]), r.name.ljust(widths[1]), r.model.ljust(widths[2])]
        lines.append("  ".join([*cells, bridge]).rstrip())
    return "\n".join(lines)


def this_bridge(home: Path) -> tuple[list[str], list[str]]:
    """The URLs and keys that identify this bridge: the running ones', and the stored key."""
    running = [entry for _, entry in state.records(home) if entry.running()]
    urls = [entry.public_url for entry in running if entry.public_url]
    keys = [entry.secret for entry in running if entry.secret]
    with contextlib.suppress(keystore.ConfigFileError):
        stored = keystore.load(home).get("bridge_secret")
        if isinstance(stored, str) and stored:
            keys.append(stored)
    return urls, keys


def _restored_model(
    original: dict[str, Any], current: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    out = dict(original)
    kept = []
    for name in EDITABLE_FIELDS:
        if name in current:
            out[name] = current[name]
        else:
            out.pop(name, None)
        if out.get(name) != original.get(name):
            kept.append(name)
    return out, kept


def _wired_urls(saved: Mapping[str, Any] | None) -> list[str]:
    urls = (saved or {}).get("wired_urls")
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if name.lower() == "authorization":
            raise VapiError(
                "Vapi does not let model headers set Authorization.",
                hint="The bridge key goes in the assistant's custom-llm credential instead.",
            )
        if not name or not name.isascii() or not all(c.isalnum() or c in "-_" for c in name):
            raise VapiError(f"{name[:80]!r} is not a header name.", hint="Use letters and -.")
        if not isinstance(value, str) or not value.isprintable():
            raise VapiError(f"Header {name} needs a printable text value.", hint="Fix it.")
    return dict(headers)


def _credential_secrets(credentials: Any) -> list[str]:
    """The secret values in credentials (an OAuth2 plan's too), to cut out of anything
    Vapi's errors quote."""
    secret_words = ("key", "secret", "token", "password")

    def found(mapping: dict[Any, Any]) -> Iterator[str]:
        for name, value in mapping.items():
            if isinstance(value, dict):
                yield from found(value)
            elif (
                isinstance(value, str)
                and value
                and any(w in str(name).lower() for w in secret_words)
            ):
                yield value

    items = credentials if isinstance(credentials, list) else []
    return [
        value for credential in items if isinstance(credential, dict) for value in found(credential)
    ]


def _is_custom(credential: Any) -> bool:
    return isinstance(credential, dict) and credential.get("provider") == CUSTOM_LLM


def _model_of(assistant: Mapping[str, Any]) -> dict[str, Any] | None:
    model = assistant.get("model")
    return model if isinstance(model, dict) else None


def _name(assistant: Mapping[str, Any]) -> str:
    return _printable(str(assistant.get("name") or "(no name)"))


def _printable(text: str) -> str:
    """Names come from the account: no terminal control characters, one line."""
    return "".join(c if c.isprintable() else "?" for c in text)[:80]


def _write(home: Path, assistant_id: str, data: dict[str, Any]) -> None:
    keystore.ensure_private_dir(home)
    keystore.write_private(saved_path(home, assistant_id), json.dumps(data, indent=2) + "\n")


def _delete(home: Path, assistant_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        saved_path(home, assistant_id).unlink()


def _redacted(exc: VapiError, secrets: list[str]) -> VapiError:
    message, hint = exc.message, exc.hint
    for secret in secrets:
        message, hint = message.replace(secret, "***"), hint.replace(secret, "***")
    return VapiError(message, hint=hint, vapi_status=exc.vapi_status)


class Link:
    """``serve --assistant``: wire the assistant once the public URL is known, put it back on
    stop. Every Vapi failure becomes one line to show; the bridge keeps serving regardless."""

    def __init__(
        self,
        *,
        assistant_id: str,
        api_key: str | None,
        base_url: str,
        home: Path,
        model: str,
        keep: bool = False,
        headers: Mapping[str, str] | None = None,
        oauth: OAuthPlan | None = None,
    ) -> None:
        if not api_key:
            raise ConfigError(
                "Wiring an assistant (--assistant or VAPI_ASSISTANT_ID) needs your Vapi "
                "private API key.",
                hint="Store it with `vapi-bridge configure-key --vapi` (or set VAPI_API_KEY).",
            )
        try:
            check_assistant_id(assistant_id)
        except VapiError as exc:  # a value the user gave: a configuration error (exit 2)
            raise ConfigError(exc.message, hint=exc.hint) from None
        self.assistant_id = assistant_id
        self.home = home
        self.model = model
        self.keep = keep
        self.headers = headers
        self.oauth = oauth
        self._key = api_key
        self._base_url = base_url
        self._client: VapiClient | None = None
        self.wired: WiredAssistant | None = None

    def open(self, public_url: str | None, *, bridge_key: str | None) -> str | None:
        """Wire the assistant; ``None`` on success (see :attr:`wired`), else why not."""
        if public_url is None:
            return (
                "the bridge has no public URL (no tunnel), so Vapi could not reach it. "
                "Fix the tunnel, or pass --public-url."
            )
        try:
            self._client = VapiClient(self._key, self._base_url)
            self.wired = wire(
                self._client,
                self.assistant_id,
                url=public_url,
                model=self.model,
                bridge_key=bridge_key,
                oauth=self.oauth,
                headers=self.headers,
                home=self.home,
            )
        except VapiError as exc:
            return exc.cli_message()
        return None

    def close(self) -> str | None:
        """Put the assistant back (unless kept); returns what happened, if anything did."""
        client, self._client = self._client, None
        if client is None or self.wired is None:
            return None
        try:
            if self.keep:
                return f"Vapi assistant {self.wired.name!r} stays wired to this bridge."
            return restore(client, self.assistant_id, self.home)
        except VapiError as exc:
            return (
                f"{exc.cli_message()}\n  The original stays saved; the next "
                "`vapi-bridge serve --assistant` puts it back."
            )
        finally:
            client.close()
