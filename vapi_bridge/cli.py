"""The ``vapi-bridge`` command line: parse options, call the modules that do the work.

Heavy libraries (flask, sambanova, pyngrok, rich) are imported inside the commands, so
``vapi-bridge --help`` stays instant. Every :class:`BridgeError` ends the command with its
message and hint on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from vapi_bridge import __version__
from vapi_bridge.errors import BridgeError, ConfigError
from vapi_bridge.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_MODEL,
    DEFAULT_PORT,
    DEFAULT_TUNNEL_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT,
)

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="vapi-bridge",
    help="Put SambaNova's fast open models behind Vapi's Custom LLM provider.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _reports_errors(command: F) -> F:
    """Turn bridge errors into 'cause -> fix' on stderr and an exit code; no tracebacks."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BridgeError as exc:
            _stderr().print(f"[bold red]Error:[/] {exc.cli_message()}", markup=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vapi-bridge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Put SambaNova's fast open models behind Vapi's Custom LLM provider."""


def _stored(home: Path) -> dict[str, Any]:
    from vapi_bridge import keystore

    try:
        return keystore.load(home)
    except keystore.ConfigFileError as exc:
        raise ConfigError(
            f"Cannot read the stored config: {exc}.",
            hint="Fix or delete that file, then run `vapi-bridge configure-key` again.",
        ) from None


def _model_map(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ConfigError(
                f"--model-map '{pair}' is not NAME=MODEL.",
                hint="Example: --model-map gpt-4o=Meta-Llama-3.3-70B-Instruct",
            )
        out.append((name.strip(), target.strip()))
    return tuple(out)


@app.command()
@_reports_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
    base_url: Annotated[
        str | None,
        typer.Option(help="SambaNova API base URL. [env: SAMBANOVA_BASE_URL]"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Force this model for every request. [env: VAPI_BRIDGE_MODEL]"),
    ] = None,
    model_map: Annotated[
        list[str] | None,
        typer.Option(help="Route a Vapi model name to a SambaNova model: NAME=MODEL. Repeatable."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(help="Bridge key Vapi must send. [env: VAPI_BRIDGE_SECRET; default: stored]"),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Accept requests without a bridge key (unsafe).")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Use the built-in offline model: no key, no network.")
    ] = False,
    tunnel: Annotated[
        bool, typer.Option("--tunnel/--no-tunnel", help="Open an ngrok tunnel for Vapi.")
    ] = True,
    ngrok_path: Annotated[
        str | None, typer.Option(help="ngrok agent binary. [env: PYNGROK_NGROK_PATH]")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="Reserved ngrok domain to use. [env: VAPI_BRIDGE_DOMAIN]"),
    ] = None,
    tunnel_timeout: Annotated[
        float, typer.Option(min=0.5, max=300, help="Seconds to wait for the ngrok agent.")
    ] = DEFAULT_TUNNEL_TIMEOUT,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Worker processes (POSIX, gunicorn); 1 = one process."),
    ] = 1,
    shutdown_grace: Annotated[
        float, typer.Option(min=0, max=600, help="Seconds live replies get to finish on stop.")
    ] = 5.0,
    upstream_timeout: Annotated[
        float,
        typer.Option(min=0.5, max=120, help="Seconds to wait for SambaNova's first token."),
    ] = DEFAULT_UPSTREAM_TIMEOUT,
    max_body: Annotated[
        int, typer.Option(min=1024, help="Largest request body accepted, in bytes.")
    ] = DEFAULT_MAX_BODY,
    system_prompt: Annotated[
        str | None, typer.Option(help="System prompt to apply to every request.")
    ] = None,
    system_prompt_file: Annotated[
        Path | None,
        typer.Option(help="File holding the system prompt; re-read when it changes."),
    ] = None,
    system_prompt_mode: Annotated[
        str, typer.Option(help="replace, prepend or append to Vapi's system message.")
    ] = "replace",
    hook: Annotated[
        list[str] | None,
        typer.Option(help="Middleware hook module:function. Repeatable."),
    ] = None,
    reply_hook: Annotated[
        list[str] | None,
        typer.Option(help="Hook module:function called with each finished reply. Repeatable."),
    ] = None,
    transcript_dir: Annotated[
        Path | None, typer.Option(help="Write one JSON Lines transcript per Vapi call here.")
    ] = None,
    log_format: Annotated[str, typer.Option(help="Request log format: text or json.")] = "text",
) -> None:
    """Start the bridge, open an ngrok tunnel, and print what to paste into Vapi."""
    from vapi_bridge import runner
    from vapi_bridge.settings import home_dir, resolve

    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format '{log_format}' is not text or json.", hint="Pick one.")
    if system_prompt_mode not in ("replace", "prepend", "append"):
        raise ConfigError(
            f"--system-prompt-mode '{system_prompt_mode}' is not replace, prepend or append.",
            hint="Pick one of the three.",
        )
    if system_prompt is not None and system_prompt_file is not None:
        raise ConfigError(
            "--system-prompt and --system-prompt-file both given.", hint="Use one of them."
        )
    if secret is not None and len(secret.strip()) < 16:
        raise ConfigError(
            "--secret must be at least 16 characters: the bridge key guards your SambaNova "
            "quota behind a public URL.",
            hint="Leave it out to use the stored random key, or pass a longer one.",
        )
    env = dict(os.environ)
    home = home_dir(env)
    stored = _stored(home)
    flags: dict[str, Any] = {
        "home": home,
        "host": host,
        "port": port,
        "base_url": base_url,
        "model": model,
        "secret": secret,
        "no_auth": no_auth,
        "demo": demo,
        "tunnel": tunnel,
        "ngrok_path": ngrok_path,
        "domain": domain,
        "tunnel_timeout": tunnel_timeout,
        "shutdown_grace": shutdown_grace,
        "workers": workers,
        "upstream_timeout": upstream_timeout,
        "max_body": max_body,
        "log_format": log_format,
        "model_map": _model_map(model_map or []),
        "system_prompt": system_prompt,
        "system_prompt_file": system_prompt_file,
        "system_prompt_mode": system_prompt_mode,
        "hooks": tuple(hook or ()),
        "reply_hooks": tuple(reply_hook or ()),
        "transcript_dir": transcript_dir,
    }
    settings = runner.complete_settings(resolve(flags, env, stored))
    runner.setup_logging(settings.log_format)
    runner.serve(settings, _stderr())


@app.command()
@_reports_errors
def test(
    url: Annotated[
        str | None, typer.Option(help="Server to test (base URL or full /chat/completions URL).")
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Test through the running bridge's tunnel URL.")
    ] = False,
    message: Annotated[str | None, typer.Option(help="What the caller says.")] = None,
    model: Annotated[str, typer.Option(help="Model name to send, as Vapi would.")] = DEFAULT_MODEL,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Ask for one JSON reply instead of a stream.")
    ] = False,
    secret: Annotated[
        str | None,
        typer.Option(help="Bridge key to send. [env: VAPI_BRIDGE_SECRET; default: the bridge's]"),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the reply.")] = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one machine-readable result on stdout.")
    ] = False,
) -> None:
    """Send a Vapi-shaped request, show the reply live, and check it the way Vapi would."""
    from vapi_bridge import probe, state
    from vapi_bridge.settings import home_dir

    env = dict(os.environ)
    base, key = state.target(url, public, secret, env, home_dir(env))
    live = None if as_json else _live_writer()
    result = probe.run(
        base,
        secret=key,
        message=message or probe.DEFAULT_MESSAGE,
        model=model,
        stream=not no_stream,
        timeout=timeout,
        on_text=live,
    )
    probe.report(result, as_json=as_json, console=_stderr())
    if not result.ok:
        raise typer.Exit(1)


def _live_writer() -> Callable[[str], None]:
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return write


@app.command("configure-key")
@_reports_errors
def configure_key(
    ngrok: Annotated[
        bool, typer.Option("--ngrok", help="Store the ngrok auth token instead.")
    ] = False,
    vapi: Annotated[
        bool,
        typer.Option("--vapi", help="Store the Vapi private API key instead (for --assistant)."),
    ] = False,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the key from standard input (no prompt).")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Store without checking it online first.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Show what is configured (masked) and from where.")
    ] = False,
    remove: Annotated[
        bool,
        typer.Option("--remove", help="Remove the stored key (with --ngrok / --vapi: that one)."),
    ] = False,
    new_bridge_key: Annotated[
        bool, typer.Option("--new-bridge-key", help="Replace the bridge key Vapi sends.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="With --new-bridge-key: do not ask (for scripts).")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option(help="SambaNova API base URL to verify against.")
    ] = None,
    vapi_base_url: Annotated[
        str | None,
        typer.Option(help="Vapi API URL to verify --vapi against. [env: VAPI_BASE_URL]"),
    ] = None,
) -> None:
    """Store the SambaNova key (or the ngrok token, or the Vapi key) safely, verified first."""
    from vapi_bridge import configure
    from vapi_bridge.settings import home_dir, pick

    configure.check_options(
        [
            option
            for option, given in (
                ("--show", show),
                ("--remove", remove),
                ("--new-bridge-key", new_bridge_key),
                ("--ngrok", ngrok),
                ("--vapi", vapi),
                ("--stdin", stdin),
                ("--no-verify", no_verify),
                ("--yes", yes),
                ("--base-url", base_url is not None),
                ("--vapi-base-url", vapi_base_url is not None),
            )
            if given
        ]
    )
    env = dict(os.environ)
    home = home_dir(env)
    console = _stderr()
    if show:
        for label, value, source in configure.describe(home, env):
            typer.echo(f"{label:30} {value:16} {source}".rstrip())
        return
    field = "ngrok_authtoken" if ngrok else "vapi_api_key" if vapi else "sambanova_api_key"
    if remove:
        console.print(configure.remove(home, field, env))
        return
    if new_bridge_key:
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    "--new-bridge-key replaces the key Vapi sends, and there is no terminal "
                    "to confirm it: nothing was changed.",
                    hint="Add --yes to confirm in a script.",
                )
            # Asked on stderr and read from stdin by hand: stdout carries only the new key.
            sys.stderr.write(
                "Replace the bridge key? Vapi keeps sending the old one until its credential "
                "is updated (serve --assistant does it). [y/N]: "
            )
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                console.print("Kept the current bridge key.")
                raise typer.Exit(1)
        secret = configure.new_bridge_key(home)
        console.print("New bridge key stored. Update the Custom LLM credential in Vapi:")
        typer.echo(secret)
        return
    vapi_url = configure.vapi_base_url(vapi_base_url, env) if vapi else ""
    label = configure.label(field)
    raw = sys.stdin.readline() if stdin else typer.prompt(label, hide_input=True)
    url = pick("base_url", base_url, env, _stored(home), default=DEFAULT_BASE_URL)
    console.print(
        configure.store(
            home, field, raw, verify=not no_verify, base_url=url, vapi_base_url=vapi_url
        )
    )


@app.command()
@_reports_errors
def assistants(
    vapi_base_url: Annotated[
        str | None, typer.Option(help="Vapi API URL. [env: VAPI_BASE_URL]")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="List at most this many.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the list as JSON on stdout.")
    ] = False,
) -> None:
    """List the Vapi account's assistants, to pick one for `serve --assistant ID`."""
    import dataclasses
    import json

    from vapi_bridge import assistant, configure
    from vapi_bridge.settings import home_dir
    from vapi_bridge.vapi import VapiClient

    env = dict(os.environ)
    home = home_dir(env)
    url = configure.vapi_base_url(vapi_base_url, env)
    key = configure.vapi_api_key(home, env)
    with VapiClient(key, url) as client:
        found = client.list_assistants(limit=limit)
    urls, keys = assistant.this_bridge(home)
    rows = assistant.listing(found, urls=urls, keys=keys)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    elif rows:
        typer.echo(assistant.table(rows))
    else:
        _stderr().print("This Vapi account has no assistants yet: create one in the dashboard.")


def main() -> None:
    """Console-script entry point."""
    app()
