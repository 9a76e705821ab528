"""The public URL: an ngrok tunnel opened through pyngrok, with a deadline and plain errors.

pyngrok runs the ngrok agent binary and drives its local API. This module picks the binary
(explicit path, ``PYNGROK_NGROK_PATH``, a real ``ngrok`` on ``PATH``, one it downloaded before,
one pyngrok installed, else a download into the bridge's home), keeps the agent's config under
the bridge's home instead of the user's ngrok config (nothing is written there), starts no
agent without a token (it could only fail, after a download), hands the token to the agent
through its environment rather than its command line (where ``ps`` would show it), enforces
its own start-up deadline (pyngrok only checks between log lines), and maps ngrok's error
codes to one message each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vapi_bridge.errors import TunnelError
from vapi_bridge.settings import DEFAULT_TUNNEL_TIMEOUT

TOKEN_HINT = (
    "Run `vapi-bridge configure-key --ngrok` with the token from "
    "https://dashboard.ngrok.com/get-started/your-authtoken, or set NGROK_AUTHTOKEN."
)
_ERRORS: dict[str, tuple[str, str]] = {
    "ERR_NGROK_4018": ("ngrok needs an auth token to open a tunnel.", TOKEN_HINT),
    "ERR_NGROK_105": ("ngrok rejected the auth token.", TOKEN_HINT),
    "ERR_NGROK_107": ("ngrok rejected the auth token.", TOKEN_HINT),
    "ERR_NGROK_108": (
        "Your ngrok account already has its maximum of agent sessions online.",
        "Stop the other ngrok agent (or the other vapi-bridge) and retry.",
    ),
    "ERR_NGROK_334": (
        "That ngrok URL is already online in another agent session.",
        "Stop the other session using it, or drop --domain to get your account's dev URL.",
    ),
}


# How long the agent gets to relay what the bridge wrote last, before it is stopped.
RELAY_LINGER = 0.3


@dataclass
class Tunnel:
    """An open tunnel; :meth:`close` removes it and ends the agent process.

    ``agent_pid`` is recorded in the bridge's state, so a bridge killed without cleaning up
    leaves enough behind for the next start to stop its agent.
    """

    public_url: str
    agent_pid: int | None
    _config: Any

    def close(self, linger: float = RELAY_LINGER) -> None:
        """Stop the agent, after ``linger`` s: the last bytes of a reply the bridge has
        already written may still be on their way through the agent, and stopping it cuts
        them off (the caller would miss the end of the reply)."""
        from pyngrok import ngrok

        time.sleep(linger)
        with contextlib.suppress(Exception):
            ngrok.disconnect(self.public_url, pyngrok_config=self._config)
        with contextlib.suppress(Exception):
            ngrok.kill(pyngrok_config=self._config)


def find_agent(explicit: str | None) -> str | None:
    """The agent binary to run, or ``None`` to let pyngrok install its own.

    ``explicit`` (``--ngrok-path`` or ``PYNGROK_NGROK_PATH``) wins; a missing file there is an
    error rather than a silent download. Otherwise a real ``ngrok`` on ``PATH``, skipping the
    Python wrapper script that ``pip install pyngrok`` puts there.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise TunnelError(
                f"No ngrok agent at {path}.",
                hint="Fix --ngrok-path / PYNGROK_NGROK_PATH, or unset it to use ngrok from PATH.",
            )
        return str(path)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("ngrok", path=folder) if folder else None
        if found and not _is_python_wrapper(Path(found)):
            return found
    return None


def _agent_path(explicit: str | None, home: Path) -> tuple[str, bool]:
    """The agent to run, and whether pyngrok must download it there first.

    Downloads go into the bridge's home, never pyngrok's default folder (the user's own ngrok
    config directory); an agent pyngrok installed there earlier is still used.
    """
    from pyngrok import conf, installer

    found = find_agent(explicit)
    if found:
        return found, False
    own = home / "bin" / installer.get_ngrok_bin()
    for candidate in (own, Path(conf.DEFAULT_NGROK_PATH)):
        if candidate.is_file():
            return str(candidate), False
    return str(own), True


def _is_python_wrapper(path: Path) -> bool:
    """pyngrok's own ``ngrok`` console script: beside this Python, or a script importing pyngrok.

    On Windows that script is a launcher ``.exe``, so its folder is the telling sign.
    """
    if path.resolve().parent == Path(sys.executable).resolve().parent:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(1024)
    except OSError:
        return True
    return (
        head.startswith(b"#!") and re.search(rb"^\s*(from|import) pyngrok", head, re.M) is not None
    )


def stored_ngrok_token() -> str | None:
    """The token from the user's own ngrok config (``ngrok config add-authtoken``), if any."""
    found = ngrok_config_token()
    return found[0] if found is not None else None


def ngrok_config_token() -> tuple[str, Path] | None:
    """The token in the user's own ngrok config, and that file (for ``configure-key --show``)."""
    for path in _ngrok_config_paths():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(r"^\s*authtoken:\s*['\"]?([A-Za-z0-9_\-]+)", text, re.MULTILINE)
        if match:
            return match.group(1), path
    return None


def _ngrok_config_paths() -> list[Path]:
    home = Path.home()
    if sys.platform == "darwin":
        return [home / "Library/Application Support/ngrok/ngrok.yml", home / ".ngrok2/ngrok.yml"]
    if os.name == "nt":
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData/Local"))
        return [local / "ngrok/ngrok.yml", home / ".ngrok2/ngrok.yml"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [xdg / "ngrok/ngrok.yml", home / ".ngrok2/ngrok.yml"]


def open_tunnel(
    local_url: str,
    *,
    home: Path,
    ngrok_path: str | None = None,
    authtoken: str | None = None,
    domain: str | None = None,
    deadline: float = DEFAULT_TUNNEL_TIMEOUT,
    on_progress: Callable[[str], None] | None = None,
) -> Tunnel:
    """Open an HTTPS tunnel to ``local_url``; raises :class:`TunnelError` with cause and fix."""
    if not authtoken:
        raise TunnelError(
            "The tunnel needs an ngrok auth token, and none is configured.",
            hint="Get one free at https://dashboard.ngrok.com/get-started/your-authtoken, then "
            "run `vapi-bridge configure-key --ngrok` (or set NGROK_AUTHTOKEN).",
        )
    from pyngrok import installer

    logging.getLogger("pyngrok").setLevel(logging.CRITICAL)
    # pyngrok prints download progress on stdout, which carries only the URL here.
    installer._print_progress_enabled = False
    agent, download = _agent_path(ngrok_path, home)
    if download and on_progress:
        on_progress(f"Downloading the ngrok agent to {agent} (first run)...")
    os.environ["NGROK_AUTHTOKEN"] = authtoken
    options: dict[str, Any] = {}
    if domain:
        options["url"] = domain if "://" in domain else f"https://{domain}"
    config = _pyngrok_config(agent, home, deadline)
    url = _connect_within(config, local_url, options, deadline, authtoken)
    return Tunnel(public_url=url, agent_pid=_agent_pid(config), _config=config)


def _pyngrok_config(agent: str, home: Path, deadline: float) -> Any:
    from pyngrok import conf

    home.mkdir(parents=True, exist_ok=True)
    config = conf.PyngrokConfig(
        ngrok_path=agent,
        config_path=str(home / "ngrok.yml"),
        startup_timeout=int(deadline) + 1,
        # A terminal's Ctrl-C signals the whole foreground process group: in its own session
        # the agent keeps carrying live replies through the grace period, and the bridge
        # stops it last. (POSIX only: pyngrok 9 offers no process-group flag on Windows.)
        start_new_session=os.name == "posix",
    )
    # pyngrok copies NGROK_AUTHTOKEN into `--authtoken` on the agent's command line, where any
    # local user can read it; the agent reads the same variable from its environment instead.
    config.auth_token = None
    return config


def _connect_within(
    config: Any, local_url: str, options: dict[str, Any], deadline: float, authtoken: str
) -> str:
    """``ngrok.connect`` with a deadline of our own (pyngrok checks its own between lines)."""
    from pyngrok import ngrok

    outcome: dict[str, Any] = {}
    started = config.log_event_callback = _StartedAgent(config.ngrok_path)

    def connect() -> None:
        try:
            outcome["url"] = ngrok.connect(local_url, pyngrok_config=config, **options).public_url
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=connect, name="vapi-bridge-ngrok", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        _kill_starting_agent(config.ngrok_path)
        worker.join(5)
        raise TunnelError(
            f"The ngrok agent was not ready within {deadline:g}s.",
            hint="Check your network and ngrok's status page, or serve locally with --no-tunnel.",
        )
    if "error" in outcome:
        with contextlib.suppress(Exception):
            ngrok.kill(pyngrok_config=config)
        raise _tunnel_error(outcome["error"], authtoken, started.unread_error()) from None
    return str(outcome["url"])


class _StartedAgent:
    """Keeps hold of the agent pyngrok starts (from its first log line), to read the error it
    logged just before exiting when pyngrok did not.

    pyngrok stops reading the agent's log as soon as it sees the process has exited, and then
    forgets it; an agent that logs its error and exits at once (ERR_NGROK_108, a bad token)
    can leave that line in the pipe, and the user would get "unable to start" without a cause.
    """

    def __init__(self, ngrok_path: str) -> None:
        self.ngrok_path = ngrok_path
        self.agent: Any = None

    def __call__(self, log: Any) -> None:
        """pyngrok's ``log_event_callback``: called for each log line it reads."""
        if self.agent is None:
            self.agent = _agent_process(self.ngrok_path)

    def unread_error(self) -> str | None:
        agent = self.agent
        if agent is None or agent.proc.poll() is None or agent.proc.stdout is None:
            return None
        from pyngrok.log import NgrokLog

        with contextlib.suppress(OSError, ValueError):
            for line in agent.proc.stdout:  # the agent has exited: this reaches the end
                log = NgrokLog(line)
                if log.lvl in ("ERROR", "CRITICAL") and log.err:
                    return str(log.err)
        return None


def _agent_process(ngrok_path: str) -> Any:
    """pyngrok's record of the agent at ``ngrok_path`` (``None`` if none), looked up without
    side effects: ``ngrok.get_ngrok_process`` would start a new agent if this one had just
    died. It is pyngrok's private table (pyngrok is pinned below 10)."""
    from pyngrok import process

    return process._current_processes.get(ngrok_path)


def _agent_pid(config: Any) -> int | None:
    """The running agent's pid."""
    running = _agent_process(config.ngrok_path)
    return int(running.proc.pid) if running is not None else None


def _kill_starting_agent(ngrok_path: str) -> None:
    """Kill an agent pyngrok is still waiting on.

    pyngrok holds its process lock while it blocks reading the agent's log, so ``ngrok.kill``
    would wait forever; killing the process directly ends that read, and pyngrok then cleans
    up its own state and raises in the worker thread.
    """
    starting = _agent_process(ngrok_path)
    if starting is not None:
        with contextlib.suppress(OSError):
            starting.proc.kill()
            starting.proc.wait(5)


def _tunnel_error(
    exc: BaseException, authtoken: str | None, unread: str | None = None
) -> TunnelError:
    from pyngrok.exception import PyngrokNgrokError, PyngrokNgrokHTTPError, PyngrokNgrokInstallError

    if isinstance(exc, PyngrokNgrokInstallError):
        why = " ".join(str(exc).split())[:300]
        if authtoken:
            why = why.replace(authtoken, "***")
        return TunnelError(
            f"The ngrok agent is not installed and could not be downloaded ({why}).",
            hint="Install ngrok (https://ngrok.com/download) and pass --ngrok-path, "
            "or serve locally with --no-tunnel.",
        )
    text = str(exc)
    if isinstance(exc, PyngrokNgrokHTTPError):
        text = f"{text} {exc.body}"
    elif isinstance(exc, PyngrokNgrokError) and (exc.ngrok_error or unread):
        text = f"{text} {exc.ngrok_error or unread}"
    match = re.search(r"ERR_NGROK_\d+", text)
    if match and match.group(0) in _ERRORS:
        message, hint = _ERRORS[match.group(0)]
        return TunnelError(f"{message} ({match.group(0)})", hint=hint)
    if authtoken:
        text = text.replace(authtoken, "***")
    detail = " ".join(text.split())[:300]
    return TunnelError(
        f"ngrok failed to open the tunnel: {detail}",
        hint="See https://ngrok.com/docs/errors for the code, or serve locally with --no-tunnel.",
    )
