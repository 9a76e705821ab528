"""Where each running bridge listens: one small ``0600`` file per bridge, removed on exit.

``<home>/run/<pid>.json`` holds a bridge's URLs and key (so ``vapi-bridge test`` works against
a bridge started with a one-off ``--secret`` without the user pasting it again), and the pid
of the ngrok agent it started. One file per bridge: two bridges never overwrite or delete each
other's. Each pid comes with its :func:`liveness.identity`, so a file whose bridge died
without cleaning up (``kill -9``, a crash, a closed terminal) is recognised as stale even when
its pid was reused; the next ``serve`` stops the agent it left behind and removes the file.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vapi_bridge import keystore, liveness
from vapi_bridge.errors import ConfigError, ProbeError

RUN_DIR = "run"
LEGACY_NAME = "state.json"  # the one shared state file of earlier versions
DEFAULT_URL = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Record:
    """One bridge, as it recorded itself at start-up."""

    pid: int
    local_url: str
    public_url: str | None = None
    secret: str | None = None
    identity: str | None = None
    agent_pid: int | None = None
    agent_identity: str | None = None

    def running(self) -> bool:
        """True while the process that wrote this record still runs."""
        now = liveness.identity(self.pid)
        return now is not None and (self.identity is None or now == self.identity)

    def describe(self) -> str:
        return f"pid {self.pid}: {self.public_url or self.local_url}"


def run_dir(home: Path) -> Path:
    return home / RUN_DIR


def path(home: Path, pid: int) -> Path:
    return run_dir(home) / f"{pid}.json"


def record(
    *, pid: int, local_url: str, public_url: str | None, secret: str | None, agent_pid: int | None
) -> Record:
    """A record of this bridge, with the identities that later tell whether it still runs."""
    return Record(
        pid=pid,
        local_url=local_url,
        public_url=public_url,
        secret=secret,
        identity=liveness.identity(pid),
        agent_pid=agent_pid,
        agent_identity=liveness.identity(agent_pid) if agent_pid else None,
    )


def write(home: Path, entry: Record) -> Path:
    target = path(home, entry.pid)
    keystore.write_private(target, json.dumps(asdict(entry)) + "\n")
    return target


def remove(home: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        path(home, pid).unlink()


def records(home: Path) -> list[tuple[Path, Record]]:
    """Every record on disk, running or stale, oldest pid first; unreadable files are skipped."""
    files = sorted(run_dir(home).glob("*.json")) if run_dir(home).is_dir() else []
    legacy = home / LEGACY_NAME
    if legacy.is_file():
        files.append(legacy)
    found = [(file, entry) for file in files if (entry := _read(file)) is not None]
    return sorted(found, key=lambda item: item[1].pid)


def _read(file: Path) -> Record | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    fields: dict[str, Any] = {
        name: data.get(name) for name in Record.__dataclass_fields__ if name in data
    }
    try:
        return Record(**fields)
    except TypeError:
        return None


def clear_stale(home: Path, say: Callable[[str], None]) -> None:
    """Remove the records of bridges that died without cleaning up, and stop their agents.

    An agent is stopped only while its pid still names the process recorded at start-up;
    otherwise the pid now belongs to something else and is left alone.
    """
    for file, entry in records(home):
        if entry.running():
            continue
        note = f"A bridge (pid {entry.pid}) stopped without cleaning up"
        if entry.agent_pid and entry.agent_identity:
            if liveness.terminate(entry.agent_pid, entry.agent_identity):
                note += f"; stopped the ngrok agent it left running (pid {entry.agent_pid})"
            elif liveness.identity(entry.agent_pid) == entry.agent_identity:
                note += (
                    f"; its ngrok agent (pid {entry.agent_pid}) would not stop: stop it "
                    "yourself, or the next tunnel may fail with ERR_NGROK_108"
                )
        with contextlib.suppress(OSError):
            file.unlink()
        say(note + "; removed its state file.")


def target(
    url: str | None, public: bool, secret: str | None, env: Mapping[str, str], home: Path
) -> tuple[str, str | None]:
    """The URL and bridge key ``test`` should use: flags, then env, then the running bridge.

    With no ``--url``, the one running bridge (with ``public``: the one with a tunnel) is
    chosen; several make the choice the user's, and only dead ones mean it is not running.
    """
    found = [entry for _, entry in records(home)]
    alive = [entry for entry in found if entry.running()]
    chosen: Record | None = None
    if url:
        base = url
        chosen = next((e for e in alive if _origin(base) in _origins(e)), None)
    else:
        candidates = [e for e in alive if e.public_url] if public else alive
        if len(candidates) > 1:
            raise _several(candidates, public)
        if candidates:
            chosen = candidates[0]
            base = str(chosen.public_url if public else chosen.local_url)
        elif found and not alive:
            raise _not_running(found)
        elif public:
            raise ConfigError(
                "No running bridge with a tunnel was found.",
                hint="Start one with `vapi-bridge serve` (tunnel on), or pass --url.",
            )
        else:
            base = DEFAULT_URL
    listed = env.get("VAPI_BRIDGE_SECRET", "").split(",")[0].strip() or None
    key = secret or listed or (chosen.secret if chosen else None)
    if key is None:
        with contextlib.suppress(keystore.ConfigFileError):
            key = keystore.load(home).get("bridge_secret")
    return base, key


def _origin(url: str) -> tuple[str, str]:
    """Scheme and host:port: a bridge's key goes only to that bridge, whatever the path.

    A malformed URL matches no bridge; judging it is the probe's job, not this lookup's.
    """
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:
        return "", url
    return parts.scheme.lower(), parts.netloc.lower()


def _origins(entry: Record) -> set[tuple[str, str]]:
    return {_origin(u) for u in (entry.local_url, entry.public_url) if u}


def _several(candidates: list[Record], public: bool) -> ConfigError:
    kind = "bridges with a tunnel are" if public else "bridges are"
    listing = "; ".join(entry.describe() for entry in candidates)
    return ConfigError(
        f"{len(candidates)} {kind} running ({listing}).",
        hint="Pick one with --url, e.g. --url "
        + str(candidates[0].public_url if public else candidates[0].local_url),
    )


def _not_running(dead: list[Record]) -> ProbeError:
    pids = ", ".join(str(entry.pid) for entry in dead)
    return ProbeError(
        f"The bridge is not running: it (pid {pids}) stopped without cleaning up.",
        hint="Start it with `vapi-bridge serve` (which also clears what it left behind), "
        "or pass --url.",
    )
