"""Conversation logs: one JSON Lines file per Vapi call, a line per turn.

Each line holds what the caller just said, the reply, tool calls, timings and SambaNova's
usage figures. Vapi's private fields are never written (the bridge never keeps them), phone
numbers in the text are masked, files are ``0600``, and writing happens on the background
worker, after the reply.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from vapi_bridge.errors import ConfigError
from vapi_bridge.keystore import ensure_private_dir
from vapi_bridge.reply import Reply
from vapi_bridge.translate import message_text

_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def mask_phones(text: str) -> str:
    """Mask runs of 7+ digits (phone numbers) but their last two digits."""

    def mask(match: re.Match[str]) -> str:
        value = match.group(0)
        digits = sum(c.isdigit() for c in value)
        if digits < 7:
            return value
        seen = 0
        out = []
        for c in value:
            if c.isdigit():
                seen += 1
                out.append(c if seen > digits - 2 else "*")
            else:
                out.append(c)
        return "".join(out)

    return _PHONE.sub(mask, text)


def new_turn(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What arrived since the assistant last spoke: the caller's words and tool results."""
    turn: list[dict[str, str]] = []
    for message in reversed(messages):
        if message.get("role") == "assistant":
            break
        if message.get("role") in ("user", "tool"):
            turn.append(
                {
                    "role": message["role"],
                    "content": mask_phones(message_text(message.get("content"))),
                }
            )
    return list(reversed(turn))


class TranscriptWriter:
    """Appends turns to ``<dir>/<call id>.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            ensure_private_dir(directory)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise ConfigError(
                f"Cannot write transcripts to {directory}: {exc.strerror or exc}.",
                hint="Pass --transcript-dir a folder you can write to (it is created if missing).",
            ) from None

    def path_for(self, call_id: str | None) -> Path:
        name = _SAFE_NAME.sub("", call_id or "")[:64] or "no-call-id"
        return self.directory / f"{name}.jsonl"

    def write(self, messages: list[dict[str, Any]], reply: Reply) -> None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "call_id": reply.call_id,
            "model": reply.model,
            "caller": new_turn(messages),
            "reply": mask_phones(reply.text),
            "reasoning": mask_phones(reply.reasoning) if reply.reasoning else None,
            "tool_calls": [call.as_dict() for call in reply.tool_calls],
            "finish_reason": reply.finish_reason,
            "ttft_ms": reply.ttft_ms,
            "ttfs_ms": reply.ttfs_ms,
            "total_ms": reply.total_ms,
            "usage": reply.usage,
            "outcome": reply.outcome,
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path_for(reply.call_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
