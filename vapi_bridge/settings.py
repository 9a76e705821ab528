"""One frozen settings object, resolved as: command-line flag > environment > stored > default.

The CLI gathers the three sources and calls :func:`resolve`; nothing else reads the
environment, so tests and users can reason about where a value came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_NAME = "vapi-bridge"
DEFAULT_MODEL = "Meta-Llama-3.3-70B-Instruct"
DEFAULT_BASE_URL = "https://api.sambanova.ai/v1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_UPSTREAM_TIMEOUT = 15.0
DEFAULT_TUNNEL_TIMEOUT = 20.0
DEFAULT_MAX_BODY = 4 * 1024 * 1024

# Each setting: (environment variables, in order of preference; key in the stored config).
SOURCES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "api_key": (("SAMBANOVA_API_KEY",), "sambanova_api_key"),
    "base_url": (("SAMBANOVA_BASE_URL", "SAMBA_NOVA_BASE_URL"), None),
    "secret": (("VAPI_BRIDGE_SECRET",), "bridge_secret"),
    "model": (("VAPI_BRIDGE_MODEL",), None),
    "ngrok_authtoken": (("NGROK_AUTHTOKEN",), "ngrok_authtoken"),
    "ngrok_path": (("PYNGROK_NGROK_PATH",), None),
    "domain": (("VAPI_BRIDGE_DOMAIN",), None),
}


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """The bridge's config directory: ``VAPI_BRIDGE_HOME``, else the platform's own.

    Linux ``~/.config/vapi-bridge`` (XDG), macOS ``~/Library/Application Support/vapi-bridge``,
    Windows ``%APPDATA%\\vapi-bridge``.
    """
    env = os.environ if env is None else env
    override = env.get("VAPI_BRIDGE_HOME")
    if override:
        return Path(override).expanduser()
    import click

    return Path(click.get_app_dir(APP_NAME))


@dataclass(frozen=True)
class Settings:
    """Everything ``serve`` needs, already resolved."""

    home: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    model: str | None = None
    default_model: str = DEFAULT_MODEL
    secret: str | None = field(default=None, repr=False)
    no_auth: bool = False
    demo: bool = False
    tunnel: bool = True
    ngrok_path: str | None = None
    ngrok_authtoken: str | None = field(default=None, repr=False)
    domain: str | None = None
    tunnel_timeout: float = DEFAULT_TUNNEL_TIMEOUT
    shutdown_grace: float = 5.0
    workers: int = 1
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    log_format: str = "text"
    model_map: tuple[tuple[str, str], ...] = ()
    system_prompt: str | None = None
    system_prompt_file: Path | None = None
    system_prompt_mode: str = "replace"
    hooks: tuple[str, ...] = ()
    reply_hooks: tuple[str, ...] = ()
    transcript_dir: Path | None = None


def to_json(settings: Settings) -> str:
    """Serialise for the worker processes of ``serve --workers`` (written to a 0600 file)."""
    return json.dumps(dataclasses.asdict(settings), default=str)


def from_json(text: str) -> Settings:
    data = json.loads(text)
    for name in ("home", "system_prompt_file", "transcript_dir"):
        if data.get(name) is not None:
            data[name] = Path(data[name])
    data["model_map"] = tuple(tuple(pair) for pair in data["model_map"])
    data["hooks"] = tuple(data["hooks"])
    data["reply_hooks"] = tuple(data["reply_hooks"])
    return Settings(**data)


def pick(
    name: str, flag: Any, env: Mapping[str, str], stored: Mapping[str, Any], default: Any = None
) -> Any:
    """The value of one setting by precedence: flag, environment, stored config, default."""
    if flag is not None:
        return flag
    env_names, stored_key = SOURCES.get(name, ((), None))
    for env_name in env_names:
        if env.get(env_name):
            return env[env_name]
    if stored_key is not None and stored.get(stored_key):
        return stored[stored_key]
    return default


def resolve(
    flags: Mapping[str, Any], env: Mapping[str, str], stored: Mapping[str, Any]
) -> Settings:
    """Build :class:`Settings` from the three sources; unset flags are ``None``."""
    values = {k: v for k, v in flags.items() if v is not None and k not in SOURCES}
    for name in SOURCES:
        value = pick(name, flags.get(name), env, stored)
        if value is not None:
            values[name] = value
    values.setdefault("home", home_dir(env))
    return Settings(**values)
