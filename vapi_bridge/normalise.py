"""Repair a whole (non-streamed) SambaNova reply into what Vapi and OpenAI clients accept.

The streamed counterpart is the :class:`~vapi_bridge.stages.Normalise` stage. A body whose
shape is wrong is named as such (``upstream_bad_response``), never mistaken for a network
failure and never left to fail later in a hook or transcript.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from vapi_bridge.errors import InBandError, UpstreamError
from vapi_bridge.stages import error_text, int_created


def normalise_completion(body: Any, model: str) -> dict[str, Any]:
    """Repair a ``chat.completion`` body (int ``created``, a ``choices`` list of objects)."""
    if not isinstance(body, dict):
        raise _malformed("the body is not a JSON object")
    if body.get("error") is not None:
        raise InBandError(f"SambaNova reported an error: {error_text(body)}")
    choices = body.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        raise _malformed("`choices` is not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise _malformed(f"`choices[{i}]` is not an object")
        message = choice.get("message")
        if message is not None and not isinstance(message, dict):
            raise _malformed(f"`choices[{i}].message` is not an object")
        calls = (message or {}).get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _malformed(f"`choices[{i}].message.tool_calls` is not a list")
    out = dict(body)
    out["object"] = "chat.completion"
    out["created"] = int_created(body.get("created"), int(time.time()))
    out.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
    out.setdefault("model", model)
    out["choices"] = choices
    return out


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(
        f"SambaNova answered with a malformed completion: {what}.",
        hint="Check --base-url: it must be an OpenAI-compatible API.",
        code="upstream_bad_response",
    )
