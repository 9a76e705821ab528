"""The stored config: one JSON file in the bridge's home, ``0600`` inside a ``0700`` folder.

It holds the SambaNova key, the ngrok token, the bridge keys (the newest, and the older ones
still valid while Vapi moves to it), the OAuth2 client and the Vapi private API key, so it is
written atomically through a file created with owner-only permissions from the start
(never chmod-ed after the secret is already on disk), and anything printed goes through
:func:`mask`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
LABELS = {
    "sambanova_api_key": "SambaNova API key",
    "ngrok_authtoken": "ngrok auth token",
    "bridge_secret": "Bridge key (Vapi credential)",
    "vapi_api_key": "Vapi private API key",
    "oauth_client_id": "OAuth2 client id",
    "oauth_client_secret": "OAuth2 client secret",
}
# The bridge keys still accepted beside ``bridge_secret`` (the newest), newest first.
RETIRING = "bridge_secrets_retiring"


class ConfigFileError(Exception):
    """The config file exists but cannot be read as a JSON object."""


def config_path(home: Path) -> Path:
    return home / CONFIG_NAME


def load(home: Path) -> dict[str, Any]:
    """The stored values, or an empty dict when nothing is stored yet."""
    path = config_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigFileError(f"{path}: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: not a JSON object")
    return data


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; the file is ``0600`` from its first byte."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_private_dir(path: Path) -> None:
    """``path`` exists and is ``0700``; folders made on the way to it are ``0700`` too, as
    the XDG spec asks (the bridge's home, made as the parent of ``run/``, included)."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            made.mkdir(mode=0o700)
    for folder in missing or [path]:  # mkdir's mode is masked by the umask; chmod is not
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)


def save(home: Path, values: dict[str, Any]) -> None:
    write_private(config_path(home), json.dumps(values, indent=2, sort_keys=True) + "\n")


def update(home: Path, **changes: Any) -> dict[str, Any]:
    """Set (or, with ``None``, remove) stored values; returns the new config."""
    data = load(home)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    save(home, data)
    return data


def bridge_secret(home: Path) -> str:
    """The stored bridge key, generated (strong, random) and stored on first use."""
    data = load(home)
    secret = data.get("bridge_secret")
    if isinstance(secret, str) and secret:
        return secret
    secret = new_secret()
    update(home, bridge_secret=secret)
    return secret


def new_secret() -> str:
    return "vb_" + secrets.token_urlsafe(32)


def bridge_keys(data: dict[str, Any]) -> tuple[str, ...]:
    """The stored bridge keys in a loaded config, the newest first."""
    newest = data.get("bridge_secret")
    if not isinstance(newest, str) or not newest:
        return ()
    older = data.get(RETIRING)
    keys = (
        [newest, *(k for k in older if isinstance(k, str))] if isinstance(older, list) else [newest]
    )
    return tuple(dict.fromkeys(keys))


def rotate_bridge_key(home: Path) -> str:
    """A new bridge key becomes the one to give Vapi; the current ones stay valid."""
    keys = bridge_keys(load(home))
    secret = new_secret()
    update(home, bridge_secret=secret, **{RETIRING: list(keys) or None})
    return secret


def retire_old_keys(home: Path) -> int:
    """Only the newest bridge key stays valid; returns how many keys were retired."""
    retired = len(bridge_keys(load(home))[1:])
    if retired:
        update(home, **{RETIRING: None})
    return retired


def oauth_client(home: Path) -> tuple[str, str]:
    """The stored OAuth2 client id and secret, created (strong, random) on first use."""
    data = load(home)
    client_id, secret = data.get("oauth_client_id"), data.get("oauth_client_secret")
    if isinstance(client_id, str) and client_id and isinstance(secret, str) and secret:
        return client_id, secret
    return new_oauth_client(home)


def new_oauth_client(home: Path) -> tuple[str, str]:
    """Replace the OAuth2 client; tokens issued for the old one stop working."""
    client_id, secret = "vbc_" + secrets.token_hex(8), "vbs_" + secrets.token_urlsafe(32)
    update(home, oauth_client_id=client_id, oauth_client_secret=secret)
    return client_id, secret


def mask(secret: str | None) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return "(not set)"
    if len(secret) <= 12:
        return "*" * len(secret)
    return f"{secret[:4]}...{secret[-4:]}"
