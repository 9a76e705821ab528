"""``serve``: wire settings, upstream, app, server and tunnel together, and stop in order.

Start-up: build the app, bind the server, open the tunnel (failure is reported, local
serving goes on), print what to paste into Vapi, record where the bridge listens. Stop (first
Ctrl-C / SIGTERM): stop accepting, let live streams finish, close the tunnel and its agent,
remove the state file. stdout carries only the URL; everything else goes to stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from vapi_bridge import keystore, state
from vapi_bridge.errors import ConfigError, TunnelError
from vapi_bridge.server import local_url
from vapi_bridge.upstream import check_model_later

if TYPE_CHECKING:
    from vapi_bridge.app import Bridge
    from vapi_bridge.settings import Settings
    from vapi_bridge.tunnel import Tunnel

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(settings: Settings, console: Console) -> None:
    """Run the bridge until a stop signal; raises :class:`ConfigError` on bad settings."""
    from vapi_bridge import server

    # One process builds its app here; --workers builds it once in its own child, which
    # reports a bad key, hook or prompt file back as the same error.
    bridge: Bridge | None = None
    try:
        if settings.workers > 1:
            from vapi_bridge.prefork import PreforkServer

            http: server.Server = PreforkServer(settings)
        else:
            from vapi_bridge.app import bridge_of, create_app

            app = create_app(settings)
            bridge = bridge_of(app)
            http = server.BridgeServer(app, settings.host, settings.port, bridge.end_live_turns)
    except OSError as exc:
        if bridge is not None:
            bridge.close(0)
        raise ConfigError(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}.",
            hint="Pick another port with --port (on macOS, AirPlay Receiver holds 5000).",
        ) from None
    with server.stop_signals() as stop:
        try:
            http.start()
        except OSError as exc:
            raise ConfigError(
                f"The bridge could not start: {exc}.",
                hint="Check the log above; try --workers 1.",
            ) from None
        tunnel, tunnel_error = _open_tunnel(settings, http.port, console)
        try:
            state.write(
                settings.home,
                pid=os.getpid(),
                local_url=local_url(settings.host, http.port),
                public_url=tunnel.public_url if tunnel is not None else None,
                secret=settings.secret,
            )
            _announce(settings, http.port, tunnel, tunnel_error, console)
            check_model_later(settings)
            server.wait(stop)
            console.print("[dim]Stopping: finishing live replies...[/]")
            if bridge is not None:
                bridge.draining = True
            cut = http.stop(settings.shutdown_grace)
            if cut:
                console.print(f"[yellow]Ended {cut} live stream(s) early to shut down.[/]")
        finally:
            lost = bridge.close(settings.shutdown_grace) if bridge is not None else 0
            lost += getattr(http, "lost", 0)
            if lost:
                console.print(
                    f"[yellow]{lost} transcript line(s) or reply hook call(s) did not run "
                    "before shutdown.[/]"
                )
            if tunnel is not None:
                tunnel.close()
            state.remove(settings.home)
    console.print("[dim]vapi-bridge stopped.[/]")


def complete_settings(settings: Settings) -> Settings:
    """Fill what only the user's files can give: the stored (or new) bridge key, and the
    ngrok token from the user's own ngrok config when none was configured for the bridge."""
    changes: dict[str, Any] = {}
    if settings.no_auth:
        changes["secret"] = None
    elif settings.secret is None:
        changes["secret"] = keystore.bridge_secret(settings.home)
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
    tunnel: Tunnel | None,
    tunnel_error: TunnelError | None,
    console: Console,
) -> None:
    local = local_url(settings.host, port)
    model = settings.model or settings.default_model
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if tunnel is not None:
        table.add_row("Custom LLM URL", f"[bold green]{tunnel.public_url}[/]")
        table.add_row("", "[dim]paste the base URL: Vapi appends /chat/completions[/]")
    table.add_row(
        "Model", model + ("  [dim](forced for every request)[/]" if settings.model else "")
    )
    for vapi_name, target in settings.model_map:
        table.add_row("", f"[dim]{vapi_name} -> {target}[/]")
    if settings.secret:
        table.add_row("API key", settings.secret)
        table.add_row("", "[dim]store it as the Custom LLM credential in Vapi[/]")
    else:
        table.add_row("API key", "[bold red]none: auth is off (--no-auth)[/]")
    table.add_row("Local URL", local)
    table.add_row("Upstream", "demo model (offline)" if settings.demo else settings.base_url)
    title = "vapi-bridge is ready" + (" (demo)" if settings.demo else "")
    console.print(Panel(table, title=title, border_style="green", expand=False))
    if tunnel_error is not None:
        console.print(f"[bold yellow]Tunnel not opened:[/] {tunnel_error.cli_message()}")
        console.print(f"[yellow]Still serving locally at {local}.[/]")
    if settings.secret is None:
        where = "on the public internet through the tunnel" if tunnel else "without a key"
        console.print(f"[bold red]WARNING: anyone who finds this bridge can use it {where}.[/]")
    if settings.host not in LOOPBACK:
        console.print(
            f"[bold red]WARNING: listening on {settings.host}, beyond this machine; "
            "other hosts on the network can reach the bridge.[/]"
        )
    console.print("[dim]Try it: vapi-bridge test   Stop: Ctrl-C[/]")
    url = tunnel.public_url if tunnel is not None else (local if not settings.tunnel else None)
    if url:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
