"""``serve``: wire settings, upstream, app, server and tunnel together, and stop in order.

Start-up: build the app, bind the server, clear what a killed bridge left behind (its
state file and ngrok agent), open the tunnel (failure is reported, local serving goes on),
record where this bridge listens, print what to paste into Vapi. Stop (first Ctrl-C /
SIGTERM): stop accepting, let live streams finish, then close the tunnel and its agent (which
runs in its own session, so a terminal's Ctrl-C does not end it early), remove the state
file. stdout carries exactly one line, the URL that works now; everything else goes to
stderr.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from vapi_bridge import keystore, state
from vapi_bridge.errors import ConfigError, TunnelError
from vapi_bridge.server import local_url
from vapi_bridge.upstream import check_model_later

if TYPE_CHECKING:
    from vapi_bridge.app import Bridge
    from vapi_bridge.assistant import Link
    from vapi_bridge.server import Server
    from vapi_bridge.settings import Settings
    from vapi_bridge.tunnel import Tunnel

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(settings: Settings, console: Console) -> None:
    """Run the bridge until a stop signal; raises :class:`ConfigError` on bad settings."""
    from vapi_bridge import server

    link = _assistant_link(settings)
    http, bridge = _bind(settings)
    with server.stop_signals() as stop:
        try:
            http.start()
        except OSError as exc:
            raise ConfigError(
                f"The bridge could not start: {exc}.",
                hint="Check the log above; try --workers 1.",
            ) from None
        # Before the tunnel: an agent left by a killed bridge would hold the ngrok session.
        state.clear_stale(
            settings.home, lambda text: console.print(text, style="yellow", markup=False)
        )
        tunnel, tunnel_error = _open_tunnel(settings, http.port, console)
        public = tunnel.public_url if tunnel is not None else settings.public_url
        try:
            state.write(
                settings.home,
                state.record(
                    pid=os.getpid(),
                    local_url=local_url(settings.host, http.port),
                    public_url=public,
                    secret=settings.bridge_key,
                    agent_pid=tunnel.agent_pid if tunnel is not None else None,
                ),
            )
            unwired = link.open(public, bridge_key=settings.bridge_key) if link else None
            _announce(settings, http.port, public, tunnel_error, console, link, unwired)
            check_model_later(settings)
            server.wait(stop)
            _drain(settings, http, bridge, link, console)
        finally:
            _release(settings, http, bridge, link, tunnel, console)
    console.print("[dim]vapi-bridge stopped.[/]")


def _bind(settings: Settings) -> tuple[Server, Bridge | None]:
    """The server on its port. One process builds its app here; --workers builds it once in
    its own child, which reports a bad key, hook or prompt file back as the same error."""
    from vapi_bridge import server

    bridge: Bridge | None = None
    try:
        if settings.workers > 1:
            from vapi_bridge.prefork import PreforkServer

            return PreforkServer(settings), None
        from vapi_bridge.app import bridge_of, create_app

        app = create_app(settings)
        bridge = bridge_of(app)
        return server.BridgeServer(app, settings.host, settings.port, bridge.end_live_turns), bridge
    except OSError as exc:
        if bridge is not None:
            bridge.close(0)
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}.",
            hint=listen_hint(settings.port, exc=exc),
        ) from None


def _drain(
    settings: Settings, http: Server, bridge: Bridge | None, link: Link | None, console: Console
) -> None:
    """The stop: unready, unwired, then live replies get the grace period."""
    # /ready answers 503 from now on, so a load balancer sends no new calls here.
    if bridge is not None:
        bridge.draining = True
    # First, so Vapi sends no new calls here while live ones finish.
    _unwire(link, console)
    console.print("[dim]Stopping: finishing live replies...[/]")
    cut = http.stop(settings.shutdown_grace)
    if cut:
        console.print(f"[yellow]Ended {cut} live stream(s) early to shut down.[/]")


def _release(
    settings: Settings,
    http: Server,
    bridge: Bridge | None,
    link: Link | None,
    tunnel: Tunnel | None,
    console: Console,
) -> None:
    """What a stop (or a failed start) leaves in order: the tunnel goes last but for state."""
    _unwire(link, console)
    lost = bridge.close(settings.shutdown_grace) if bridge is not None else 0
    lost += getattr(http, "lost", 0)
    if lost:
        console.print(
            f"[yellow]{lost} transcript line(s) or reply hook call(s) did not run "
            "before shutdown.[/]"
        )
    if tunnel is not None:
        tunnel.close()
    state.remove(settings.home, os.getpid())


def _assistant_link(settings: Settings) -> Link | None:
    """The Vapi assistant to wire, checked before anything starts (a missing key is exit 2)."""
    if settings.assistant is None:
        return None
    from vapi_bridge.assistant import Link, OAuthPlan

    headers = None
    wired = settings
    if settings.profile is not None and settings.profiles is not None:
        from vapi_bridge import profiles

        known = profiles.names_in(settings.profiles)
        if settings.profile not in known:
            raise ConfigError(
                f"--profile '{settings.profile}' is not in {settings.profiles}.",
                hint="Profiles there: " + (", ".join(known) or "none") + ".",
            )
        headers = {profiles.HEADER: settings.profile}
        wired = profiles.settings_for(settings.profiles, settings, settings.profile) or settings
    return Link(
        assistant_id=settings.assistant,
        api_key=settings.vapi_api_key,
        base_url=settings.vapi_base_url,
        home=settings.home,
        model=wired.model or wired.default_model,
        keep=settings.keep_assistant,
        headers=headers,
        oauth=(
            OAuthPlan(settings.oauth_client_id, settings.oauth_client_secret)
            if settings.oauth and settings.oauth_client_id and settings.oauth_client_secret
            else None
        ),
    )


def _unwire(link: Link | None, console: Console) -> None:
    line = link.close() if link is not None else None
    if line:
        console.print(line, markup=False, highlight=False)


# Errors of a host that is no address of this machine: not one of its interfaces, or a name
# that does not resolve (socket.create_server re-raises a resolver error as a plain OSError
# with the resolver's code).
_NOT_HERE = frozenset(
    [errno.EADDRNOTAVAIL]
    # Only the resolver codes no errno can equal: glibc's are negative, Windows' are 10000 and
    # up; macOS's (1 to 15) are also real errno values, so there only a gaierror counts.
    + [
        code
        for code in (getattr(socket, name) for name in dir(socket) if name.startswith("EAI_"))
        if code < 0 or code >= 10000
    ]
)


def listen_hint(port: int, platform: str = sys.platform, exc: OSError | None = None) -> str:
    """What to do when the listening socket cannot be made: a host that is no address of
    this machine, a port that needs privileges, or (the usual case) a busy port, which on
    macOS is AirPlay Receiver's when it is 5000."""
    code = exc.errno if exc is not None else errno.EADDRINUSE
    if code == errno.EACCES:
        return "This port needs administrator rights: pick one above 1023 with --port."
    if code != errno.EADDRINUSE and (isinstance(exc, socket.gaierror) or code in _NOT_HERE):
        return (
            "--host must be an address of this machine: 127.0.0.1 (this machine only) or "
            "0.0.0.0 (every interface)."
        )
    if platform == "darwin" and port == 5000:
        return "Pick another port with --port (on macOS, AirPlay Receiver holds 5000)."
    return "Pick another port with --port, or stop the program that holds this one."


def complete_settings(settings: Settings) -> Settings:
    """Fill what only the user's files can give: the stored (or new) bridge key and OAuth2
    client, and the ngrok token from the user's own ngrok config when none was configured for
    the bridge."""
    changes: dict[str, Any] = {}
    if settings.no_auth:
        changes["secret"] = ()
    elif not settings.secret:
        changes["secret"] = (keystore.bridge_secret(settings.home),)
    if settings.oauth and not (settings.oauth_client_id and settings.oauth_client_secret):
        client_id, client_secret = keystore.oauth_client(settings.home)
        changes["oauth_client_id"] = settings.oauth_client_id or client_id
        changes["oauth_client_secret"] = settings.oauth_client_secret or client_secret
    if settings.tunnel and settings.ngrok_authtoken is None:
        from vapi_bridge.tunnel import stored_ngrok_token

        changes["ngrok_authtoken"] = stored_ngrok_token()
    return replace(settings, **changes) if changes else settings


def _open_tunnel(
    settings: Settings, port: int, console: Console
) -> tuple[Tunnel | None, TunnelError | None]:
    if not settings.tunnel:
        return None, None
    from vapi_bridge.tunnel import open_tunnel

    try:
        tunnel = open_tunnel(
            local_url(settings.host, port),
            home=settings.home,
            ngrok_path=settings.ngrok_path,
            authtoken=settings.ngrok_authtoken,
            domain=settings.domain,
            deadline=settings.tunnel_timeout,
            on_progress=lambda text: console.print(f"[dim]{text}[/]"),
        )
    except TunnelError as exc:
        return None, exc
    return tunnel, None


def _announce(
    settings: Settings,
    port: int,
    public: str | None,
    tunnel_error: TunnelError | None,
    console: Console,
    link: Link | None = None,
    unwired: str | None = None,
) -> None:
    """The panel, then what to paste into Vapi, each value alone on its own line.

    A value inside the panel's border would be folded at a narrow width and copy broken; on
    a line of its own it copies whole at any width.
    """
    local = local_url(settings.host, port)
    console.print(_panel(settings, local, link))
    if link is not None and link.wired is not None:
        console.print(link.wired.describe(), markup=False, highlight=False)
    if unwired is not None:
        console.print("[bold yellow]Assistant not wired:[/] ", end="")
        console.print(unwired, markup=False, highlight=False)
    if public is not None:
        console.print(
            "[bold]Custom LLM URL[/] [dim](paste the base URL: Vapi appends /chat/completions)[/]"
        )
        _print_value(console, public)
    if settings.bridge_key:
        _announce_key(settings, console)
    if settings.oauth:
        _announce_oauth(settings, public or local, console)
    _warn(settings, public, local, tunnel_error, console)
    try_it = "vapi-bridge test --public" if public is not None else "vapi-bridge test"
    console.print(f"[dim]Try it: {try_it}   Stop: Ctrl-C[/]")
    # Always exactly one URL, the one that works now, so `serve > url.txt` never waits forever.
    sys.stdout.write((public or local) + "\n")
    sys.stdout.flush()


def _panel(settings: Settings, local: str, link: Link | None) -> Panel:
    model = settings.model or settings.default_model
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row(
        "Model", model + ("  [dim](forced for every request)[/]" if settings.model else "")
    )
    for vapi_name, target in settings.model_map:
        table.add_row("", f"[dim]{vapi_name} -> {target}[/]")
    if settings.fallback_models:
        table.add_row("Fallbacks", " -> ".join(settings.fallback_models))
    if settings.profiles is not None:
        from vapi_bridge.profiles import HEADER, names_in

        names = ", ".join(names_in(settings.profiles)) or "none yet"
        table.add_row("Profiles", f"{names}  [dim](picked by the {HEADER} header)[/]")
    table.add_row(
        "If all fail",
        "an HTTP error (--no-apology)" if settings.no_apology else "the caller hears the apology",
    )
    if not settings.secret:
        table.add_row("API key", "[bold red]none: auth is off (--no-auth)[/]")
    table.add_row("Local URL", local)
    table.add_row("Upstream", "demo model (offline)" if settings.demo else settings.base_url)
    if link is not None and link.wired is not None:
        table.add_row("Assistant", f"{link.wired.name} ({link.wired.id}): wired to this bridge")
    title = "vapi-bridge is ready" + (" (demo)" if settings.demo else "")
    return Panel(table, title=title, border_style="green", expand=False)


def _announce_key(settings: Settings, console: Console) -> None:
    """The bridge key, whole only on a terminal: when stderr goes to a file or a log
    collector it is masked, and the line names the ``0600`` state file that holds it."""
    console.print("[bold]API key[/] [dim](store it as the Custom LLM credential in Vapi)[/]")
    key = settings.bridge_key or ""
    if console.is_terminal:
        _print_value(console, key)
    else:
        held_in = state.path(settings.home, os.getpid())
        _print_value(
            console,
            f"{keystore.mask(key)}  (masked: stderr is not a terminal; "
            f'the whole key is "secret" in {held_in})',
        )
    if len(settings.secret) > 1:
        console.print(
            f"[dim]Also accepted: {len(settings.secret) - 1} older key(s), for rotation "
            "(until dropped from --secret or VAPI_BRIDGE_SECRET, or, stored ones, until "
            "`vapi-bridge configure-key --retire-old-keys`).[/]"
        )


def _warn(
    settings: Settings,
    public: str | None,
    local: str,
    tunnel_error: TunnelError | None,
    console: Console,
) -> None:
    if tunnel_error is not None:
        console.print(f"[bold yellow]Tunnel not opened:[/] {escape(tunnel_error.cli_message())}")
        console.print(f"[yellow]Still serving locally at {local}.[/]")
    if not settings.secret and not settings.oauth:
        where = "on the public internet" if public else "without a key"
        console.print(f"[bold red]WARNING: anyone who finds this bridge can use it {where}.[/]")
    if settings.host not in LOOPBACK:
        console.print(
            f"[bold red]WARNING: listening on {settings.host}, beyond this machine; "
            "other hosts on the network can reach the bridge.[/]"
        )


def _announce_oauth(settings: Settings, base: str, console: Console) -> None:
    """The three values Vapi's OAuth2 credential asks for, each on a line of its own; the
    secret shown like the bridge key: whole on a terminal, masked in a log."""
    console.print("[bold]OAuth2[/] [dim](Vapi: credential > OAuth2 client credentials)[/]")
    console.print("[bold]Token URL[/]")
    _print_value(console, base + "/oauth/token")
    console.print("[bold]Client ID[/]")
    _print_value(console, settings.oauth_client_id or "")
    console.print("[bold]Client secret[/]")
    secret = settings.oauth_client_secret or ""
    if console.is_terminal:
        _print_value(console, secret)
    else:
        _print_value(
            console,
            f"{keystore.mask(secret)}  (masked: stderr is not a terminal; the whole secret is "
            f'"oauth_client_secret" in {keystore.config_path(settings.home)}, or in '
            "VAPI_BRIDGE_OAUTH_CLIENT_SECRET)",
        )


def _print_value(console: Console, value: str) -> None:
    """One value on a line of its own, never wrapped or cropped by rich, no markup read."""
    console.print(value, markup=False, highlight=False, soft_wrap=True, crop=False)
