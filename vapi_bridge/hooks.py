"""User hooks: the typed objects they receive and how they are loaded.

A request hook is ``def hook(request: HookRequest) -> HookRequest | None``: it may change the
messages, the model or the parameters before the upstream call (return the object, or change
it in place and return ``None``). A reply hook is ``def hook(reply: HookReply) -> None`` and
runs after the reply ended, on a background thread, off the caller's path.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vapi_bridge.errors import ConfigError
from vapi_bridge.reply import Reply


@dataclass
class HookRequest:
    """One request before it goes upstream."""

    messages: list[dict[str, Any]]
    model: str
    params: dict[str, Any]
    call_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


# A reply hook receives the finished reply: what the caller heard (``text``, ``tool_calls``),
# the reasoning they did not hear, timings, usage and ``outcome``.
HookReply = Reply


def load(spec: str) -> Callable[..., Any]:
    """Import ``module:function``; the working directory is searched first, as users expect."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"Hook '{spec}' is not module:function.", hint="Example: my_hooks:add_date"
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"Cannot import hook module '{module_name}': {exc.__class__.__name__}: {exc}.",
            hint="Run serve from the folder holding the module, or install it.",
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        found = (
            f"'{module_name}' has no function '{attribute}'."
            if function is None
            else f"'{module_name}.{attribute}' is a {type(function).__name__}, not a function."
        )
        raise ConfigError(found, hint="Check the name after ':'.")
    return function  # type: ignore[no-any-return]
