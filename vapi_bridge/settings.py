"""One validated settings value, from command-line flag > environment > stored config > default.

Each setting is declared once, as a field of :class:`Settings` carrying an :class:`Option`: its
flag, environment variables, stored-config key, help group and the one parser that validates
it. The CLI builds ``serve``'s options from these declarations, :func:`load` runs every source
through the same parser, and :func:`overlay` does the same for a profile that overrides part of
the settings for one request. No other module reads the environment for configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vapi_bridge.errors import ConfigError

APP_NAME = "vapi-bridge"
DEFAULT_MODEL = "Meta-Llama-3.3-70B-Instruct"
DEFAULT_BASE_URL = "https://api.sambanova.ai/v1"
DEFAULT_VAPI_BASE_URL = "https://api.vapi.ai"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_TUNNEL_TIMEOUT = 20.0
MIN_SECRET_LENGTH = 16
# Vapi waits model.timeoutSeconds (default 20) for the first token, then ends the call.
VAPI_TIMEOUT = 20.0

VAPI = "Vapi and auth"
UPSTREAM = "Upstream (SambaNova)"
VOICE = "What the caller hears"
TUNNEL = "Tunnel (ngrok)"
MIDDLEWARE = "Middleware"
SERVER = "Server"
GROUPS = (VAPI, UPSTREAM, VOICE, TUNNEL, MIDDLEWARE, SERVER)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Reasoning(enum.StrEnum):
    """How much a reasoning model may think; ``OFF`` is the least each model allows."""

    OFF = "off"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    MODEL = "model"


class PromptMode(enum.StrEnum):
    REPLACE = "replace"
    PREPEND = "prepend"
    APPEND = "append"


Parse = Callable[[Any], Any]


@dataclass(frozen=True)
class Option:
    """How one setting is given: flag, environment, stored key, and its validating parser.

    ``parse`` takes a value as any source gives it (a string from the environment, a typed
    value from a flag or JSON) and returns the typed value or raises ``ValueError`` saying
    what is wrong, without repeating the value (it may be a secret).
    """

    parse: Parse
    help: str = ""
    group: str = SERVER
    flag: str | None = None
    env: tuple[str, ...] = ()
    stored: str | None = None
    metavar: str | None = None
    secret: bool = False
    # A stored list whose values join the stored value, when that is where the setting comes
    # from: the older bridge keys that stay valid until `configure-key --retire-old-keys`.
    stored_with: str | None = None


def option(default: Any, **spec: Any) -> Any:
    """A :class:`Settings` field with its declaration attached."""
    return field(default=default, metadata={"option": Option(**spec)}, repr=not spec.get("secret"))


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _url(value: Any) -> str:
    text = _text(value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


def _number(low: float, high: float) -> Parse:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number from {low:g} to {high:g}") from None
        if not low <= number <= high:
            raise ValueError(f"must be from {low:g} to {high:g}")
        return number

    return parse


def _integer(low: int, high: int) -> Parse:
    def parse(value: Any) -> int:
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if isinstance(number, bool) or not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number

    return parse


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(kind: type[enum.StrEnum]) -> Parse:
    def parse(value: Any) -> enum.StrEnum:
        try:
            return kind(str(getattr(value, "value", value)).strip().lower())
        except ValueError:
            raise ValueError("must be one of " + ", ".join(m.value for m in kind)) from None

    return parse


def _path(value: Any) -> Path:
    return Path(_text(value)).expanduser()


def _optional(parse: Parse) -> Parse:
    """``None`` stays unset; anything else must pass ``parse``."""
    return lambda value: None if value is None else parse(value)


def _key(guards: str) -> Parse:
    """A key the bridge checks callers against: long enough not to be guessed."""

    def parse(value: Any) -> str:
        key = str(value).strip()
        if len(key) < MIN_SECRET_LENGTH or any(c.isspace() for c in key):
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters with no spaces: {guards}"
            )
        return key

    return parse


_secret_key = _key("the bridge key guards your SambaNova quota behind a public URL")
_oauth_secret = _key("the OAuth2 client secret guards your SambaNova quota behind a public URL")
_metrics_token = _key("the metrics token guards /metrics behind a public URL")


def _secret_keys(value: Any) -> tuple[str, ...]:
    """One key or several (rotation): a list, or a comma-separated string; the first is the
    key the bridge hands out, the others stay valid. None or an empty list: no key."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    parts = [part for item in items for part in str(item).split(",")]
    return tuple(dict.fromkeys(_secret_key(part) for part in parts))


_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{4,128}$")


def _client_id(value: Any) -> str:
    text = str(value).strip()
    if not _CLIENT_ID.match(text):
        raise ValueError("must be 4 to 128 letters, digits, '.', '_', '~' or '-'")
    return text


def _directory(value: Any) -> Path:
    path = _path(value)
    if not path.is_dir():
        raise ValueError("is not an existing directory")
    return path


def _model_map(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = value.split(",") if isinstance(value, str) else value
    out = []
    for pair in pairs:
        if isinstance(pair, list | tuple) and len(pair) == 2:
            name, target = str(pair[0]), str(pair[1])
        else:
            name, sep, target = str(pair).partition("=")
            if not sep:
                raise ValueError(f"'{pair}' is not NAME=MODEL")
        if not name.strip() or not target.strip():
            raise ValueError(f"'{pair}' is not NAME=MODEL")
        out.append((name.strip(), target.strip()))
    return tuple(out)


def _models(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and not value.strip():
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if any(not str(name).strip() for name in names):
        raise ValueError("has an empty model name")
    out = tuple(str(name).strip() for name in names)
    if any(len(name) > 256 or any(c.isspace() for c in name) for name in out):
        raise ValueError("must be model names (no spaces)")
    return out


def _hook_specs(value: Any) -> tuple[str, ...]:
    specs = value.split(",") if isinstance(value, str) else value
    out = []
    for spec in specs:
        module, sep, function = str(spec).strip().partition(":")
        if not sep or not module or not function:
            raise ValueError(f"'{spec}' is not module:function (example: my_hooks:add_date)")
        out.append(f"{module}:{function}")
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """Everything ``serve`` needs, already resolved and validated."""

    home: Path = field(default_factory=lambda: home_dir())
    # Vapi and auth
    secret: tuple[str, ...] = option(
        (),
        parse=_secret_keys,
        help="Bridge key Vapi must send (default: the stored random key). Repeatable to "
        "rotate: the first is the one to give Vapi, the others stay valid.",
        group=VAPI,
        flag="--secret",
        env=("VAPI_BRIDGE_SECRET",),
        stored="bridge_secret",
        stored_with="bridge_secrets_retiring",
        metavar="KEY",
        secret=True,
    )
    no_auth: bool = option(
        False,
        parse=_switch,
        help="Accept requests without a bridge key (unsafe behind a tunnel).",
        group=VAPI,
        flag="--no-auth",
    )
    oauth: bool = option(
        False,
        parse=_switch,
        help="Serve POST /oauth/token (OAuth2 client credentials) and accept its short-lived "
        "tokens beside the bridge key.",
        group=VAPI,
        flag="--oauth",
    )
    oauth_client_id: str | None = option(
        None,
        parse=_optional(_client_id),
        env=("VAPI_BRIDGE_OAUTH_CLIENT_ID",),
        stored="oauth_client_id",
    )
    oauth_client_secret: str | None = option(
        None,
        parse=_optional(_oauth_secret),
        env=("VAPI_BRIDGE_OAUTH_CLIENT_SECRET",),
        stored="oauth_client_secret",
        secret=True,
    )
    model: str | None = option(
        None,
        parse=_optional(_text),
        help="Force this model for every request, whatever Vapi sends.",
        group=UPSTREAM,
        flag="--model",
        env=("VAPI_BRIDGE_MODEL",),
        metavar="MODEL",
    )
    model_map: tuple[tuple[str, str], ...] = option(
        (),
        parse=_model_map,
        help="Route a model name Vapi sends to a SambaNova model. Repeatable.",
        group=UPSTREAM,
        flag="--model-map",
        metavar="NAME=MODEL",
    )
    default_model: str = option(DEFAULT_MODEL, parse=_text)
    assistant: str | None = option(
        None,
        parse=_optional(_text),
        help="Wire this Vapi assistant to the bridge while it runs (needs `configure-key "
        "--vapi`); put back on stop.",
        group=VAPI,
        flag="--assistant",
        env=("VAPI_ASSISTANT_ID",),
        metavar="ID",
    )
    keep_assistant: bool = option(
        False,
        parse=_switch,
        help="Leave the assistant wired to the bridge when it stops.",
        group=VAPI,
        flag="--keep-assistant",
    )
    public_url: str | None = option(
        None,
        parse=_optional(_url),
        help="The bridge's own public HTTPS URL (behind your proxy or load balancer): "
        "printed and wired instead of a tunnel's.",
        group=VAPI,
        flag="--public-url",
        env=("VAPI_BRIDGE_PUBLIC_URL",),
        metavar="URL",
    )
    vapi_api_key: str | None = option(
        None,
        parse=_optional(_text),
        env=("VAPI_API_KEY",),
        stored="vapi_api_key",
        secret=True,
    )
    vapi_base_url: str = option(
        DEFAULT_VAPI_BASE_URL,
        parse=_url,
        help="Vapi's API.",
        group=VAPI,
        flag="--vapi-base-url",
        env=("VAPI_BASE_URL",),
        metavar="URL",
    )
    # Upstream
    api_key: str | None = option(
        None,
        parse=_optional(_text),
        env=("SAMBANOVA_API_KEY",),
        stored="sambanova_api_key",
        secret=True,
    )
    base_url: str = option(
        DEFAULT_BASE_URL,
        parse=_url,
        help="SambaNova API base URL (any OpenAI-compatible API).",
        group=UPSTREAM,
        flag="--base-url",
        env=("SAMBANOVA_BASE_URL", "SAMBA_NOVA_BASE_URL"),
        metavar="URL",
    )
    upstream_timeout: float = option(
        15.0,
        parse=_number(0.5, 120),
        help="Seconds a turn may wait for SambaNova's first token, retries included.",
        group=UPSTREAM,
        flag="--upstream-timeout",
        metavar="SECONDS",
    )
    stall_timeout: float = option(
        10.0,
        parse=_number(0.5, 120),
        help="Seconds without data after the first token before a stream counts as stalled.",
        group=UPSTREAM,
        flag="--stall-timeout",
        metavar="SECONDS",
    )
    fallback_models: tuple[str, ...] = option(
        (),
        parse=_models,
        help="Model to try next when the one asked for fails or is slow before its first "
        "token. Repeatable, tried in order.",
        group=UPSTREAM,
        flag="--fallback-model",
        env=("VAPI_BRIDGE_FALLBACK_MODELS",),
        metavar="MODEL",
    )
    attempt_timeout: float = option(
        3.0,
        parse=_number(0.2, 60),
        help="Seconds a model gets to produce its first token before the next model is tried "
        "(only when there is a next one).",
        group=UPSTREAM,
        flag="--attempt-timeout",
        metavar="SECONDS",
    )
    hedge_after: float | None = option(
        None,
        parse=_optional(_number(10, 60_000)),
        help="Start the next model in parallel when the first has no token after this many "
        "milliseconds; the first to answer wins (costs a second request).",
        group=UPSTREAM,
        flag="--hedge-after",
        metavar="MS",
    )
    apology: str = option(
        "Sorry, I missed that. Could you say it again?",
        parse=_text,
        help="What the caller hears when every model failed for a passing reason (rate limit, "
        "overload, timeout), instead of the call ending.",
        group=UPSTREAM,
        flag="--apology",
        env=("VAPI_BRIDGE_APOLOGY",),
        metavar="TEXT",
    )
    no_apology: bool = option(
        False,
        parse=_switch,
        help="Answer such failures with an HTTP error instead (Vapi then ends the call).",
        group=UPSTREAM,
        flag="--no-apology",
    )
    demo: bool = option(
        False,
        parse=_switch,
        help="Use the built-in offline model: no SambaNova key, no SambaNova traffic.",
        group=UPSTREAM,
        flag="--demo",
    )
    # What the caller hears
    reasoning: Reasoning = option(
        Reasoning.OFF,
        parse=_choice(Reasoning),
        help="How much reasoning models may think: off = the least each model allows, "
        "model = send no control. Reasoning is never spoken either way.",
        group=VOICE,
        flag="--reasoning",
        env=("VAPI_BRIDGE_REASONING",),
    )
    reasoning_budget: int = option(
        1024,
        parse=_integer(0, 100_000),
        help="Tokens a reasoning model may think on top of Vapi's max_tokens.",
        group=VOICE,
        flag="--reasoning-budget",
        metavar="TOKENS",
    )
    speech_filter: bool = option(
        True,
        parse=_switch,
        help="Remove markdown and emoji from spoken replies, keeping the words.",
        group=VOICE,
        flag="--speech-filter/--no-speech-filter",
        env=("VAPI_BRIDGE_SPEECH_FILTER",),
    )
    # Tunnel
    tunnel: bool = option(
        True,
        parse=_switch,
        help="Open an ngrok tunnel so Vapi can reach this machine.",
        group=TUNNEL,
        flag="--tunnel/--no-tunnel",
    )
    ngrok_authtoken: str | None = option(
        None,
        parse=_optional(_text),
        env=("NGROK_AUTHTOKEN",),
        stored="ngrok_authtoken",
        secret=True,
    )
    ngrok_path: str | None = option(
        None,
        parse=_optional(_text),
        help="The ngrok agent binary (default: ngrok on PATH, else pyngrok's own, downloaded "
        "on first use into bin/ in the config folder).",
        group=TUNNEL,
        flag="--ngrok-path",
        env=("PYNGROK_NGROK_PATH",),
        metavar="FILE",
    )
    domain: str | None = option(
        None,
        parse=_optional(_text),
        help="Your reserved ngrok domain.",
        group=TUNNEL,
        flag="--domain",
        env=("VAPI_BRIDGE_DOMAIN",),
        metavar="DOMAIN",
    )
    tunnel_timeout: float = option(
        DEFAULT_TUNNEL_TIMEOUT,
        parse=_number(0.5, 300),
        help="Seconds to wait for the ngrok agent.",
        group=TUNNEL,
        flag="--tunnel-timeout",
        metavar="SECONDS",
    )
    # Middleware
    system_prompt: str | None = option(
        None,
        parse=_optional(_text),
        help="System prompt to apply to every request.",
        group=MIDDLEWARE,
        flag="--system-prompt",
        metavar="TEXT",
    )
    system_prompt_file: Path | None = option(
        None,
        parse=_optional(_path),
        help="File holding the system prompt (UTF-8); re-read when it changes.",
        group=MIDDLEWARE,
        flag="--system-prompt-file",
        metavar="FILE",
    )
    system_prompt_mode: PromptMode = option(
        PromptMode.REPLACE,
        parse=_choice(PromptMode),
        help="How the prompt meets the assistant's own system message.",
        group=MIDDLEWARE,
        flag="--system-prompt-mode",
    )
    hooks: tuple[str, ...] = option(
        (),
        parse=_hook_specs,
        help="Request hook run before each upstream call. Repeatable.",
        group=MIDDLEWARE,
        flag="--hook",
        metavar="MODULE:FUNC",
    )
    reply_hooks: tuple[str, ...] = option(
        (),
        parse=_hook_specs,
        help="Hook called with each finished reply, off the caller's path. Repeatable.",
        group=MIDDLEWARE,
        flag="--reply-hook",
        metavar="MODULE:FUNC",
    )
    profiles: Path | None = option(
        None,
        parse=_optional(_path),
        help="TOML file of named profiles (model, prompt, fallbacks, reasoning...) that a "
        "request picks with the X-Vapi-Bridge-Profile header; re-read when it changes.",
        group=MIDDLEWARE,
        flag="--profiles",
        env=("VAPI_BRIDGE_PROFILES",),
        metavar="FILE",
    )
    profile: str | None = option(
        None,
        parse=_optional(_text),
        help="With --assistant: the profile the wired assistant selects (Vapi sends it as the "
        "X-Vapi-Bridge-Profile header).",
        group=VAPI,
        flag="--profile",
        metavar="NAME",
    )
    transcript_dir: Path | None = option(
        None,
        parse=_optional(_path),
        help="Write one JSON Lines transcript per Vapi call into this folder.",
        group=MIDDLEWARE,
        flag="--transcript-dir",
        metavar="DIR",
    )
    # Server
    host: str = option(
        DEFAULT_HOST,
        parse=_text,
        help="Interface to listen on (0.0.0.0: every interface).",
        group=SERVER,
        flag="--host",
        metavar="HOST",
    )
    port: int = option(
        DEFAULT_PORT,
        parse=_integer(0, 65535),
        help="Port to listen on (0: any free port).",
        group=SERVER,
        flag="--port",
        env=("PORT",),
        metavar="PORT",
    )
    workers: int = option(
        1,
        parse=_integer(1, 64),
        help="Worker processes (POSIX, gunicorn); 1 serves from this process.",
        group=SERVER,
        flag="--workers",
        metavar="N",
    )
    shutdown_grace: float = option(
        5.0,
        parse=_number(0, 600),
        help="Seconds live replies get to finish when the bridge stops.",
        group=SERVER,
        flag="--shutdown-grace",
        metavar="SECONDS",
    )
    max_body: int = option(
        4 * 1024 * 1024,
        parse=_integer(1024, 1 << 30),
        help="Largest request body accepted, in bytes.",
        group=SERVER,
        flag="--max-body",
        metavar="BYTES",
    )
    log_format: LogFormat = option(
        LogFormat.TEXT,
        parse=_choice(LogFormat),
        help="Request log format on stderr.",
        group=SERVER,
        flag="--log-format",
    )
    metrics_token: str | None = option(
        None,
        parse=_optional(_metrics_token),
        help="Token Prometheus may send to read /metrics (the bridge key works too).",
        group=SERVER,
        flag="--metrics-token",
        env=("VAPI_BRIDGE_METRICS_TOKEN",),
        metavar="TOKEN",
        secret=True,
    )
    # Where worker processes share their metrics (prometheus_client's multiprocess mode);
    # `serve --workers` sets it for its own children.
    metrics_dir: Path | None = option(
        None, parse=_optional(_directory), env=("PROMETHEUS_MULTIPROC_DIR",)
    )

    @property
    def bridge_key(self) -> str | None:
        """The bridge key to give Vapi (shown, wired, recorded): the newest one."""
        return self.secret[0] if self.secret else None


def options() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every declared setting with its declaration, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(Settings) if f.metadata]


# Flags that make no sense together: (flag name, its value when set) pairs.
CONFLICTS: tuple[tuple[tuple[str, Any], tuple[str, Any], str], ...] = (
    (("no_auth", True), ("secret", None), "--no-auth turns the key off; --secret sets one"),
    (("no_auth", True), ("oauth", True), "--no-auth turns auth off; --oauth issues tokens for it"),
    (("tunnel", False), ("domain", None), "--domain names a tunnel URL; --no-tunnel opens none"),
    (("tunnel", False), ("tunnel_timeout", None), "--no-tunnel opens no tunnel to wait for"),
    (("tunnel", False), ("ngrok_path", None), "--no-tunnel runs no ngrok agent"),
    (("system_prompt", None), ("system_prompt_file", None), "give the prompt one way"),
    (("demo", True), ("base_url", None), "--demo sends nothing to SambaNova"),
    (("no_apology", True), ("apology", None), "--no-apology turns the apology off"),
    (("public_url", None), ("tunnel", True), "--public-url is the URL instead of a tunnel's"),
    (("public_url", None), ("domain", None), "--public-url is the URL instead of a tunnel's"),
)
# Flags that only mean something beside another: (flag name, the setting it needs).
NEEDS: tuple[tuple[str, str], ...] = (
    ("keep_assistant", "assistant"),
    ("hedge_after", "fallback_models"),
    ("profile", "assistant"),
    ("profile", "profiles"),
)


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    stored: Mapping[str, Any],
    *,
    home: Path,
) -> Settings:
    """Resolve and validate every setting; ``flags`` holds only the flags actually given.

    Raises :class:`ConfigError` naming the source (flag, variable or stored key) of a bad
    value, and for contradictory flags.
    """
    _check_conflicts(flags)
    values: dict[str, Any] = {"home": home}
    for f, spec in options():
        source, raw = _source(f.name, spec, flags, env, stored)
        if source is None:
            continue
        values[f.name] = _parse(spec, raw, source)
    _check_needs(values, "")
    if values.get("public_url"):
        values["tunnel"] = False
    return Settings(**values)


def overlay(
    base: Settings, changes: Mapping[str, Any], source: str, hint: str | None = None
) -> Settings:
    """``base`` with some settings replaced (a profile), through the same validation and the
    same rules for settings that contradict or need each other."""
    specs = _specs()
    parsed: dict[str, Any] = {}
    for name, raw in changes.items():
        if name not in specs:
            known = ", ".join(sorted(specs))
            raise ConfigError(f"{source}: unknown setting '{name}'.", hint=f"Known: {known}.")
        parsed[name] = _parse(specs[name], raw, f"{source}: {name}", hint)
    _check_conflicts(changes, f"{source}: ")
    result = dataclasses.replace(base, **parsed)
    _check_needs({f.name: getattr(result, f.name) for f, _ in options()}, f"{source}: ")
    return result


def to_json(settings: Settings) -> str:
    """Plain JSON for the worker processes of ``serve --workers`` (written to a 0600 file)."""
    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    return json.dumps(data, default=str)


def from_json(text: str) -> Settings:
    """The inverse of :func:`to_json`, through the same parsers."""
    data = json.loads(text)
    home = Path(data.pop("home"))
    values = {f.name: spec.parse(data[f.name]) for f, spec in options() if f.name in data}
    return Settings(home=home, **values)


def _specs() -> dict[str, Option]:
    return {f.name: spec for f, spec in options()}


def pick(
    name: str, flag: Any, env: Mapping[str, str], stored: Mapping[str, Any], default: Any = None
) -> Any:
    """One setting outside ``serve`` (``configure-key``, ``test``), by the same precedence and
    validation as :func:`load`; ``default`` when no source gives it."""
    spec = _specs()[name]
    source, raw = _source(name, spec, {name: flag}, env, stored)
    return default if source is None else _parse(spec, raw, source)


def warnings(settings: Settings) -> list[str]:
    """Settings that are valid but probably not what the user wants."""
    out = []
    if settings.upstream_timeout >= VAPI_TIMEOUT:
        out.append(
            f"--upstream-timeout {settings.upstream_timeout:g} is not under Vapi's default "
            f"{VAPI_TIMEOUT:g} s: Vapi may end the call before the bridge answers. Raise "
            "the assistant's model.timeoutSeconds in Vapi too, or keep this under 20."
        )
    if (
        settings.system_prompt_mode != PromptMode.REPLACE
        and not settings.system_prompt
        and not settings.system_prompt_file
        and not settings.profiles  # profiles that set a prompt inherit the mode
    ):
        out.append(
            f"--system-prompt-mode {settings.system_prompt_mode.value} does nothing without "
            "--system-prompt or --system-prompt-file."
        )
    if settings.public_url and settings.public_url.startswith("http://"):
        out.append(
            f"--public-url {settings.public_url} is plain http: Vapi would send every turn, and "
            "the bridge key, over the internet unencrypted. Put TLS in front and give https://."
        )
    return out


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """The bridge's config directory: ``VAPI_BRIDGE_HOME``, else the platform's own.

    Linux ``~/.config/vapi-bridge`` (XDG), macOS ``~/Library/Application Support/vapi-bridge``,
    Windows ``%APPDATA%\\vapi-bridge``.
    """
    env = os.environ if env is None else env
    override = env.get("VAPI_BRIDGE_HOME", "").strip()
    if override:
        return Path(override).expanduser()
    import click

    return Path(click.get_app_dir(APP_NAME))


def environment() -> dict[str, str]:
    """A snapshot of the process environment: the one place configuration reads it."""
    return dict(os.environ)


def _source(
    name: str,
    spec: Option,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    stored: Mapping[str, Any],
) -> tuple[str | None, Any]:
    if name in flags and flags[name] is not None:
        return (spec.flag or name).split("/")[0], flags[name]
    for variable in spec.env:
        if env.get(variable, "").strip():
            return variable, env[variable]
    if spec.stored is not None and stored.get(spec.stored) not in (None, ""):
        raw = stored[spec.stored]
        also = stored.get(spec.stored_with) if spec.stored_with else None
        if isinstance(also, list) and also:
            raw = [raw, *also]
        return f"the stored '{spec.stored}'", raw
    return None, None


def _parse(spec: Option, raw: Any, source: str, hint: str | None = None) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        # A parser that names the bad part of a list itself (``'foo' is not NAME=MODEL``)
        # is not preceded by the whole value again.
        shown = "" if spec.secret or str(exc).startswith("'") else f" '{_short(raw)}'"
        raise ConfigError(f"{source}{shown} {exc}.", hint=hint or _hint(source)) from None


def _check_needs(values: Mapping[str, Any], where: str) -> None:
    for name, needed in NEEDS:
        if values.get(name) and not values.get(needed):
            raise ConfigError(
                f"{where}{_flag(name, True)} needs {_flag(needed, True)}.",
                hint=f"Add {_flag(needed, True)}, or leave out {_flag(name, True)}.",
            )


def _short(raw: Any) -> str:
    text = ", ".join(map(str, raw)) if isinstance(raw, list | tuple) else str(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _hint(source: str) -> str:
    if source.startswith("--"):
        return f"Fix {source}; the command's --help lists its options."
    if source.startswith("the stored"):
        return "Fix it with `vapi-bridge configure-key`, or edit the stored config."
    return f"Fix or unset the environment variable {source.split(':')[0]}."


def _check_conflicts(flags: Mapping[str, Any], where: str = "") -> None:
    def given(name: str, value: Any) -> bool:
        if name not in flags or flags[name] is None:
            return False
        return value is None or flags[name] == value

    for (first, first_value), (second, second_value), why in CONFLICTS:
        if given(first, first_value) and given(second, second_value):
            raise ConfigError(
                f"{where}{_flag(first, first_value)} and {_flag(second, second_value)} "
                f"contradict each other: {why}.",
                hint="Drop one of them.",
            )


def _flag(name: str, value: Any) -> str:
    decls = (_specs()[name].flag or name).split("/")
    return decls[1] if value is False and len(decls) > 1 else decls[0]


# Where each setting may come from besides its flag: (environment variables, stored key).
SOURCES = {name: (spec.env, spec.stored) for name, spec in _specs().items()}
