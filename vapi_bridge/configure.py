"""``configure-key``: verify and store keys, show what is configured, remove it.

Each function does one user action and returns the sentence to show; the CLI prints it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vapi_bridge import keystore
from vapi_bridge.errors import ConfigError, UpstreamError
from vapi_bridge.settings import SOURCES

NGROK_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{20,200}$")


def verify_sambanova_key(key: str, base_url: str) -> int:
    """Check the key against SambaNova's models endpoint; returns how many models it sees."""
    from vapi_bridge.upstream import verify_key

    try:
        return len(verify_key(key, base_url))
    except UpstreamError as exc:
        if exc.upstream_status == 401:
            raise ConfigError(
                "SambaNova rejected this key (HTTP 401); it was not stored.",
                hint="Copy the key again from https://cloud.sambanova.ai/apis and retry.",
            ) from None
        if exc.upstream_status == 402:
            raise ConfigError(
                "SambaNova accepted the key but the account needs a payment method (HTTP 402); "
                "it was not stored.",
                hint="Add a payment method in the SambaNova Cloud console, or store the key "
                "anyway with --no-verify.",
            ) from None
        if exc.upstream_status is None:
            raise ConfigError(
                f"Could not reach SambaNova at {base_url} to verify the key; it was not stored.",
                hint="Check your network, or store it without checking: --no-verify.",
            ) from None
        raise ConfigError(
            f"{exc.message} The key was not stored.",
            hint="Retry later, or store it without checking: --no-verify.",
        ) from None


def check_ngrok_token(token: str) -> None:
    if not NGROK_TOKEN.match(token):
        raise ConfigError(
            "That does not look like an ngrok auth token (letters, digits, _ and -).",
            hint="Copy it from https://dashboard.ngrok.com/get-started/your-authtoken.",
        )


def read_secret(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError(
            f"No {what} given.", hint="Paste it at the prompt, or pipe it to --stdin."
        )
    return value


def describe(home: Path, env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(label, masked value, where it comes from) for each secret, by the serve precedence."""
    stored = keystore.load(home)
    rows = []
    for setting, stored_key in (
        ("api_key", "sambanova_api_key"),
        ("ngrok_authtoken", "ngrok_authtoken"),
        ("secret", "bridge_secret"),
    ):
        env_names, _ = SOURCES[setting]
        value: Any = None
        source = "not set"
        for name in env_names:
            if env.get(name):
                value, source = env[name], f"environment ({name})"
                break
        if value is None and stored.get(stored_key):
            value, source = stored[stored_key], str(keystore.config_path(home))
        rows.append((keystore.LABELS[stored_key], keystore.mask(value), source))
    return rows


def label(field: str) -> str:
    return keystore.LABELS[field]


def store(home: Path, field: str, raw: str, *, verify: bool, base_url: str) -> str:
    """Check and store a SambaNova key or an ngrok token; nothing is stored on failure."""
    value = read_secret(raw, label(field))
    detail = ""
    if field == "ngrok_authtoken":
        check_ngrok_token(value)
    elif verify:
        detail = f" (verified: {verify_sambanova_key(value, base_url)} models available)"
    keystore.update(home, **{field: value})
    return f"Stored {label(field)} {keystore.mask(value)} in {keystore.config_path(home)}{detail}."


def remove(home: Path, field: str) -> str:
    keystore.update(home, **{field: None})
    return f"Removed the stored {label(field)}."


def new_bridge_key(home: Path) -> str:
    """Replace the bridge key; returns it, since the user must paste it into Vapi."""
    secret = keystore.new_secret()
    keystore.update(home, bridge_secret=secret)
    return secret
