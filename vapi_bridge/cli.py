"""The ``vapi-bridge`` command line: parse options, call the modules that do the work.

Heavy libraries (flask, sambanova, pyngrok, rich) are imported inside the commands, so
``vapi-bridge --help`` stays instant. ``serve``'s options are built from the declarations in
:mod:`vapi_bridge.settings`, so an option is declared once. Every error ends the command with
one message and a hint on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

from vapi_bridge import __version__, settings
from vapi_bridge.errors import BridgeError, ConfigError
from vapi_bridge.settings import DEFAULT_BASE_URL, DEFAULT_MODEL

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="vapi-bridge",
    help="Put SambaNova's fast open models behind Vapi's Custom LLM provider.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

F = TypeVar("F", bound=Callable[..., Any])
_debug = False


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _reports_errors(command: F) -> F:
    """The last line of defence: every failure is one message on stderr and an exit code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BridgeError as exc:
            from rich.markup import escape

            _stderr().print(f"[bold red]Error:[/] {escape(exc.cli_message())}", markup=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
        except (KeyboardInterrupt, typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except Exception as exc:
            if _debug:
                raise
            from rich.markup import escape

            _stderr().print(
                f"[bold red]Error:[/] vapi-bridge failed unexpectedly: "
                f"{exc.__class__.__name__}: {escape(_one_line(exc))}\n"
                "  -> Run again with `vapi-bridge --debug ...` for the details, and report it.",
                markup=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vapi-bridge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for unexpected errors.")
    ] = False,
) -> None:
    """Put SambaNova's fast open models behind Vapi's Custom LLM provider."""
    global _debug
    _debug = debug


def _stored(home: Path) -> dict[str, Any]:
    from vapi_bridge import configure

    return configure.load(home)


class GroupedCommand(TyperCommand):
    """Help that lists options under their settings group instead of one long list."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        group_of = {f.name: spec.group for f, spec in settings.options()}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(group_of.get(param.name or "", "Other"), []).append(record)
        for group in (*settings.GROUPS, "Other"):
            if group in groups:
                with formatter.section(group):
                    formatter.write_dl(groups[group])


SERVE_EPILOG = (
    "Keys come from the environment or the stored config, not from flags (flags show in "
    "`ps`): SAMBANOVA_API_KEY (or `vapi-bridge configure-key`), NGROK_AUTHTOKEN "
    "(`configure-key --ngrok`), VAPI_API_KEY (`configure-key --vapi`), VAPI_BRIDGE_SECRET "
    "(the bridge keys, comma-separated), VAPI_BRIDGE_METRICS_TOKEN, "
    "VAPI_BRIDGE_OAUTH_CLIENT_ID and VAPI_BRIDGE_OAUTH_CLIENT_SECRET. PORT is the port when "
    "--port is not given. VAPI_BRIDGE_HOME moves the config folder."
)


def _serve_signature() -> inspect.Signature:
    """``serve``'s parameters, one per declared setting that has a flag."""
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    for f, spec in settings.options():
        if spec.flag is None:
            continue
        help_text = spec.help + (f" [env: {', '.join(spec.env)}]" if spec.env else "")
        annotation = str(f.type)  # annotations are strings (postponed evaluation)
        kind = _type_of(annotation)
        info = typer.Option(
            spec.flag,
            help=help_text,
            metavar=spec.metavar or _choices(annotation),
            show_default=not spec.secret and f.default not in (None, (), False),
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None if kind is list else f.default,
                annotation=Annotated[kind, info],
            )
        )
    return inspect.Signature(params)


def _type_of(annotation: str) -> Any:
    """The click-facing type for a settings field's annotation. Numbers and choices reach
    the settings' own parser as text, so a bad flag gets the message a bad environment
    variable gets (``--port 'abc' must be a whole number from 0 to 65535``), not click's."""
    if annotation.startswith("tuple"):
        return list[str]
    if "Path" in annotation:
        return Path | None
    if annotation.startswith("bool"):
        return bool
    return str | None if "None" in annotation else str


def _choices(annotation: str) -> str | None:
    """``<a|b|c>`` for a setting that is one of a few words, as click shows a choice."""
    kind = getattr(settings, annotation, None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "<" + "|".join(str(member.value) for member in kind) + ">"
    return None


@_reports_errors
def serve(ctx: typer.Context, **values: Any) -> None:
    """Start the bridge, open an ngrok tunnel, and print what to paste into Vapi."""
    from vapi_bridge import reqlog, runner

    given = {
        name: value
        for name, value in values.items()
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    env = settings.environment()
    home = settings.home_dir(env)
    loaded = settings.load(given, env, _stored(home), home=home)
    console = _stderr()
    for warning in settings.warnings(loaded):
        console.print(f"[yellow]Warning:[/] {warning}")
    loaded = runner.complete_settings(loaded)
    reqlog.setup(loaded.log_format)
    runner.serve(loaded, console)


serve.__signature__ = _serve_signature()  # type: ignore[attr-defined]
app.command(
    cls=GroupedCommand,
    short_help="Start the bridge and a tunnel; print what to paste into Vapi.",
    epilog=SERVE_EPILOG,
)(serve)


@app.command(short_help="Play Vapi against a server and say what a call would hear.")
@_reports_errors
def test(
    url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Server to test (base URL or full /chat/completions URL)."
        ),
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Test through the running bridge's tunnel URL.")
    ] = False,
    message: Annotated[
        str | None, typer.Option(metavar="TEXT", help="What the caller says.")
    ] = None,
    model: Annotated[
        str, typer.Option(metavar="MODEL", help="Model name to send, as Vapi would.")
    ] = DEFAULT_MODEL,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Ask for one JSON reply instead of a stream.")
    ] = False,
    secret: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            help="Bridge key to send. [env: VAPI_BRIDGE_SECRET; default: the bridge's]",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            metavar="SECONDS",
            help="Seconds to wait for the whole reply (connecting, headers and body).",
        ),
    ] = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one machine-readable result on stdout.")
    ] = False,
) -> None:
    """Send a Vapi-shaped request, show the reply live, and check it the way Vapi would."""
    from vapi_bridge import probe, state
    from vapi_bridge.settings import home_dir

    env = settings.environment()
    try:
        if public and url is not None:
            raise ConfigError(
                "--public and --url contradict each other: --public tests the running "
                "bridge's tunnel URL.",
                hint="Drop one of them.",
            )
        if message is not None and not message.strip():
            raise ConfigError(
                "--message is empty: Vapi never sends an empty turn.",
                hint="Say something with --message, or leave it out for the sample question.",
            )
        base, key = state.target(url, public, secret, env, home_dir(env))
    except BridgeError as exc:
        if as_json:
            probe.report(probe.failed(url, exc), as_json=True, console=_stderr())
        raise
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
    if result.error is not None:
        raise result.error
    if not result.ok:
        raise typer.Exit(1)


def _live_writer() -> Callable[[str], None]:
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return write


# configure-key is long only by its option declarations; its body is short dispatch.
@app.command("configure-key", short_help="Store the SambaNova, ngrok or Vapi key safely.")
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
        typer.Option(
            "--remove", help="Remove the stored key (with --ngrok / --vapi / --oauth: that one)."
        ),
    ] = False,
    new_bridge_key: Annotated[
        bool,
        typer.Option(
            "--new-bridge-key",
            help="Make a new bridge key for Vapi; the old one stays valid until --retire-old-keys.",
        ),
    ] = False,
    retire_old_keys: Annotated[
        bool,
        typer.Option(
            "--retire-old-keys",
            help="Keep only the newest bridge key (once Vapi sends it); running bridges follow.",
        ),
    ] = False,
    oauth: Annotated[
        bool,
        typer.Option("--oauth", help="Create the OAuth2 client id and secret for `serve --oauth`."),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="With --new-bridge-key, --retire-old-keys or --oauth: do not ask (for scripts).",
        ),
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="SambaNova API base URL to verify against. "
            "[env: SAMBANOVA_BASE_URL, SAMBA_NOVA_BASE_URL]",
        ),
    ] = None,
    vapi_base_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Vapi API URL to verify --vapi against. [env: VAPI_BASE_URL]"
        ),
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
                ("--retire-old-keys", retire_old_keys),
                ("--ngrok", ngrok),
                ("--vapi", vapi),
                ("--oauth", oauth),
                ("--stdin", stdin),
                ("--no-verify", no_verify),
                ("--yes", yes),
                ("--base-url", base_url is not None),
                ("--vapi-base-url", vapi_base_url is not None),
            )
            if given
        ]
    )
    env = settings.environment()
    home = home_dir(env)
    console = _stderr()
    if show:
        for label, value, source in configure.describe(home, env):
            typer.echo(f"{label:30} {value:16} {source}".rstrip())
        typer.echo(configure.bridge_key_count(home, env))
        return
    field = "ngrok_authtoken" if ngrok else "vapi_api_key" if vapi else "sambanova_api_key"
    if remove:
        remove_line = (
            configure.remove_oauth_client(home, env)
            if oauth
            else configure.remove(home, field, env)
        )
        console.print(remove_line)
        return
    if new_bridge_key:
        _new_bridge_key(home, yes, console)
        return
    if retire_old_keys:
        _retire_old_keys(home, yes, console)
        return
    if oauth:
        _new_oauth_client(home, yes, console)
        return
    vapi_url = configure.vapi_base_url(vapi_base_url, env) if vapi else ""
    label = configure.label(field)
    if not stdin and (sys.stdin is None or not sys.stdin.isatty()):
        raise ConfigError(
            f"There is no terminal to type the {label} into (standard input is not one).",
            hint="Add --stdin and pipe the key in: printf '%s' \"$KEY\" | vapi-bridge "
            "configure-key --stdin (with the same options).",
        )
    raw = sys.stdin.readline() if stdin else typer.prompt(label, hide_input=True)
    url = pick("base_url", base_url, env, _stored(home), default=DEFAULT_BASE_URL)
    console.print(
        configure.store(
            home, field, raw, verify=not no_verify, base_url=url, vapi_base_url=vapi_url
        )
    )


def _new_bridge_key(home: Path, yes: bool, console: Console) -> None:
    from vapi_bridge import configure

    if not yes:
        _confirm(
            "--new-bridge-key makes the key Vapi should send",
            "Replace the bridge key? The current one stays valid until `vapi-bridge "
            "configure-key --retire-old-keys`. [y/N]: ",
            "Kept the current bridge key.",
        )
    secret = configure.new_bridge_key(home)
    console.print(
        "New bridge key stored; the previous one stays valid until `vapi-bridge "
        "configure-key --retire-old-keys`. Update the Custom LLM credential in Vapi:"
    )
    typer.echo(secret)


def _retire_old_keys(home: Path, yes: bool, console: Console) -> None:
    from vapi_bridge import configure

    if not yes:
        _confirm(
            "--retire-old-keys refuses every bridge key but the newest",
            "Retire the older bridge keys? Callers still sending one get 401. [y/N]: ",
            "Kept every bridge key.",
        )
    console.print(configure.retire_old_keys(home))


def _new_oauth_client(home: Path, yes: bool, console: Console) -> None:
    from vapi_bridge import configure

    if configure.has_oauth_client(home) and not yes:
        _confirm(
            "An OAuth2 client is stored already and --oauth would replace it",
            "Replace the OAuth2 client? Tokens issued for the current one stop working "
            "until Vapi has the new secret. [y/N]: ",
            "Kept the current OAuth2 client.",
        )
    client_id, client_secret = configure.new_oauth_client(home)
    console.print(
        "OAuth2 client stored. In Vapi's credential (OAuth2), use the token URL that "
        "`vapi-bridge serve --oauth` prints, and this client id and secret:"
    )
    typer.echo(client_id)
    typer.echo(client_secret)


def _confirm(doing: str, question: str, kept: str) -> None:
    """Ask on stderr (stdout carries only the new values); without a terminal, refuse."""
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{doing}, and there is no terminal to confirm it: nothing was changed.",
            hint="Add --yes to confirm in a script.",
        )
    sys.stderr.write(question)
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        _stderr().print(kept)
        raise typer.Exit(1)


@app.command(short_help="List your Vapi assistants, to pick one for serve --assistant.")
@_reports_errors
def assistants(
    vapi_base_url: Annotated[
        str | None, typer.Option(metavar="URL", help="Vapi API URL. [env: VAPI_BASE_URL]")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="List at most this many.")
    ] = 100,
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

    env = settings.environment()
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


@app.command(short_help="List SambaNova's models and how each behaves on a call.")
@_reports_errors
def models(
    base_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="SambaNova API base URL. [env: SAMBANOVA_BASE_URL, SAMBA_NOVA_BASE_URL]",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the models your SambaNova key can use, with what the bridge knows of each
    (reasoning, tools), marking the default and the one `serve` would use."""
    from vapi_bridge import models as catalog
    from vapi_bridge.upstream import verify_key

    env = settings.environment()
    stored = _stored(settings.home_dir(env))
    api_key = settings.pick("api_key", None, env, stored)
    if not api_key:
        raise ConfigError(
            "No SambaNova API key.",
            hint="Run `vapi-bridge configure-key` or set SAMBANOVA_API_KEY.",
        )
    url = settings.pick("base_url", base_url, env, stored, default=DEFAULT_BASE_URL)
    serving = settings.pick("model", None, env, stored) or DEFAULT_MODEL
    rows = catalog.describe(sorted(verify_key(api_key, url)))
    catalog.show(rows, default=DEFAULT_MODEL, serving=serving, as_json=as_json)


def main() -> None:
    """Console-script entry point. Output piped into a reader that stopped early (``| head``)
    ends the command quietly, as Python's docs advise: exit code 1, no traceback."""
    try:
        try:
            app()
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # What is still buffered would fail again at interpreter exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
