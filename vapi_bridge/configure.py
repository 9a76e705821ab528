"""``configure-key``: verify and store keys, show what is configured, remove it.

Each function does one user action and returns the sentence to show; the CLI prints it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vapi_bridge import keystore
from vapi_bridge.errors import BridgeError, ConfigError, UpstreamError, VapiError
from vapi_bridge.settings import DEFAULT_VAPI_BASE_URL, SOURCES, pick
from vapi_bridge.vapi import DASHBOARD_KEYS, is_http_url

NGROK_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")
NGROK_TOKEN_LENGTH = (20, 200)
NGROK_TOKEN_PAGE = "https://dashboard.ngrok.com/get-started/your-authtoken"
# The Vapi key and API URL are read by `configure-key` and `assistants` only, so far.
VAPI_KEY_ENV = SOURCES["vapi_api_key"][0]
# (stored key, environment variables that win over it), in the order --show lists them.
SECRETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sambanova_api_key", SOURCES["api_key"][0]),
    ("ngrok_authtoken", SOURCES["ngrok_authtoken"][0]),
    ("bridge_secret", SOURCES["secret"][0]),
    ("vapi_api_key", VAPI_KEY_ENV),
    ("oauth_client_id", SOURCES["oauth_client_id"][0]),
    ("oauth_client_secret", SOURCES["oauth_client_secret"][0]),
)
# Shown whole by --show: an identifier, not a secret.
PUBLIC = frozenset({"oauth_client_id"})
OAUTH_FIELDS = ("oauth_client_id", "oauth_client_secret")
ACTIONS = ("--show", "--remove", "--new-bridge-key", "--retire-old-keys")
# Which stored credential a command is about, besides the SambaNova key.
CREDENTIALS = ("--ngrok", "--vapi", "--oauth")
# What each action accepts besides itself; None is "store a key" (with --oauth: create the
# OAuth2 client).
ACCEPTS: dict[str | None, frozenset[str]] = {
    "--show": frozenset(),
    "--remove": frozenset(CREDENTIALS),
    "--new-bridge-key": frozenset({"--yes"}),
    "--retire-old-keys": frozenset({"--yes"}),
    None: frozenset(
        {*CREDENTIALS, "--stdin", "--no-verify", "--base-url", "--vapi-base-url", "--yes"}
    ),
}
ACTION_HINTS = {
    "--show": "--show lists every key at once: run it alone.",
    "--remove": "Use --remove alone for the SambaNova key, or with --ngrok, --vapi or --oauth.",
    "--new-bridge-key": "It makes the bridge key itself and takes only --yes: run "
    "`vapi-bridge configure-key --new-bridge-key` alone.",
    "--retire-old-keys": "It keeps only the newest bridge key and takes only --yes: run "
    "`vapi-bridge configure-key --retire-old-keys` alone.",
    None: "See `vapi-bridge configure-key --help`.",
}


def check_options(given: Sequence[str]) -> None:
    """Refuse options that contradict each other or would be ignored (ConfigError: exit 2)."""
    actions = [option for option in given if option in ACTIONS]
    if len(actions) > 1:
        raise ConfigError(
            f"{actions[0]} and {actions[1]} cannot be used together.", hint="Run one at a time."
        )
    chosen = [option for option in CREDENTIALS if option in given]
    if len(chosen) > 1:
        raise ConfigError(
            f"{chosen[0]} and {chosen[1]} cannot be used together.",
            hint="Handle one key at a time.",
        )
    action = actions[0] if actions else None
    for option in given:
        if option in ACTIONS or option in ACCEPTS[action]:
            continue
        doing = f"{action} cannot be combined with" if action else "Storing a key does not take"
        raise ConfigError(f"{doing} {option}.", hint=ACTION_HINTS[action])
    if action is None and "--oauth" in given:
        extra = [option for option in given if option not in ("--oauth", "--yes")]
        if extra:
            raise ConfigError(
                f"--oauth makes its own client id and secret; it does not take {extra[0]}.",
                hint="Run `vapi-bridge configure-key --oauth` alone (--yes to replace one).",
            )
    elif action is None and "--yes" in given:
        raise ConfigError("Storing a key does not take --yes.", hint=ACTION_HINTS[None])
    if action is None and "--base-url" in given and ({"--ngrok", "--vapi"} & set(given)):
        raise ConfigError(
            "--base-url is SambaNova's API URL; it does not apply to --ngrok or --vapi.",
            hint="With --vapi, use --vapi-base-url.",
        )
    if action is None and "--vapi-base-url" in given and "--vapi" not in given:
        raise ConfigError(
            "--vapi-base-url only applies with --vapi.", hint="Add --vapi, or leave it out."
        )


def check_url(url: str, what: str, fix: str) -> str:
    """A base URL a user typed, refused clearly before anything tries to reach it."""
    if not is_http_url(url.strip()):
        raise ConfigError(f"{what} {url[:200]!r} is not a valid http(s) URL.", hint=fix)
    return url.strip()


def verify_sambanova_key(key: str, base_url: str) -> int:
    """Check the key against SambaNova's models endpoint; returns how many models it sees."""
    from vapi_bridge.upstream import verify_key

    try:
        return len(verify_key(key, base_url))
    except UpstreamError as exc:
        if exc.upstream_status == 401:
            raise ConfigError(
                "SambaNova rejected this key (HTTP 401); it was not stored.",
                hint="Copy the key again from https://cloud.sambanova.ai/apis and retry.",
            ) from None
        if exc.upstream_status == 402:
            raise ConfigError(
                "SambaNova accepted the key but the account needs a payment method (HTTP 402); "
                "it was not stored.",
                hint="Add a payment method in the SambaNova Cloud console, or store the key "
                "anyway with --no-verify.",
            ) from None
        # Not the configuration's fault (exit 1, not 2): the network, or SambaNova.
        if exc.upstream_status is None:
            raise BridgeError(
                f"Could not reach SambaNova at {base_url} to verify the key; it was not stored.",
                hint="Check your network, or store it without checking: --no-verify.",
            ) from None
        raise BridgeError(
            f"{exc.message} The key was not stored.",
            hint="Retry later, or store it without checking: --no-verify.",
        ) from None


def verify_vapi_key(key: str, base_url: str) -> None:
    """One read-only call (list one assistant) proves the key is a working private key."""
    from vapi_bridge.vapi import VapiClient

    try:
        with VapiClient(key, base_url) as client:
            client.list_assistants(limit=1)
    except VapiError as exc:
        if exc.vapi_status in (401, 403):
            raise ConfigError(
                f"Vapi rejected this key (HTTP {exc.vapi_status}); it was not stored.",
                hint=f"Use the *private* API key from {DASHBOARD_KEYS} (the public key cannot "
                "manage assistants), or store it anyway with --no-verify.",
            ) from None
        if exc.vapi_status is None:
            raise BridgeError(
                f"Could not verify the key with Vapi: {exc.message} It was not stored.",
                hint="Check your network, or store it without checking: --no-verify.",
            ) from None
        raise BridgeError(
            f"{exc.message} The key was not stored.",
            hint="Retry later, or store it without checking: --no-verify.",
        ) from None


def check_sambanova_key(key: str) -> None:
    """A key goes into an HTTP header: one with spaces or control characters would be sent
    broken on every request (checked even with --no-verify)."""
    if any(c.isspace() for c in key) or not key.isprintable() or not key.isascii():
        raise ConfigError(
            "That SambaNova API key has spaces or characters an API key cannot have; it was "
            "not stored.",
            hint="Copy the key again from https://cloud.sambanova.ai/apis (one line, nothing "
            "around it).",
        )


def check_ngrok_token(token: str) -> None:
    low, high = NGROK_TOKEN_LENGTH
    if len(token) < low:
        raise ConfigError(
            f"That ngrok auth token is too short ({len(token)} characters; real ones have "
            "about 50). Part of it may be missing.",
            hint=f"Copy the whole token from {NGROK_TOKEN_PAGE}.",
        )
    if len(token) > high:
        raise ConfigError(
            f"That ngrok auth token is too long ({len(token)} characters).",
            hint=f"Copy only the token from {NGROK_TOKEN_PAGE}.",
        )
    if not NGROK_TOKEN.match(token):
        raise ConfigError(
            "That does not look like an ngrok auth token (letters, digits, _ and - only).",
            hint=f"Copy it from {NGROK_TOKEN_PAGE}.",
        )


def check_vapi_key(key: str) -> None:
    from vapi_bridge.vapi import check_api_key

    try:
        check_api_key(key)
    except VapiError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


def read_secret(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError(
            f"No {what} given.", hint="Paste it at the prompt, or pipe it to --stdin."
        )
    return value


def load(home: Path) -> dict[str, Any]:
    try:
        return keystore.load(home)
    except keystore.ConfigFileError as exc:
        raise ConfigError(
            f"Cannot read the stored config: {exc}.",
            hint="Fix or delete that file, then run `vapi-bridge configure-key` again.",
        ) from None


def lookup(field: str, home: Path, env: Mapping[str, str]) -> tuple[str | None, str]:
    """A secret's value and where it comes from (environment first, then the stored config)."""
    env_names = dict(SECRETS)[field]
    for name in env_names:
        if env.get(name):
            return env[name], f"environment ({name})"
    stored = load(home).get(field)
    if isinstance(stored, str) and stored:
        return stored, str(keystore.config_path(home))
    return None, ""


def vapi_api_key(home: Path, env: Mapping[str, str]) -> str:
    """The Vapi private API key (``VAPI_API_KEY`` wins over the stored one), or a clear error."""
    key, _ = lookup("vapi_api_key", home, env)
    if key is None:
        raise ConfigError(
            "No Vapi API key is configured.",
            hint="Store your private key with `vapi-bridge configure-key --vapi` "
            "(or set VAPI_API_KEY).",
        )
    return key


def vapi_base_url(flag: str | None, env: Mapping[str, str]) -> str:
    """``--vapi-base-url``, else ``VAPI_BASE_URL``, else Vapi's API; checked like ``serve``."""
    url: str = pick("vapi_base_url", flag, env, {}, default=DEFAULT_VAPI_BASE_URL)
    return url


def describe(home: Path, env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(label, masked value, where it comes from) for each secret, by the serve precedence;
    an unset secret reads ``not set`` once."""
    rows = []
    for field, _ in SECRETS:
        value, source = lookup(field, home, env)
        if value is None and field == "ngrok_authtoken":
            # `serve` falls back to the token `ngrok config add-authtoken` stored.
            from vapi_bridge.tunnel import ngrok_config_token

            found = ngrok_config_token()
            if found is not None:
                value, source = found[0], f"{found[1]} (ngrok's own config)"
        shown = (value if field in PUBLIC else keystore.mask(value)) if value else "not set"
        rows.append((keystore.LABELS[field], shown, source))
    return rows


def bridge_key_count(home: Path, env: Mapping[str, str]) -> str:
    """How many bridge keys a bridge started now would accept, and from where."""
    names = dict(SECRETS)["bridge_secret"]
    for name in names:
        if env.get(name, "").strip():
            keys: tuple[str, ...] = pick("secret", None, {name: env[name]}, {})
            return f"Bridge keys valid: {len(keys)}, from the environment ({name})."
    keys = keystore.bridge_keys(load(home))
    if not keys:
        return "Bridge keys valid: none stored yet (`vapi-bridge serve` makes one)."
    if len(keys) == 1:
        return "Bridge keys valid: 1."
    return (
        f"Bridge keys valid: {len(keys)}: the newest, and {len(keys) - 1} older until "
        "`vapi-bridge configure-key --retire-old-keys`."
    )


def label(field: str) -> str:
    return keystore.LABELS[field]


def store(
    home: Path,
    field: str,
    raw: str,
    *,
    verify: bool,
    base_url: str,
    vapi_base_url: str = DEFAULT_VAPI_BASE_URL,
) -> str:
    """Check and store a SambaNova key, an ngrok token or a Vapi key; nothing is stored on
    failure."""
    value = read_secret(raw, label(field))
    detail = ""
    if field == "ngrok_authtoken":
        check_ngrok_token(value)
    elif field == "vapi_api_key":
        check_vapi_key(value)
        if verify:
            verify_vapi_key(value, vapi_base_url)
            detail = " (verified with Vapi)"
    else:
        check_sambanova_key(value)
        if verify:
            url = check_url(
                base_url,
                "The SambaNova base URL",
                "Give a full URL, e.g. --base-url https://api.sambanova.ai/v1 "
                "(or fix SAMBANOVA_BASE_URL).",
            )
            detail = f" (verified: {verify_sambanova_key(value, url)} models available)"
    load(home)
    keystore.update(home, **{field: value})
    return f"Stored {label(field)} {keystore.mask(value)} in {keystore.config_path(home)}{detail}."


def remove(home: Path, field: str, env: Mapping[str, str]) -> str:
    """Remove a stored secret; says so plainly when there was none."""
    if not load(home).get(field):
        line = f"No {label(field)} is stored; nothing to remove."
    else:
        keystore.update(home, **{field: None})
        line = f"Removed the stored {label(field)}."
    overriding = [name for name in dict(SECRETS)[field] if env.get(name)]
    if overriding:
        line += f" {overriding[0]} is set in the environment and still applies."
    return line


def new_bridge_key(home: Path) -> str:
    """A new bridge key to give Vapi, the current ones still valid; returns it, since the
    user must paste it into Vapi."""
    load(home)
    return keystore.rotate_bridge_key(home)


def retire_old_keys(home: Path) -> str:
    """Keep only the newest bridge key; running bridges that serve the stored keys follow."""
    if not keystore.bridge_keys(load(home)):
        return "No bridge key is stored; nothing to retire."
    retired = keystore.retire_old_keys(home)
    if not retired:
        return "Only the newest bridge key is valid already; nothing to retire."
    return (
        f"Retired {retired} older bridge key(s): only the newest is valid now, on running "
        "bridges too."
    )


def has_oauth_client(home: Path) -> bool:
    data = load(home)
    return all(data.get(field) for field in OAUTH_FIELDS)


def new_oauth_client(home: Path) -> tuple[str, str]:
    """A new OAuth2 client id and secret, stored 0600; returns them for the user to paste."""
    load(home)
    return keystore.new_oauth_client(home)


def remove_oauth_client(home: Path, env: Mapping[str, str]) -> str:
    if not any(load(home).get(field) for field in OAUTH_FIELDS):
        line = "No OAuth2 client is stored; nothing to remove."
    else:
        keystore.update(home, **dict.fromkeys(OAUTH_FIELDS))
        line = "Removed the stored OAuth2 client; its tokens stop working."
    overriding = [name for field in OAUTH_FIELDS for name in dict(SECRETS)[field] if env.get(name)]
    if overriding:
        line += f" {overriding[0]} is set in the environment and still applies."
    return line
