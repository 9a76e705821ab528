"""Server-sent events framing, exactly as Vapi's OpenAI client parses it.

Only ``data:`` lines carrying JSON, then ``data: [DONE]``: no ``event:`` lines, no error
frames (protocol.md section 2). Compact JSON keeps each frame small on the wire.
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
CONTENT_TYPE = "text/event-stream"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def frame(chunk: dict[str, Any]) -> bytes:
    """One SSE event holding ``chunk`` as JSON."""
    return b"data: " + _encode(chunk).encode("utf-8") + b"\n\n"
