"""Example vapi-bridge hooks.

Run from this folder:

    vapi-bridge serve --hook hooks_example:add_date --reply-hook hooks_example:print_latency

``add_date`` tells the model today's date (models do not know it), so "book me for next
Tuesday" resolves to a real day. ``print_latency`` runs after each reply, off the call's path.
"""

from __future__ import annotations

import datetime
import logging

from vapi_bridge.hooks import HookReply, HookRequest

# A child of the bridge's logger: lines go to stderr with the request log (stdout is the URL).
log = logging.getLogger("vapi_bridge.hooks_example")


def add_date(request: HookRequest) -> HookRequest:
    today = datetime.date.today().strftime("%A %d %B %Y")
    note = f"Today is {today}."
    messages = request.messages
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{note}"
    else:
        messages.insert(0, {"role": "system", "content": note})
    return request


def print_latency(reply: HookReply) -> None:
    call = reply.call_id or "(not a Vapi call)"
    log.info("call %s: first token %s ms, %d chars", call, reply.ttft_ms, len(reply.text))
