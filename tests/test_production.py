"""Serving in production: the PaaS ``PORT``, nothing interactive, readiness that drains."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.helpers import BridgeFactory, Listener, RunningBridge, vapi_request, wait_until
from tests.process import Serve, free_port, run_cli


def test_port_comes_from_the_environment_unless_given(isolated_env: object) -> None:
    port = free_port()
    with Serve("--demo", "--no-tunnel", env={"PORT": str(port)}) as serve:
        assert serve.stdout_line() == f"http://127.0.0.1:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        assert serve.stop() == 0
    with Serve("--demo", "--no-tunnel", "--port", "0", env={"PORT": str(port)}) as serve:
        url = serve.stdout_line()
        assert not url.endswith(f":{port}"), "--port wins over PORT"
        assert serve.stop() == 0


@pytest.mark.parametrize("value", ["eighty", "70000", "-1"])
def test_a_bad_port_variable_is_named(value: str) -> None:
    result = run_cli("serve", "--demo", "--no-tunnel", env={"PORT": value})
    assert result.returncode == 2
    assert f"PORT '{value}' must be a whole number from 0 to 65535" in result.stderr
    assert "environment variable PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--port", "abc", "must be a whole number from 0 to 65535"),
        ("--workers", "two", "must be a whole number from 1 to 64"),
        ("--upstream-timeout", "-1", "must be from 0.5 to 120"),
        ("--reasoning", "loud", "must be one of off, low, medium, high, model"),
        ("--log-format", "xml", "must be one of text, json"),
        ("--model-map", "foo", "is not NAME=MODEL"),
        ("--hook", "h2", "is not module:function"),
        ("--fallback-model", "", "has an empty model name"),
    ],
)
def test_a_bad_flag_value_is_named_as_its_variable_would_be(
    flag: str, value: str, says: str
) -> None:
    """The settings' own parser judges a flag, with the words and the hint it gives the
    same value from the environment (not click's or pydantic's)."""
    result = run_cli("serve", "--demo", "--no-tunnel", flag, value)
    assert result.returncode == 2
    assert f"{flag} '{value}' {says}" in result.stderr, result.stderr
    assert f"-> Fix {flag}" in result.stderr and "Traceback" not in result.stderr


def test_a_short_metrics_token_is_refused_for_what_it_guards() -> None:
    result = run_cli("serve", "--demo", "--no-tunnel", "--metrics-token", "short")
    assert result.returncode == 2 and "short" not in result.stderr, "a secret is not echoed"
    assert "the metrics token guards /metrics" in result.stderr
    assert "SambaNova quota" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ([], {"VAPI_ASSISTANT_ID": "0b6e0f2a-5c1e-4b8e-9c57-1d2f3a4b5c6d"}, "VAPI_ASSISTANT_ID"),
        (["--assistant", "not an id"], {"VAPI_API_KEY": "vapi-key"}, "is not a Vapi assistant ID"),
    ],
)
def test_a_bad_assistant_setting_is_a_configuration_error(
    isolated_env: object, args: list[str], env: dict[str, str], says: str
) -> None:
    result = run_cli("serve", "--demo", "--no-tunnel", "--port", "0", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_serve_needs_nothing_interactive(isolated_env: object) -> None:
    """No terminal, no stdin: a container starts the bridge and it serves."""
    with Serve("--demo", "--no-tunnel", "--port", "0", "--host", "0.0.0.0") as serve:
        url = serve.stdout_line()
        assert httpx.get(url + "/ready").json() == {"status": "ready"}
        assert serve.stop("SIGTERM") == 0


def test_ready_turns_503_as_a_stop_begins_while_health_stays_up(
    start_bridge: BridgeFactory,
) -> None:
    """A stop first marks the bridge draining (serve does it before anything else): from then
    /ready says 503, so a load balancer sends no new calls, while /health, live streams and
    calls already routed here are still served until the listener closes."""
    running = start_bridge()
    listener = Listener(running.url)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    assert listener.started.wait(10) and listener.lines, listener.error
    assert httpx.get(running.url + "/ready").json() == {"status": "ready"}
    running.bridge.draining = True
    unready = httpx.get(running.url + "/ready")
    assert unready.status_code == 503 and unready.json() == {"status": "draining"}
    assert httpx.get(running.url + "/health").status_code == 200, "alive while draining"
    assert running.post({**vapi_request(), "stream": False}).status_code == 200
    stopper = threading.Thread(target=running.server.stop, kwargs={"grace": 1}, daemon=True)
    stopper.start()
    assert wait_until(lambda: _refused(running.url)), "the listener closes on stop"
    thread.join(15)
    stopper.join(10)
    assert listener.error is None and listener.lines[-1] == "data: [DONE]", "ended cleanly"


def test_ready_is_503_once_live_turns_are_being_ended(bridge: RunningBridge) -> None:
    bridge.bridge.live.end_all()
    assert httpx.get(bridge.url + "/ready").status_code == 503
    assert httpx.get(bridge.url + "/health").status_code == 200


def _refused(url: str) -> bool:
    """True once connecting fails; a connection that raced the close is asked again."""
    try:
        httpx.get(url + "/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False
