"""``vapi-bridge test``: it judges any server's reply, names every fault, and never crashes.

Servers are real sockets: the bridge with the fake SambaNova, or a scripted server that sends
exactly the bytes a test chose (tests/fakes/broken_llm.py).
"""

from __future__ import annotations

import copy
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.fakes.broken_llm import (
    Answer,
    ScriptedServer,
    broken_server,
    chunk,
    completion,
    silent_server,
    sse_body,
)
from tests.helpers import SECRET, BridgeFactory, LogCapture, RunningBridge
from tests.process import closed_port, run_cli
from vapi_bridge import probe
from vapi_bridge.errors import ProbeError

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
GOOD_STREAM = sse_body(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello there."}),
    chunk({"content": ""}, "stop"),
)


def assert_clean_failure(result: Any, code: int = 1) -> str:
    """Non-zero exit, a cause and a fix, no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    err: str = result.stderr
    assert "Traceback" not in err + result.stdout and "->" in err
    return err


def one_json(stdout: str) -> dict[str, Any]:
    """``--json`` prints exactly one JSON object and nothing else."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    data: dict[str, Any] = json.loads(lines[0])
    return data


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer(Answer(GOOD_STREAM)) as server:
        yield server


def judge(server: ScriptedServer, body: bytes, stream: bool = True, **answer: Any) -> Any:
    server.answer = Answer(body, content_type=answer.pop("content_type", "text/event-stream"))
    result = probe.run(server.url, secret=None, stream=stream, timeout=5)
    assert result.error is None, result.error
    return result


# Connection failures, as a user sees them ------------------------------------------------------


def test_test_reports_refused_connection() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("test", "--url", url)
    assert "Could not connect" in assert_clean_failure(result)
    as_json = run_cli("test", "--url", url, "--json")
    assert "Could not connect" in assert_clean_failure(as_json)
    report = one_json(as_json.stdout)
    assert report["ok"] is False and "Could not connect" in report["error"]["message"]
    assert report["error"]["hint"] and report["url"] == url + "/chat/completions"


def test_test_reports_timeout() -> None:
    with silent_server() as url:
        result = run_cli("test", "--url", url, "--timeout", "0.5")
    assert "within 0.5s" in assert_clean_failure(result)


class Trickle:
    """Answers one request in pieces, one every ``pace`` seconds, so no single read waits
    long but the whole reply takes longer than the probe's timeout. ``finished`` is set once
    every piece went out (a probe that gave up in time left it unset)."""

    def __init__(self, head: bytes, pieces: list[bytes], pace: float = 0.05) -> None:
        self.head, self.pieces, self.pace = head, pieces, pace
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(10)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and (received := conn.recv(65536)):
                request += received
            head, _, body = request.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            while length and len(body) < int(length.group(1)) and (received := conn.recv(65536)):
                body += received
            try:
                conn.sendall(self.head)
                for piece in self.pieces:
                    if self._stop.wait(self.pace):
                        return
                    conn.sendall(piece)
            except OSError:
                return
            self.finished.set()

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(10)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
LONG = 60  # pieces: three seconds at the trickle's pace, ten times the probe's timeout


@pytest.mark.parametrize(
    ("head", "pieces", "stream"),
    [
        (
            SSE_HEAD,
            [sse_body(chunk({"content": "Hi. "}), done=False)] * LONG
            + [sse_body(chunk({}, "stop"))],
            True,
        ),
        (SSE_HEAD, [b'data: {"choices": ['] + [b" "] * LONG, True),
        (b"HTTP/1.1 200 OK\r\nX-Pad: ", [b"a"] * LONG, True),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n",
            [b'{"choices": ['] + [b" "] * LONG,
            False,
        ),
    ],
    ids=["lines", "one long line", "headers", "whole reply"],
)
def test_the_timeout_is_for_the_whole_reply(head: bytes, pieces: list[bytes], stream: bool) -> None:
    """A server that keeps sending a little never lets a per-read timeout fire."""
    with Trickle(head, pieces) as server:
        result = probe.run(server.url, secret=None, stream=stream, timeout=0.3)
        assert not server.finished.is_set(), f"test waited for the whole reply: {result}"
    assert result.error is not None and not result.ok
    assert result.error.message == f"No complete reply from {result.url} within 0.3s."
    assert result.violations == [], "a reply cut by the deadline is not judged"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:5000", "has no scheme"),
        ("http://[::1", "unclosed `[`"),
        ("http://127.0.0.1:99999", "port 99999"),
    ],
)
def test_a_bad_url_is_named_on_the_command_line(url: str, says: str) -> None:
    human = run_cli("test", "--url", url)
    err = assert_clean_failure(human)
    assert says in err and "--url" in err
    assert human.stdout == ""
    as_json = run_cli("test", "--url", url, "--json")
    report = one_json(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False
    assert says in report["error"]["message"] and report["url"] == url


@pytest.mark.parametrize(
    ("url", "says", "hint"),
    [
        ("", "is empty", "--url"),
        ("localhost:5000", "has no scheme", "--url http://localhost:5000"),
        ("//example.com/v1", "has no scheme", "--url http://example.com/v1"),
        ("http://[::1:5000", "unclosed `[`", "http://[::1]:5000"),
        ("http://h:abc", "cannot be parsed", "--url"),
        ("ftp://example.com", "uses ftp://", "--url"),
        ("http://", "has no host", "--url"),
        ("http://exa mple.com", "characters a host cannot have", "--url"),
        ("http://127.0.0.1:0", "port 0; ports run from 1 to 65535", "--url"),
        ("http://127.0.0.1:-1", "port -1", "--url"),
    ],
)
def test_a_bad_url_is_named_before_any_request(url: str, says: str, hint: str) -> None:
    result = probe.run(url, secret=None)
    assert isinstance(result.error, ProbeError)
    assert says in result.error.message and hint in result.error.hint
    assert result.ok is False and result.status == 0


def test_a_url_without_scheme_sends_nothing(scripted: ScriptedServer) -> None:
    result = probe.run(scripted.url.removeprefix("http://"), secret=None)
    assert result.error is not None and "has no scheme" in result.error.message
    assert scripted.requests == []


def test_url_keeps_its_query_and_accepts_a_full_path(scripted: ScriptedServer) -> None:
    assert probe.run(scripted.url + "/v1/?tenant=a", secret=None).ok
    assert probe.run(scripted.url + "/chat/completions/", secret=None).ok
    assert scripted.requests == ["/v1/chat/completions?tenant=a", "/chat/completions"]


def test_credentials_in_the_url_are_not_shown(scripted: ScriptedServer) -> None:
    url = scripted.url.replace("http://", "http://user:hunter2@") + "/v1"
    result = probe.run(url, secret=None)
    assert result.ok and result.url == scripted.url + "/v1/chat/completions"


def test_a_broken_tls_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/vapi-bridge-ca.pem")
    result = probe.run("https://custom-llm.example.invalid", secret=None)
    assert result.error is not None and "could not be set up" in result.error.message
    assert "SSL_CERT_FILE" in result.error.hint


def test_a_key_a_header_cannot_carry_is_refused(scripted: ScriptedServer) -> None:
    result = probe.run(scripted.url, secret="clé-du-pont\n")
    assert result.error is not None and "cannot carry" in result.error.message
    assert "clé" not in result.error.message and scripted.requests == []


def test_a_redirect_is_named(scripted: ScriptedServer) -> None:
    scripted.answer = Answer(b"", status=307, headers={"Location": "https://elsewhere.test/v1"})
    result = probe.run(scripted.url, secret=None)
    assert result.error is not None and result.status == 307
    assert "redirect (HTTP 307) to https://elsewhere.test/v1" in result.error.message


@pytest.mark.parametrize(
    ("status", "hint"),
    [(404, "check the path in --url"), (405, "check the path in --url"), (500, "server's log")],
)
def test_an_error_status_without_a_body_still_gets_a_hint(
    scripted: ScriptedServer, status: int, hint: str
) -> None:
    scripted.answer = Answer(b"", status=status, content_type="text/plain")
    result = probe.run(scripted.url + "/v2", secret=None)
    assert result.error is not None and result.error.message == f"The server answered HTTP {status}"
    assert hint in result.error.hint and "above" not in result.error.hint
    if status != 500:
        assert "/v2/chat/completions" in result.error.hint


def connect_error(cause: BaseException) -> httpx.ConnectError:
    """httpx's error for a failed connect, raised from ``cause`` as httpcore raises it."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as error:
        return error


def test_a_host_that_does_not_resolve_is_not_told_to_start_the_bridge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Judged on the error a failed lookup raises (a real lookup would ask a DNS server)."""
    for name in proxy_env(""):
        monkeypatch.delenv(name, raising=False)
    target = "http://custom-llm.example.invalid:5000/chat/completions"
    unknown = connect_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    error = probe._transport_error(unknown, target, 5.0, "custom-llm.example.invalid")
    assert "Could not connect" in error.message and "vapi-bridge serve" not in error.hint
    assert "custom-llm.example.invalid" in error.hint and "was not found" in error.hint
    refused = connect_error(ConnectionRefusedError(111, "Connection refused"))
    error = probe._transport_error(refused, target, 5.0, "custom-llm.example.invalid")
    assert "Check the host and port" in error.hint and "vapi-bridge serve" not in error.hint
    local = probe.run(f"http://127.0.0.1:{closed_port()}", secret=None, timeout=5)
    assert local.error is not None and "vapi-bridge serve" in local.error.hint


# --json: one object on stdout, whatever happens ------------------------------------------------


def test_json_is_printed_for_http_errors_and_missing_bridges(scripted: ScriptedServer) -> None:
    scripted.answer = Answer(
        json.dumps({"error": {"message": "overloaded\x1b[2J"}}).encode(),
        status=503,
        content_type="application/json",
    )
    failing = run_cli("test", "--url", scripted.url, "--json")
    assert "HTTP 503: overloaded" in assert_clean_failure(failing)
    report = one_json(failing.stdout)
    assert report["ok"] is False and report["status"] == 503
    assert report["error"]["message"] == "The server answered HTTP 503: overloaded[2J"
    no_tunnel = run_cli("test", "--public", "--json")
    assert "No running bridge with a tunnel" in assert_clean_failure(no_tunnel, code=2)
    report = one_json(no_tunnel.stdout)
    assert report["ok"] is False and report["url"] is None
    assert report["error"]["hint"]


# Every malformed shape is a named violation ----------------------------------------------------


def call(index: Any = 0, **fields: Any) -> dict[str, Any]:
    return {"index": index, **fields}


@pytest.mark.parametrize(
    ("events", "violation"),
    [
        ([chunk({"tool_calls": [call(id="c", function="oops")]})], "`function` that is not"),
        ([chunk({"tool_calls": [call(id="c", function={"name": 5})]})], "`function.name` that"),
        ([chunk({"tool_calls": [call(id=7, function={"name": "f"})]})], "`id` that is not"),
        ([chunk({"tool_calls": [call(index="0", function={"name": "f"})]})], "without `index`"),
        ([chunk({"tool_calls": [call(index=True, function={"name": "f"})]})], "without `index`"),
        ([chunk({"tool_calls": ["oops"]})], "tool-call delta that is not"),
        ([chunk({"tool_calls": {"index": 0}})], "`delta.tool_calls` is not a list"),
        ([{**chunk({}), "choices": ["oops"]}], "a choice that is not a JSON object"),
        ([{**chunk({}), "choices": [{"delta": "hi"}]}], "without a `delta` object"),
        ([chunk({"content": ["Hi"]})], "`delta.content` is not a string"),
        ([chunk({"content": "Hi"}, finish=3)], "`finish_reason` is not a string"),
        ([chunk({"content": "Hi"}, created=True)], "`created` is not an integer"),
        ([chunk({"content": "Hi"}, object="chat.completion")], "`object` is not"),
        ([[1, 2]], "a chunk that is not a JSON object"),
        ([chunk({"content": "Hi", "function_call": {"name": "f"}})], "legacy `function_call`"),
        (['{"choices": []}'], "neither an SSE field nor a comment"),
        (["data: " + "[" * 100_000], "not JSON"),
        (["data:"], "not JSON"),
        ([chunk({"content": "Hi"}, "stop"), "data: [DONE]", chunk({})], "data after [DONE]"),
        ([chunk({"content": " \n"}, "stop")], "no content and no tool call"),
    ],
)
def test_a_malformed_stream_is_named_not_raised(
    scripted: ScriptedServer, events: list[Any], violation: str
) -> None:
    if "no content" not in violation:
        events = [*events, chunk({"content": "Hi"}, "stop")]
    result = judge(scripted, sse_body(*events))
    assert not result.ok
    assert any(violation in v for v in result.violations), result.violations


@pytest.mark.parametrize(
    ("body", "violation"),
    [
        (b"<html>hi</html>", "the body is not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({"choices": []}).encode(), "`choices` is not a non-empty list"),
        (json.dumps({"choices": ["x"]}).encode(), "`choices[0]` is not a JSON object"),
        (json.dumps(completion("Hi")).encode(), "`choices[0].message` is not a JSON object"),
        (json.dumps(completion({"content": 5})).encode(), "`message.content` is not a string"),
        (
            json.dumps(completion({"tool_calls": [{"id": "c", "function": "oops"}]})).encode(),
            "`function` that is not an object",
        ),
        (
            json.dumps(completion({"tool_calls": [{"function": {"name": 5}}]})).encode(),
            "`function.name` that is not a string",
        ),
        (json.dumps(completion({"tool_calls": "f"})).encode(), "`message.tool_calls` is not"),
        (json.dumps(completion({"tool_calls": [3]})).encode(), "tool call that is not a JSON"),
        (json.dumps(completion({"content": "Hi"}, finish=None)).encode(), "no finish_reason"),
    ],
)
def test_a_malformed_whole_reply_is_named_not_raised(
    scripted: ScriptedServer, body: bytes, violation: str
) -> None:
    result = judge(scripted, body, stream=False, content_type="application/json")
    assert not result.ok
    assert any(violation in v for v in result.violations), result.violations


def test_test_reports_every_protocol_violation() -> None:
    with broken_server() as url:
        result = run_cli("test", "--url", url, "--json")
    assert result.returncode == 1
    violations = "\n".join(one_json(result.stdout)["violations"])
    for expected in (
        "Content-Type",
        "`event:` line",
        "`choices` is not a list",
        "not JSON",
        "without `index`",
        "in-band error",
        "[DONE]",
        "`created` is not an integer",
        "finish_reason",
    ):
        assert expected in violations
    with broken_server() as url:
        human = run_cli("test", "--url", url)
    assert human.returncode == 1 and "Protocol violation" in human.stderr
    assert "Traceback" not in human.stderr


def test_a_malformed_tool_call_is_a_violation_on_the_command_line(
    scripted: ScriptedServer,
) -> None:
    scripted.answer = Answer(
        sse_body(
            chunk({"tool_calls": [call(id="c", function="oops")]}),
            chunk({"tool_calls": [call(1, id="d", function={"name": 5})]}, "tool_calls"),
        )
    )
    result = run_cli("test", "--url", scripted.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Protocol violation: a tool-call `function` that is not an object" in result.stderr
    assert "`function.name` that is not a string" in result.stderr


def test_data_without_the_space_is_valid_sse(scripted: ScriptedServer) -> None:
    body = (
        b'data:{"object":"chat.completion.chunk","created":1,"choices":'
        b'[{"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\ndata:[DONE]\n\n'
    )
    result = judge(scripted, body)
    assert result.ok and result.text == "Hi" and result.violations == []


def test_server_text_cannot_break_the_terminal_or_the_summary(scripted: ScriptedServer) -> None:
    shown: list[str] = []
    scripted.answer = Answer(
        sse_body(
            chunk({"content": "Hi\x1b[2J\r there \ud800"}),
            chunk({"tool_calls": [call(id="c", function={"name": "f[/x]\x07", "arguments": ""})]}),
            ": vapi-bridge cut=[/red]\x1b]0;pwned\x07",
            chunk({"content": ""}, "[/bold]"),
        ),
        content_type="text/[/b]",
    )
    result = probe.run(scripted.url, secret=None, on_text=shown.append)
    assert "\x1b" in result.text, "the JSON result keeps what the server sent"
    assert "".join(shown) == "Hi[2J there \ufffd"
    out = io.StringIO()
    probe.report(result, as_json=False, console=Console(file=out, width=200))
    assert "the server cut the reply short ([/red]]0;pwned)" in out.getvalue()
    assert "[/bold]" in out.getvalue() and "\x1b" not in out.getvalue()


def test_an_emoji_split_across_chunks_shows_whole(scripted: ScriptedServer) -> None:
    shown: list[str] = []
    scripted.answer = Answer(
        sse_body(
            chunk({"content": "Hi \ud83d"}),
            chunk({"content": "\ude00 there"}),
            chunk({"content": ""}, "stop"),
        )
    )
    result = probe.run(scripted.url, secret=None, on_text=shown.append)
    assert "".join(shown) == "Hi \U0001f600 there"
    assert not result.violations


# Any JSON value in place of any part of a chunk: violations, never an exception ---------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["", "0", "index", "function", "[DONE]", "<think>"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)

STREAM_CHUNK = chunk(
    {
        "role": "assistant",
        "content": "Hi",
        "reasoning": "r",
        "tool_calls": [
            {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
        ],
    },
    "tool_calls",
    usage={"prompt_tokens": 1},
)
WHOLE_REPLY = completion(
    {
        "role": "assistant",
        "content": "Hi",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}],
    }
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the root included."""
    found = [prefix]
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, inner in items:
            found.extend(paths(inner, (*prefix, key)))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(document)
    parent = copied
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copied


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(path=st.sampled_from(paths(STREAM_CHUNK)), value=json_values)
def test_any_value_anywhere_in_a_chunk_is_judged(
    fuzz_server: ScriptedServer, path: tuple[Any, ...], value: Any
) -> None:
    body = sse_body(chunk({"content": "Hey"}), replaced(STREAM_CHUNK, path, value))
    result = judge(fuzz_server, body)
    assert all(isinstance(v, str) for v in result.violations)
    json.dumps(result.as_json())
    probe.report(result, as_json=False, console=Console(file=io.StringIO()))


@FUZZ
@given(path=st.sampled_from(paths(WHOLE_REPLY)), value=json_values)
def test_any_value_anywhere_in_a_whole_reply_is_judged(
    fuzz_server: ScriptedServer, path: tuple[Any, ...], value: Any
) -> None:
    body = json.dumps(replaced(WHOLE_REPLY, path, value)).encode()
    result = judge(fuzz_server, body, stream=False, content_type="application/json")
    assert all(isinstance(v, str) for v in result.violations)
    json.dumps(result.as_json())


# A reply the server cut short ------------------------------------------------------------------


def test_a_cut_reply_fails(scripted: ScriptedServer) -> None:
    scripted.answer = Answer(
        sse_body(
            chunk({"role": "assistant", "content": "Let me check"}),
            ": keep-alive",
            ": vapi-bridge cut=upstream_error",
            chunk({"content": ""}, "stop"),
        )
    )
    result = probe.run(scripted.url, secret=None)
    assert result.cut == "upstream_error" and result.violations == [] and not result.ok
    human = run_cli("test", "--url", scripted.url)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert "the server cut the reply short (upstream_error)" in human.stderr
    assert "OK" not in human.stderr
    report = one_json(run_cli("test", "--url", scripted.url, "--json").stdout)
    assert report["cut"] == "upstream_error" and report["ok"] is False


def test_other_comments_do_not_cut(scripted: ScriptedServer) -> None:
    body = sse_body(": ping", chunk({"content": "Hi"}), ":vapi-bridge other=1", chunk({}, "stop"))
    result = judge(scripted, body)
    assert result.ok and result.cut is None


# Loopback never goes through the environment's proxy -------------------------------------------


def proxy_env(proxy: str) -> dict[str, str]:
    env = {name: proxy for name in PROXY_VARS[:3]}
    env |= {name.lower(): value for name, value in env.items()}
    return env | {"NO_PROXY": "", "no_proxy": ""}


def set_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name, value in proxy_env(proxy).items():
        monkeypatch.setenv(name, value)


def test_loopback_ignores_the_proxy_on_the_command_line(bridge: RunningBridge) -> None:
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(
        "test", "--url", bridge.url, "--secret", SECRET, "--json", env=proxy_env(dead_proxy)
    )
    assert result.returncode == 0, result.stderr
    assert one_json(result.stdout)["ok"] is True


def can_bind(host: str) -> bool:
    """127.0.0.2 and ::1 are not on every machine (macOS, IPv6 off)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "::1"])
def test_every_loopback_name_ignores_the_proxy(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    bind = "127.0.0.1" if host == "localhost" else host
    if not can_bind(bind):
        pytest.skip(f"no {bind} loopback here")
    set_proxy(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    with ScriptedServer(Answer(GOOD_STREAM), host=bind) as server:
        port = server.url.rsplit(":", 1)[1]
        url = f"http://{'[::1]' if host == '::1' else host}:{port}"
        result = probe.run(url, secret=None, timeout=5)
    assert result.error is None and result.ok, result.error


def test_a_public_url_still_uses_the_proxy(
    monkeypatch: pytest.MonkeyPatch, scripted: ScriptedServer
) -> None:
    set_proxy(monkeypatch, scripted.url)
    result = probe.run("http://custom-llm.example.invalid/v1", secret=None, timeout=5)
    assert result.ok, (result.error, result.violations)
    assert scripted.requests == ["http://custom-llm.example.invalid/v1/chat/completions"]


def test_a_dead_proxy_is_named_for_public_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    set_proxy(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    result = probe.run("http://custom-llm.example.invalid", secret=None, timeout=5)
    assert result.error is not None and "proxy" in result.error.hint


# Timings, first speech and what a caller would hear wrongly ------------------------------------


def summary(result: probe.ProbeResult) -> str:
    out = io.StringIO()
    probe.report(result, as_json=False, console=Console(file=out, width=200))
    return out.getvalue()


def test_no_stream_shows_no_speed(bridge: RunningBridge) -> None:
    result = probe.run(bridge.url, secret=bridge.secret, stream=False)
    assert result.ok and result.chars_per_s is None and result.ttfs_s == result.ttft_s
    assert "Speed" not in summary(result) and "First speech" in summary(result)
    assert result.as_json()["chars_per_s"] is None


def test_first_speech_waits_for_a_speakable_character(scripted: ScriptedServer) -> None:
    parts = ["", " ", "\n", "<think>", "Hello", " there,", " friend."]
    body = sse_body(*[chunk({"role": "assistant", "content": p}) for p in parts], chunk({}, "stop"))
    scripted.answer = Answer(body, gap=0.05)
    result = probe.run(scripted.url, secret=None)
    assert result.ok and result.ttft_s is not None and result.ttfs_s is not None
    assert result.ttfs_s - result.ttft_s >= 0.05, "the server paused four times before 'Hello'"
    assert result.chars_per_s is not None and result.chars_per_s > 0
    report = summary(result)
    assert "First token" in report and "First speech" in report and "Speed" in report
    assert result.as_json()["ttfs_s"] == result.ttfs_s


def test_the_bridge_reports_first_speech(bridge: RunningBridge) -> None:
    result = probe.run(bridge.url, secret=bridge.secret)
    assert result.ok and result.ttft_s is not None and result.ttfs_s is not None
    assert result.ttfs_s >= result.ttft_s and result.text == "Sure! Let me check Tuesday for you."


def test_a_tool_call_counts_as_first_speech(scripted: ScriptedServer) -> None:
    body = sse_body(
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [call(id="c", type="function", function={"name": "end_call"})]}),
        chunk({}, "tool_calls"),
    )
    result = judge(scripted, body)
    assert result.ok and result.ttfs_s is not None
    assert result.tool_calls == [{"id": "c", "name": "end_call", "arguments": ""}]


def test_what_a_caller_would_hear_wrongly_is_a_warning(scripted: ScriptedServer) -> None:
    text = "<think>Tuesday?</think>**Sure!** 😀\n# Slots\n- ten\n```\n| a | b |\n"
    result = judge(scripted, sse_body(chunk({"content": text}), chunk({}, "stop")))
    assert result.ok and result.violations == []
    warnings = "\n".join(result.warnings)
    assert "reasoning (`<think>`)" in warnings and "emoji" in warnings
    for marker in ("code fences", "bold `**`", "headings `#`", "bullets", "table pipes"):
        assert marker in warnings
    assert summary(result).count("Warning:") == 3


def test_plain_speech_has_no_warning(scripted: ScriptedServer) -> None:
    text = "Sure - ten or eleven, #1 choice. 3 * 4 = 12. A|B."
    result = judge(scripted, sse_body(chunk({"content": text}), chunk({}, "stop")))
    assert result.ok and result.warnings == []


def test_reasoning_in_its_own_field_is_a_note(scripted: ScriptedServer) -> None:
    body = sse_body(
        chunk({"role": "assistant", "content": "", "reasoning": "Think.", "channel": "analysis"}),
        chunk({"content": "", "reasoning_content": "More."}),
        chunk({"content": "Tuesday works."}, "stop"),
    )
    result = judge(scripted, body)
    assert result.ok and result.warnings == []
    assert len(result.notes) == 2 and all("a field Vapi ignores" in n for n in result.notes)


def test_warnings_show_on_the_command_line(scripted: ScriptedServer) -> None:
    scripted.answer = Answer(sse_body(chunk({"content": "**Sure!**"}), chunk({}, "stop")))
    result = run_cli("test", "--url", scripted.url)
    assert result.returncode == 0, result.stderr
    assert "Warning: the spoken content holds markdown (bold `**`)" in result.stderr
    assert "OK" in result.stderr and "First speech" in result.stderr


# An apology is a failure, streamed or not ----------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_the_bridge_apology_fails(bridge: RunningBridge, stream: bool) -> None:
    result = probe.run(bridge.url, secret=SECRET, model="fail-503", stream=stream)
    assert result.error is None and result.violations == []
    assert result.cut == probe.APOLOGY and not result.ok
    assert result.ttft_s is None and result.ttfs_s is not None, "no model token came"
    report = summary(result)
    assert "the caller would hear the apology" in report
    assert re.search(r"^First token +- *$", report, re.M), report


def test_a_reply_without_a_token_shows_no_first_token(scripted: ScriptedServer) -> None:
    result = judge(scripted, sse_body())
    assert result.ttft_s is None and not result.ok
    assert re.search(r"^First token +- *$", summary(result), re.M)


def test_the_bridge_apology_fails_on_the_command_line_without_streaming(
    bridge: RunningBridge,
) -> None:
    args = ("test", "--url", bridge.url, "--secret", SECRET, "--model", "fail-503", "--no-stream")
    human = run_cli(*args)
    assert human.returncode == 1 and "Traceback" not in human.stderr, human.stderr
    assert "FAILED" in human.stderr and "OK" not in human.stderr
    report = one_json(run_cli(*args, "--json").stdout)
    assert report["ok"] is False and report["cut"] == "apology"


# The sample request is a Vapi call -----------------------------------------------------------


def test_the_sample_request_is_a_call_of_its_own(
    start_bridge: BridgeFactory, logs: LogCapture, tmp_path: Path
) -> None:
    """As in Vapi's requests, `call` is an object with an id: logs, reply hooks and
    transcripts see a call, and each run is a call of its own."""
    bridge = start_bridge(transcript_dir=tmp_path / "t")
    assert probe.run(bridge.url, secret=SECRET).ok
    assert probe.run(bridge.url, secret=SECRET, stream=False).ok
    bridge.stop()
    ids = set(re.findall(r"call=(vapi-bridge-test-[0-9a-f]{32})\b", logs.text))
    assert len(ids) == 2, logs.text
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(f"{i}.jsonl" for i in ids)
