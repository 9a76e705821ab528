"""Profiles: one bridge, many assistants, each with its own model, prompt and voice settings.

``serve --profiles FILE`` reads a TOML file of named profiles::

    [profiles.sales]
    model = "gpt-oss-120b"
    system_prompt = "You are Riley, who sells..."
    fallback_models = ["Meta-Llama-3.3-70B-Instruct"]

    [profiles.support]
    system_prompt_file = "support.txt"
    reasoning = "low"

A request picks one with the header ``X-Vapi-Bridge-Profile: NAME``, which Vapi sends from
the assistant's ``model.headers`` (``serve --assistant ID --profile NAME`` writes it). A
profile overrides only the settings in :data:`OVERRIDABLE`, through the same validation as
the command line. The file is re-read when it changes, like the system-prompt file: a file
that breaks keeps the last good profiles and says why in the log.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from vapi_bridge.errors import ConfigError, InvalidRequest
from vapi_bridge.settings import Settings, overlay

log = logging.getLogger("vapi_bridge")

HEADER = "X-Vapi-Bridge-Profile"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# What a profile may change: what one assistant needs to differ in, nothing about the server.
OVERRIDABLE = frozenset(
    {
        "model",
        "model_map",
        "default_model",
        "system_prompt",
        "system_prompt_file",
        "system_prompt_mode",
        "hooks",
        "fallback_models",
        "attempt_timeout",
        "hedge_after",
        "apology",
        "no_apology",
        "reasoning",
        "reasoning_budget",
        "speech_filter",
    }
)

R = TypeVar("R")


class Profiles(Generic[R]):
    """The profiles in a watched file, each built into what a request runs with (``R``)."""

    def __init__(self, path: Path, base: Settings, build: Callable[[Settings], R]) -> None:
        self.path = path
        self._base = base
        self._build = build
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        try:
            self._built = self._load(self._stat())
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the profiles file {path}: {exc.strerror or exc}.",
                hint="Check the path given to --profiles.",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._current())

    def get(self, name: str) -> R:
        """The profile ``name``; an unknown one is a 400 naming the known ones."""
        built = self._current()
        if name not in built:
            known = ", ".join(sorted(built)) or "none"
            raise InvalidRequest(
                f"Unknown profile '{name[:64]}' in the {HEADER} header.",
                hint=f"Profiles in {self.path.name}: {known}.",
                code="unknown_profile",
            )
        return built[name]

    def _current(self) -> dict[str, R]:
        """The profiles, re-read first when the file changed (one ``stat`` per request)."""
        try:
            info = self._stat()
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return self._built
        with self._lock:
            if stamp != self._stamp:
                # Tried once per change: a broken or missing file is said once, not per request.
                self._stamp = stamp
                try:
                    if stamp is None:
                        raise OSError(f"{self.path} is missing")
                    self._built = self._load(info)
                    log.info("profiles re-read from %s: %s", self.path, ", ".join(self._built))
                except (OSError, ConfigError) as exc:
                    reason = exc.message if isinstance(exc, ConfigError) else exc
                    log.warning("profiles file unusable, keeping the last good version: %s", reason)
        return self._built

    def _stat(self) -> os.stat_result:
        return os.stat(self.path)

    def _load(self, info: os.stat_result) -> dict[str, R]:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"The profiles file {self.path} is not valid TOML: {exc}.",
                hint="See the README's Profiles section for the format.",
            ) from None
        built = {}
        for name, settings in parse(data, self._base, self.path):
            try:
                built[name] = self._build(settings)
            except ConfigError as exc:  # e.g. its system_prompt_file: said as the profile's
                raise ConfigError(
                    f"{self.path.name}: profile '{name}': {exc.message}",
                    hint=f"Fix it in {self.path}; a relative path in it is read from that "
                    "file's folder.",
                ) from None
        self._stamp = (info.st_mtime_ns, info.st_size)
        return built


def parse(data: dict[str, Any], base: Settings, path: Path) -> list[tuple[str, Settings]]:
    """Each profile of a parsed file, as the base settings with its overrides applied."""
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError(
            f"{path} has no [profiles.NAME] tables.",
            hint='Add one, e.g. [profiles.sales] with model = "gpt-oss-120b".',
        )
    out = []
    for name, changes in profiles.items():
        where = f"{path.name}: profile '{name}'"
        if not NAME.match(name):
            raise ConfigError(f"{where}: a name may hold letters, digits, '.', '_', '-'.")
        if not isinstance(changes, dict):
            raise ConfigError(f"{where} must be a table of settings.")
        refused = sorted(set(changes) - OVERRIDABLE)
        if refused:
            raise ConfigError(
                f"{where} cannot set {', '.join(refused)}.",
                hint="A profile may set: " + ", ".join(sorted(OVERRIDABLE)) + ".",
            )
        prompt_file = changes.get("system_prompt_file")
        if isinstance(prompt_file, str):
            changes = {**changes, "system_prompt_file": str(path.parent / prompt_file)}
        if "system_prompt_file" in changes and "system_prompt" not in changes:
            changes = {**changes, "system_prompt": None}
        if "system_prompt" in changes and "system_prompt_file" not in changes:
            changes = {**changes, "system_prompt_file": None}
        hint = f"Fix it in {path.name}; `vapi-bridge serve --help` lists each setting's values."
        out.append((name, overlay(base, changes, where, hint)))
    return out


def names_in(path: Path) -> list[str]:
    """The profile names a file declares (for the panel and ``--profile``), or ``[]``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    profiles = data.get("profiles")
    return sorted(profiles) if isinstance(profiles, dict) else []


def settings_for(path: Path, base: Settings, name: str) -> Settings | None:
    """One profile's settings (for what ``serve --assistant --profile`` wires), or ``None``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return dict(parse(data, base, path)).get(name)
