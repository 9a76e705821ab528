"""Prompt control: a system prompt that replaces, prepends or appends to Vapi's.

A prompt file is re-read when its modification time or size changes, so a user edits the
prompt between two calls without restarting; one ``stat`` per request is the whole cost.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from vapi_bridge.errors import ConfigError

log = logging.getLogger("vapi_bridge")
SYSTEM_ROLES = ("system", "developer")


class SystemPrompt:
    """The prompt to apply, from text or from a watched file."""

    def __init__(self, *, text: str | None = None, path: Path | None = None, mode: str) -> None:
        self.mode = mode
        self._path = path
        self._text = text or ""
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if path is not None:
            try:
                self._reload(os.stat(path))
            except OSError as exc:
                raise ConfigError(
                    f"Cannot read the system prompt file {path}: {exc.strerror or exc}.",
                    hint="Check the path given to --system-prompt-file.",
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(
                    f"The system prompt file {path} is not UTF-8 text.",
                    hint="Save it as UTF-8 (not UTF-16, not a binary file) and start again.",
                ) from None

    def text(self) -> str:
        """The current prompt; a file that vanished or broke keeps its last good text."""
        if self._path is None:
            return self._text
        try:
            info = os.stat(self._path)
            if (info.st_mtime_ns, info.st_size) != self._stamp:
                with self._lock:
                    self._reload(info)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("system prompt file unreadable, keeping the last version: %s", exc)
        return self._text

    def _reload(self, info: os.stat_result) -> None:
        assert self._path is not None
        self._text = self._path.read_text(encoding="utf-8").strip()
        self._stamp = (info.st_mtime_ns, info.st_size)

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A new message list with the prompt applied to the first system message."""
        prompt = self.text()
        if not prompt:
            return messages
        out = list(messages)
        for i, message in enumerate(out):
            if message.get("role") in SYSTEM_ROLES and isinstance(message.get("content"), str):
                out[i] = {**message, "content": self._merge(prompt, message["content"])}
                return out
        return [{"role": "system", "content": prompt}, *out]

    def _merge(self, prompt: str, current: str) -> str:
        if self.mode == "replace" or not current:
            return prompt
        return f"{prompt}\n\n{current}" if self.mode == "prepend" else f"{current}\n\n{prompt}"
