"""Middleware seams: what runs before the upstream call and after a reply ends."""

from __future__ import annotations

from vapi_bridge.app import OnReply, Prepare
from vapi_bridge.settings import Settings


def build_middleware(settings: Settings) -> tuple[Prepare | None, OnReply | None]:
    """The request and reply hooks the settings ask for; ``None`` when there is nothing to do."""
    return None, None
