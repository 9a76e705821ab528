"""Vapi request body -> validated SambaNova parameters.

Vapi sends an OpenAI chat-completions body plus its own fields (``call``, ``customer``,
``phoneNumber``, ``metadata``, ...) that carry secrets and personal data. Only the chat
parameters in :data:`FORWARDED_PARAMS` ever leave the bridge; anything else is dropped here,
because the SDK raises ``TypeError`` on unknown keywords and because Vapi's fields must never
reach SambaNova. Legacy ``functions`` / ``function_call`` / ``function``-role messages are
converted to their ``tools`` equivalents, the only shape SambaNova and Vapi both stream.

The assistant's metadata reaches hooks and transcripts in both of Vapi's modes:
``metadataSendMode: variable`` sends it as ``metadata``; ``destructured`` spreads its fields
at the top level, where they are whatever is neither a chat parameter nor Vapi's own field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vapi_bridge.errors import InvalidRequest
from vapi_bridge.reply import Reply

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
MAX_MESSAGES = 5000

FORWARDED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "chat_template_kwargs",
        "do_sample",
    }
)


# Chat-completions fields the bridge knows but does not forward (legacy or OpenAI-only).
KNOWN_CHAT_FIELDS = frozenset(
    {
        "functions",
        "function_call",
        "user",
        "store",
        "modalities",
        "audio",
        "prediction",
        "service_tier",
        "web_search_options",
        "verbosity",
        "safety_identifier",
        "prompt_cache_key",
    }
)
# Vapi's own top-level fields: never part of the assistant's (destructured) metadata.
VAPI_FIELDS = frozenset(
    {
        "call",
        "customer",
        "phoneNumber",
        "assistant",
        "activeAssistant",
        "credentials",
        "toolDefinitionsExcluded",
        "timestamp",
        "org",
        "metadata",
    }
)
_NOT_METADATA = FORWARDED_PARAMS | KNOWN_CHAT_FIELDS | VAPI_FIELDS


@dataclass(frozen=True)
class ChatRequest:
    """A validated request: the upstream parameters plus what the bridge keeps for itself."""

    params: dict[str, Any]
    stream: bool
    include_usage: bool
    call_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.params["model"])


# The middleware seams: change a request before it goes upstream; see a finished reply.
Prepare = Callable[[ChatRequest], ChatRequest]
OnReply = Callable[[ChatRequest, Reply], None]


def translate(
    body: Any,
    *,
    default_model: str,
    forced_model: str | None = None,
    model_map: Mapping[str, str] | None = None,
) -> ChatRequest:
    """Validate ``body`` and build the upstream parameters, or raise :class:`InvalidRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    params: dict[str, Any] = {}
    for name, check in _SCALARS.items():
        value = body.get(name)
        if value is not None:
            params[name] = check(name, value)

    stream = params.pop("stream", False)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        _require(isinstance(stream_options, dict), "stream_options", "must be an object")
        include_usage = stream_options.get("include_usage") is True

    params["model"] = _model(body.get("model"), default_model, forced_model, model_map or {})
    params["messages"] = _messages(body.get("messages"))
    tools = _tools(body)
    if tools is not None:
        params["tools"] = tools
    tool_choice = _tool_choice(body)
    if tool_choice is not None:
        params["tool_choice"] = tool_choice
    for name in ("response_format", "logit_bias", "chat_template_kwargs"):
        value = body.get(name)
        if value is not None:
            _require(isinstance(value, dict), name, "must be an object")
            params[name] = value
    if stream:
        # Always ask for usage so the request log can report tokens; the usage-only chunk is
        # forwarded only when the client asked for it.
        params["stream_options"] = {"include_usage": True}
    params["stream"] = stream
    return ChatRequest(
        params=params,
        stream=stream,
        include_usage=include_usage,
        call_id=_call_id(body),
        metadata=_metadata(body),
    )


def message_text(content: Any) -> str:
    """The plain text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _require(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise InvalidRequest(f"`{param}` {what}.", code="invalid_parameter")


def _number(low: float, high: float) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok and low <= value <= high, name, f"must be a number from {low:g} to {high:g}")
        return float(value)

    return check


def _integer(low: int, high: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok and low <= value <= high, name, f"must be a whole number from {low} to {high}")
        return int(value)

    return check


def _boolean(name: str, value: Any) -> bool:
    _require(isinstance(value, bool), name, "must be true or false")
    return bool(value)


def _stop(name: str, value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    ok = isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value)
    _require(ok, name, "must be a string or a list of at most 4 strings")
    return list(value)


def _effort(name: str, value: Any) -> str:
    _require(value in ("low", "medium", "high"), name, "must be 'low', 'medium' or 'high'")
    return str(value)


_SCALARS: dict[str, Callable[[str, Any], Any]] = {
    "stream": _boolean,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_k": _integer(1, 1000),
    "max_tokens": _integer(1, 1_000_000),
    "max_completion_tokens": _integer(1, 1_000_000),
    "stop": _stop,
    "seed": _integer(-(2**63), 2**63 - 1),
    "n": _integer(1, 8),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "repetition_penalty": _number(0, 10),
    "logprobs": _boolean,
    "top_logprobs": _integer(0, 20),
    "parallel_tool_calls": _boolean,
    "reasoning_effort": _effort,
    "do_sample": _boolean,
}


def _model(value: Any, default: str, forced: str | None, model_map: Mapping[str, str]) -> str:
    if value is not None:
        ok = isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable()
        _require(ok, "model", "must be a model name (printable, at most 256 characters)")
    if forced:
        return forced
    if isinstance(value, str) and value in model_map:
        return model_map[value]
    return value if isinstance(value, str) else default


def _messages(value: Any) -> list[dict[str, Any]]:
    _require(isinstance(value, list) and len(value) > 0, "messages", "must be a non-empty list")
    _require(len(value) <= MAX_MESSAGES, "messages", f"may hold at most {MAX_MESSAGES} entries")
    out: list[dict[str, Any]] = []
    legacy_ids: dict[str, str] = {}
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        _require(isinstance(message, dict), where, "must be an object")
        role = message.get("role")
        _require(isinstance(role, str) and role in ROLES, f"{where}.role", _ROLES_TEXT)
        clean = {k: message[k] for k in MESSAGE_KEYS if message.get(k) is not None}
        _content(clean.get("content"), role, where)
        if "name" in clean:
            _require(isinstance(clean["name"], str), f"{where}.name", "must be a string")
        if "tool_calls" in clean:
            clean["tool_calls"] = _message_tool_calls(clean["tool_calls"], where)
        function_call = message.get("function_call")
        if role == "assistant" and function_call is not None:
            clean["tool_calls"] = [_legacy_call(function_call, i, where, legacy_ids)]
        if role == "function":
            clean = _legacy_result(clean, where, legacy_ids)
        if clean["role"] == "tool":
            tool_call_id = clean.get("tool_call_id")
            _require(isinstance(tool_call_id, str), f"{where}.tool_call_id", "must be a string")
        if role == "assistant" and "content" not in clean:
            clean["content"] = None if "tool_calls" in clean else ""
        out.append(clean)
    return out


_ROLES_TEXT = "must be one of " + ", ".join(sorted(ROLES))


def _content(content: Any, role: str, where: str) -> None:
    if content is None:
        _require(role in ("assistant", "function"), f"{where}.content", "is required")
        return
    if isinstance(content, str):
        return
    ok = isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
    )
    _require(ok, f"{where}.content", "must be a string or a list of content parts")


def _message_tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    _require(isinstance(value, list), f"{where}.tool_calls", "must be a list")
    calls = []
    for j, call in enumerate(value):
        at = f"{where}.tool_calls[{j}]"
        _require(isinstance(call, dict), at, "must be an object")
        function = call.get("function")
        _require(isinstance(function, dict), f"{at}.function", "must be an object")
        _require(isinstance(call.get("id"), str), f"{at}.id", "must be a string")
        calls.append(
            {"id": call["id"], "type": "function", "function": _function_call(function, at)}
        )
    return calls


def _function_call(function: dict[str, Any], at: str) -> dict[str, str]:
    name = function.get("name")
    _require(isinstance(name, str) and bool(name), f"{at}.function.name", "must be a string")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)
    _require(isinstance(arguments, str), f"{at}.function.arguments", "must be a JSON string")
    return {"name": name, "arguments": arguments}


def _legacy_call(
    function_call: Any, i: int, where: str, legacy_ids: dict[str, str]
) -> dict[str, Any]:
    _require(isinstance(function_call, dict), f"{where}.function_call", "must be an object")
    function = _function_call(function_call, where)
    call_id = f"call_legacy_{i}"
    legacy_ids[function["name"]] = call_id
    return {"id": call_id, "type": "function", "function": function}


def _legacy_result(
    message: dict[str, Any], where: str, legacy_ids: dict[str, str]
) -> dict[str, Any]:
    name = message.get("name")
    _require(isinstance(name, str), f"{where}.name", "is required on a 'function' message")
    call_id = legacy_ids.get(str(name), f"call_legacy_{name}")
    content = message.get("content")
    return {"role": "tool", "tool_call_id": call_id, "content": content or ""}


def _tool_definition(value: Any, at: str) -> dict[str, Any]:
    _require(isinstance(value, dict), at, "must be an object")
    name = value.get("name")
    _require(isinstance(name, str) and bool(name), f"{at}.name", "must be a non-empty string")
    out: dict[str, Any] = {"name": name}
    if value.get("description") is not None:
        _require(isinstance(value["description"], str), f"{at}.description", "must be a string")
        out["description"] = value["description"]
    if value.get("parameters") is not None:
        _require(isinstance(value["parameters"], dict), f"{at}.parameters", "must be an object")
        out["parameters"] = value["parameters"]
    if isinstance(value.get("strict"), bool):
        out["strict"] = value["strict"]
    return out


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is not None:
        _require(isinstance(tools, list), "tools", "must be a list")
        out = []
        for i, tool in enumerate(tools):
            _require(isinstance(tool, dict), f"tools[{i}]", "must be an object")
            kind = tool.get("type", "function")
            _require(kind == "function", f"tools[{i}].type", "must be 'function'")
            function = _tool_definition(tool.get("function"), f"tools[{i}].function")
            out.append({"type": "function", "function": function})
        return out or None
    functions = body.get("functions")
    if functions is None:
        return None
    _require(isinstance(functions, list), "functions", "must be a list")
    converted = [_tool_definition(f, f"functions[{i}]") for i, f in enumerate(functions)]
    return [{"type": "function", "function": f} for f in converted] or None


def _tool_choice(body: dict[str, Any]) -> Any:
    choice = body.get("tool_choice")
    if choice is None:
        legacy = body.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
            return {"type": "function", "function": {"name": legacy["name"]}}
        if legacy in ("auto", "none"):
            return legacy
        _require(legacy is None, "function_call", "must be 'auto', 'none' or {\"name\": ...}")
        return None
    if isinstance(choice, str):
        _require(choice in ("none", "auto", "required"), "tool_choice", _CHOICE_TEXT)
        return choice
    function = choice.get("function") if isinstance(choice, dict) else None
    ok = isinstance(function, dict) and isinstance(function.get("name"), str)
    _require(ok, "tool_choice", _CHOICE_TEXT)
    return {"type": "function", "function": {"name": function["name"]}}  # type: ignore[index]


_CHOICE_TEXT = "must be 'none', 'auto', 'required' or a function choice"


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant's metadata, sent as ``metadata`` or spread at the top level."""
    spread = {k: v for k, v in body.items() if k not in _NOT_METADATA}
    sent = body.get("metadata")
    return {**spread, **sent} if isinstance(sent, dict) else spread


def _call_id(body: dict[str, Any]) -> str | None:
    """Vapi's call id, for logs and transcripts (not a secret, unlike most of ``call``)."""
    call = body.get("call")
    if isinstance(call, dict) and isinstance(call.get("id"), str):
        return str(call["id"])[:64]
    return None
