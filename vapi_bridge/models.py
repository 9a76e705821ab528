"""What the bridge knows about SambaNova's model families, as data, and the reasoning controls
it sends for ``serve --reasoning``.

One row per family in :data:`MODELS`: update a fact by editing one line, and give its source.
The first row whose pattern matches the model id wins (case-insensitive, from the start of the
id, after any ``owner/`` prefix), so put narrower patterns first. A model no row matches is
unknown: the bridge sends it no reasoning controls and leaves ``max_tokens`` alone. The
reasoning filter removes every known shape of reasoning whatever the model, so the table
decides only what is *sent*, never what is *filtered*.

Reasoning kinds:

- ``none``: the model does not reason;
- ``always``: it always reasons and has no off switch;
- ``effort``: it always reasons, as much as ``reasoning_effort`` (low, medium, high) asks;
- ``hybrid``: ``chat_template_kwargs.enable_thinking`` turns thinking on or off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

POLICIES = ("off", "low", "medium", "high", "model")
DEFAULT_POLICY = "off"
# Reasoning tokens allowed on top of the request's max_tokens (Vapi sends 250 by default, sized
# for the spoken reply). 1024 covers the reasoning of a conversational turn at low effort
# (typically well under 200 tokens for gpt-oss) and of always-thinking models (a few hundred),
# while a runaway chain of thought is still cut: at SambaNova's few hundred tokens a second it
# is a few seconds, well inside Vapi's 20 s wait for the first token. The cap costs nothing
# when unused; too small a cap makes a reasoning model spend the whole budget thinking and say
# nothing at all, the failure this budget exists to prevent.
DEFAULT_REASONING_BUDGET = 1024


# Where each fact comes from; a row names its sources by these keys.
SOURCES = {
    "sdk": "sambanova SDK 1.13, types/chat: delta.reasoning and delta.channel 'returned by "
    "reasoning models like gpt oss'; reasoning_effort low|medium|high; "
    "chat_template_kwargs.enable_thinking for 'deepseek models'",
    "fc": "https://docs.sambanova.ai/docs/en/features/function-calling (function calling: "
    "Meta-Llama-3.3-70B-Instruct, Llama-4-Maverick, Qwen3-235B, gpt-oss-120b, DeepSeek-V3.1, "
    "DeepSeek-V3.2, MiniMax-M2.x)",
    "fc-old": "https://community.sambanova.ai/t/function-calling-json-mode-in-sambanova-cloud/1196"
    " (DeepSeek-V3-0324 function calling)",
    "r1": "https://docs.sambanova.ai/docs/en/build/reasoning (DeepSeek-R1 thinks inside <think> "
    "tags, which it rarely skips; DeepSeek-V3.2 thinking is optional and off by default)",
    "hybrid": "https://www.alibabacloud.com/help/en/model-studio/deepseek-api (V3.1/V3.2 hybrid "
    "via enable_thinking, off by default; R1 always thinks; V3 never)",
    "together": "https://docs.together.ai/docs/reasoning-overview (MiniMax-M2.5 reasoning only; "
    "DeepSeek-V3.1 tools only with reasoning off; gpt-oss always reasons, adjustable effort)",
    "qwen3": "https://github.com/QwenLM/Qwen3 README (enable_thinking, on by default, <think>)",
    "qwq": "https://huggingface.co/Qwen/QwQ-32B-Preview (reasons in plain text, no tags)",
    "llama": "Meta's Llama 3.x and 4 are not reasoning models",
}

# One family per line; the first pattern that matches wins. Columns:
# pattern: regular expression matched at the start of the model id (case-insensitive)
# family:  a name for people
# reason:  none | always | effort | hybrid (see the module docstring)
# appears: where the reasoning shows up in a reply; the filter removes every shape but
#          untagged-text (reasoning written as plain words, which nothing can tell apart)
# tools:   function calling on SambaNova: yes | no | ?
# sources: keys of SOURCES, comma-separated
TABLE = r"""
pattern                              family         reason  appears          tools  sources
gpt-oss                              gpt-oss        effort  delta.reasoning  yes    sdk,fc,together
DeepSeek-R1                          DeepSeek-R1    always  <think>          no     r1,hybrid,fc
DeepSeek-V3\.[1-9]                   DeepSeek-V3.x  hybrid  <think>          yes    sdk,hybrid,r1,fc
DeepSeek-V3                          DeepSeek-V3    none    -                yes    hybrid,fc-old
MiniMax-M                            MiniMax-M      always  <think>          yes    together,fc
Qwen3-235B                           Qwen3          hybrid  <think>          yes    qwen3,fc
Qwen3                                Qwen3          hybrid  <think>          ?      qwen3
QwQ                                  QwQ            always  untagged-text    no     qwq
(Meta-)?Llama-(3\.3-70B|4-Maverick)  Llama          none    -                yes    llama,fc
(Meta-)?Llama                        Llama          none    -                ?      llama
"""


@dataclass(frozen=True)
class Family:
    """One row of :data:`TABLE`."""

    pattern: str
    family: str
    reasoning: str
    appears: str
    tools: str
    sources: tuple[str, ...]


def _parse(table: str) -> tuple[Family, ...]:
    rows = []
    for line in table.strip().splitlines()[1:]:
        pattern, family, reasoning, appears, tools, sources = line.split()
        rows.append(Family(pattern, family, reasoning, appears, tools, tuple(sources.split(","))))
    return tuple(rows)


MODELS = _parse(TABLE)
_COMPILED = tuple((re.compile(row.pattern, re.IGNORECASE), row) for row in MODELS)


class Row(NamedTuple):
    """One line of ``vapi-bridge models``."""

    id: str
    family: str
    reasoning: str
    tools: str


def lookup(model: str) -> Family | None:
    """The table's row for ``model``, or None when the bridge does not know it."""
    name = model.rsplit("/", 1)[-1]
    for pattern, row in _COMPILED:
        if pattern.match(name):
            return row
    return None


def reasoning_params(
    model: str,
    policy: str,
    max_tokens: int | None,
    budget: int,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Parameters to add to a request for ``model`` under ``--reasoning policy``.

    ``off`` asks for the least reasoning the model allows (``reasoning_effort: "low"`` for
    gpt-oss, ``enable_thinking: false`` for hybrid models; always-reasoning models cannot be
    asked); ``low``/``medium``/``high`` set the effort, or turn thinking on; ``model`` adds
    nothing at all. What the request already sets (``reasoning_effort``,
    ``chat_template_kwargs.enable_thinking``, from Vapi, a hook or a profile) wins. When the
    model will reason, ``budget`` tokens are added on top of ``max_tokens`` so that the
    request's own limit stays the budget of the spoken reply.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown reasoning policy {policy!r}; choose one of {POLICIES}")
    row = lookup(model)
    if policy == "model" or row is None or row.reasoning == "none":
        return {}
    add: dict[str, Any] = {}
    if row.reasoning == "effort":
        if params.get("reasoning_effort") is None:
            add["reasoning_effort"] = "low" if policy == "off" else policy
        reasons = True
    elif row.reasoning == "hybrid":
        kwargs = params.get("chat_template_kwargs")
        kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
        thinking = kwargs.get("enable_thinking")
        if thinking is None:
            thinking = policy != "off"
            add["chat_template_kwargs"] = {**kwargs, "enable_thinking": thinking}
        reasons = bool(thinking)
    else:
        reasons = True
    if reasons and budget > 0:
        if max_tokens is not None:
            add["max_tokens"] = max_tokens + budget
        elif isinstance(params.get("max_completion_tokens"), int):
            add["max_completion_tokens"] = params["max_completion_tokens"] + budget
    return add


def reasoning_label(row: Family | None) -> str:
    """How a family reasons, in a few words for a table cell."""
    if row is None:
        return "unknown"
    return {
        "none": "no",
        "always": "always",
        "effort": "always (effort low/medium/high)",
        "hybrid": "on/off (enable_thinking)",
    }.get(row.reasoning, row.reasoning)


def describe(model_ids: Iterable[str]) -> list[Row]:
    """What the table knows of each model id, in the order given (for ``vapi-bridge models``)."""
    rows = []
    for model in model_ids:
        row = lookup(model)
        family = row.family if row is not None else "unknown"
        tools = row.tools if row is not None else "?"
        rows.append(Row(model, family, reasoning_label(row), tools))
    return rows


def show(rows: list[Row], *, default: str, serving: str, as_json: bool) -> None:
    """``vapi-bridge models``: a table on stdout (or JSON), marking the default and served one."""
    import json
    import sys

    if as_json:
        data = [
            {**row._asdict(), "default": row.id == default, "serving": row.id == serving}
            for row in rows
        ]
        sys.stdout.write(json.dumps(data) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    # Model ids are what users copy: never folded or cut, whatever the width.
    longest = max((len(row.id) for row in rows), default=5)
    table.add_column("model", no_wrap=True, min_width=longest)
    for column in ("family", "reasoning", "tools", ""):
        table.add_column(column)
    for row in rows:
        marks = [
            m for m, on in (("default", row.id == default), ("serve", row.id == serving)) if on
        ]
        table.add_row(row.id, row.family, row.reasoning, row.tools, ", ".join(marks))
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
