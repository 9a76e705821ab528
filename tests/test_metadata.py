"""The assistant's metadata in each of Vapi's ``metadataSendMode``s: seen by hooks, never
forwarded upstream."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import BridgeFactory, vapi_request
from vapi_bridge.translate import FORWARDED_PARAMS, translate

DEFAULT = "Meta-Llama-3.3-70B-Instruct"
CANARY = "canary-metadata-5d1e"
METADATA = {"campaign": CANARY, "crm": {"contactId": CANARY + "-nested"}}

HOOK = """
seen = []

def record(request):
    seen.append(dict(request.metadata))
"""


def body_in_mode(mode: str) -> dict[str, Any]:
    """A Vapi request as the assistant's ``metadataSendMode`` shapes it."""
    body = vapi_request()
    del body["metadata"]
    if mode == "variable":
        body["metadata"] = METADATA
    elif mode == "destructured":
        body.update(METADATA)
    else:  # off: only the chat fields
        body = {k: v for k, v in body.items() if k in FORWARDED_PARAMS}
    return body


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("variable", METADATA), ("destructured", METADATA), ("off", {})],
)
def test_metadata_in_every_mode(mode: str, expected: dict[str, Any]) -> None:
    request = translate(body_in_mode(mode), default_model=DEFAULT)
    assert request.metadata == expected
    assert set(request.params) <= FORWARDED_PARAMS


def test_destructured_metadata_leaves_out_vapi_and_chat_fields() -> None:
    body = {
        **body_in_mode("destructured"),
        "functions": [{"name": "f"}],
        "user": "someone",
        "assistant": {"id": "a"},
        "activeAssistant": {"id": "a"},
        "credentials": [{"provider": "custom-llm", "apiKey": "k"}],
        "toolDefinitionsExcluded": True,
        "timestamp": 1771518114,
        "org": {"id": "o"},
    }
    assert translate(body, default_model=DEFAULT).metadata == METADATA


def test_variable_metadata_wins_over_a_spread_field_of_the_same_name() -> None:
    body = {**body_in_mode("variable"), "campaign": "spread"}
    assert translate(body, default_model=DEFAULT).metadata["campaign"] == CANARY


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"metadata_hooks_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HOOK))
    monkeypatch.chdir(tmp_path)
    return name


@pytest.mark.parametrize("mode", ["variable", "destructured"])
def test_hooks_see_metadata_and_upstream_never_does(
    start_bridge: BridgeFactory, fake: FakeSambaNova, hook_module: str, mode: str
) -> None:
    bridge = start_bridge(hooks=(f"{hook_module}:record",))
    assert bridge.post(body_in_mode(mode)).status_code == 200
    assert sys.modules[hook_module].seen == [METADATA]
    sent = fake.last.body
    assert set(sent) <= FORWARDED_PARAMS
    assert CANARY not in json.dumps(sent)
