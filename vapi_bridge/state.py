"""Where the running bridge listens: a small ``0600`` file ``test`` reads, removed on exit.

It holds the bridge key too, so ``vapi-bridge test`` works against a bridge started with a
one-off ``--secret`` without the user pasting it again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vapi_bridge import keystore
from vapi_bridge.errors import ConfigError

STATE_NAME = "state.json"
DEFAULT_URL = "http://127.0.0.1:5000"


def path(home: Path) -> Path:
    return home / STATE_NAME


def write(
    home: Path, *, pid: int, local_url: str, public_url: str | None, secret: str | None
) -> None:
    data = {"pid": pid, "local_url": local_url, "public_url": public_url, "secret": secret}
    keystore.write_private(path(home), json.dumps(data) + "\n")


def remove(home: Path) -> None:
    with contextlib.suppress(OSError):
        path(home).unlink()


def read(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(path(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def target(
    url: str | None, public: bool, secret: str | None, env: Mapping[str, str], home: Path
) -> tuple[str, str | None]:
    """The URL and bridge key ``test`` should use: flags, then env, then the running bridge."""
    running = read(home)
    if public:
        if not running.get("public_url"):
            raise ConfigError(
                "No running bridge with a tunnel was found.",
                hint="Start one with `vapi-bridge serve` (tunnel on), or pass --url.",
            )
        base = str(running["public_url"])
    else:
        base = url or str(running.get("local_url") or DEFAULT_URL)
    key = secret or env.get("VAPI_BRIDGE_SECRET") or running.get("secret")
    if key is None:
        with contextlib.suppress(keystore.ConfigFileError):
            key = keystore.load(home).get("bridge_secret")
    return base, key
