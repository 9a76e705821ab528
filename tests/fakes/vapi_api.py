"""A fake Vapi REST API on loopback: list, get and update assistants, with Bearer auth.

It enforces what the real API checks and the bridge could get wrong: the private key, a
custom-llm model's required ``provider``/``url``/``model``, no ``Authorization`` in
``model.headers``, no field a custom-llm model does not have, credentials with a provider
(Vapi's 400 body: ``{"message": [...], "error": "Bad Request", "statusCode": 400}``). It
records every request and answers 401, 404, 400, 500 or a dropped connection on demand.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GOOD_KEY = "0f1e2d3c-4b5a-4987-8765-43210fedcba9"
ORG_ID = "3b7e9a51-2c44-4d0a-8e6f-0c1d2e3f4a5b"
CUSTOM_LLM_FIELDS = frozenset(
    {
        "provider",
        "url",
        "model",
        "messages",
        "tools",
        "toolIds",
        "toolRefs",
        "knowledgeBase",
        "metadataSendMode",
        "headers",
        "wordLevelConfidenceEnabled",
        "timeoutSeconds",
        "temperature",
        "maxTokens",
        "emotionRecognitionEnabled",
        "numFastTurns",
    }
)
MESSAGES = {
    401: "Invalid Key. Hot tip, you may be using the private key instead of the public key, "
    "or vice versa.",
    404: "Couldn't Find Assistant.",
    500: "Internal server error",
}
ERRORS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 500: "Internal Server Error"}


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: Any


@dataclass
class Failure:
    """The next matching request gets ``status`` (``None``: the connection is dropped)."""

    status: int | None
    message: str | list[str] | None = None
    method: str | None = None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Dropped connections are part of the tests."""


class FakeVapi:
    """The server; a context manager. ``assistants`` maps id -> the assistant as stored."""

    def __init__(self, api_key: str = GOOD_KEY) -> None:
        self.api_key = api_key
        self.assistants: dict[str, dict[str, Any]] = {}
        self.requests: list[Received] = []
        self.failures: list[Failure] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        # A short poll so that stopping (once per test) is quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeVapi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, **assistant: Any) -> dict[str, Any]:
        """Create an assistant as Vapi stores it; returns a copy."""
        number = next(self._ids)
        assistant.setdefault("id", f"a{number:07d}-0000-4000-8000-000000000000")
        assistant.setdefault("orgId", ORG_ID)
        assistant.setdefault("createdAt", f"2026-11-{number:02d}T10:00:00.000Z")
        assistant["updatedAt"] = assistant["createdAt"]
        with self._lock:
            self.assistants[assistant["id"]] = copy.deepcopy(assistant)
        return copy.deepcopy(assistant)

    def get(self, assistant_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.assistants[assistant_id])

    def edit(self, assistant_id: str, **fields: Any) -> None:
        """Change an assistant as a user would in the dashboard."""
        with self._lock:
            self.assistants[assistant_id].update(copy.deepcopy(fields))

    def fail_next(
        self, status: int | None, message: str | list[str] | None = None, method: str | None = None
    ) -> None:
        self.failures.append(Failure(status, message, method))

    def patches(self) -> list[Received]:
        return [r for r in self.requests if r.method == "PATCH"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                split = urlsplit(self.path)
                received = Received(
                    method,
                    split.path,
                    parse_qs(split.query),
                    self.headers.get("Authorization"),
                    body,
                )
                with fake._lock:
                    fake.requests.append(received)
                    failure = next((f for f in fake.failures if f.method in (None, method)), None)
                    if failure is not None:
                        fake.failures.remove(failure)
                status = failure.status if failure is not None else None
                if failure is not None and status is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                if failure is not None and status is not None:
                    message = failure.message or MESSAGES.get(status, "Simulated failure")
                    self._error(status, message)
                    return
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._error(401, MESSAGES[401])
                    return
                status, answer = fake._route(method, split.path, received)
                self._send(status, answer)

            def _error(self, status: int, message: str | list[str]) -> None:
                error = ERRORS.get(status, "Error")
                self._send(status, {"message": message, "error": error, "statusCode": status})

            def _send(self, status: int, answer: Any) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, method: str, path: str, received: Received) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts == ["assistant"] and method == "GET":
            return self._list(received.query)
        if len(parts) == 2 and parts[0] == "assistant" and method in ("GET", "PATCH"):
            with self._lock:
                assistant = self.assistants.get(parts[1])
                if assistant is None:
                    return _error(404, MESSAGES[404])
                if method == "GET":
                    return 200, copy.deepcopy(assistant)
                problems = _patch_problems(received.body)
                if problems:
                    return _error(400, problems)
                assistant.update(copy.deepcopy(received.body))
                assistant["updatedAt"] = "2026-12-01T10:00:00.000Z"
                return 200, copy.deepcopy(assistant)
        return _error(404, f"Cannot {method} {path}")

    def _list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        limit_text = (query.get("limit") or ["100"])[0]
        try:
            limit = float(limit_text)
        except ValueError:
            return _error(400, ["limit must be a number conforming to the specified constraints"])
        if not 0 <= limit <= 1000:
            return _error(400, ["limit must not be greater than 1000"])
        with self._lock:
            ordered = sorted(self.assistants.values(), key=lambda a: a["createdAt"], reverse=True)
            return 200, copy.deepcopy(ordered[: int(limit)])


def _error(status: int, message: str | list[str]) -> tuple[int, Any]:
    return status, {"message": message, "error": ERRORS.get(status, "Error"), "statusCode": status}


def _patch_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = list(_model_problems(body.get("model"))) if "model" in body else []
    if "credentials" in body:
        problems.extend(_credential_problems(body["credentials"]))
    return problems


def _model_problems(model: Any) -> Iterator[str]:
    if not isinstance(model, dict):
        yield "model must be an object"
        return
    provider = model.get("provider")
    if not isinstance(provider, str):
        yield "model.provider must be a string"
    if not isinstance(model.get("model"), str) or not model["model"]:
        yield "model.model must be a string"
    if provider != "custom-llm":
        return
    url = model.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        yield "model.url must be a URL address"
    for name in sorted(set(model) - CUSTOM_LLM_FIELDS):
        yield f"model.property {name} should not exist"
    headers = model.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        yield "model.headers must be an object of strings"
    elif any(name.lower() == "authorization" for name in headers):
        yield "model.headers cannot set Authorization. Use a custom-llm credential instead."


def _credential_problems(credentials: Any) -> Iterator[str]:
    if not isinstance(credentials, list):
        yield "credentials must be an array"
        return
    for i, credential in enumerate(credentials):
        if not isinstance(credential, dict) or not isinstance(credential.get("provider"), str):
            yield f"credentials.{i}.provider must be a string"
        elif credential["provider"] == "custom-llm" and not isinstance(
            credential.get("apiKey"), str
        ):
            yield f"credentials.{i}.apiKey must be a string"
        elif "authenticationPlan" in credential:
            plan = credential["authenticationPlan"]
            if not isinstance(plan, dict) or plan.get("type") != "oauth2":
                yield f"credentials.{i}.authenticationPlan.type must be one of: oauth2"
            elif not all(isinstance(plan.get(k), str) for k in ("url", "clientId", "clientSecret")):
                yield f"credentials.{i}.authenticationPlan needs url, clientId and clientSecret"
