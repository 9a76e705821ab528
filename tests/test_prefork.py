"""``serve --workers N``: gunicorn worker processes behind one port, stopped cleanly."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova, Script, text_chunks
from tests.helpers import (
    SECRET,
    assert_ended_cleanly_by_the_stop,
    sse_events,
    stop_during_streams,
    stop_under_a_stuck_client,
    text_of,
    vapi_request,
    wait_until,
)
from tests.process import Serve, agents_left, processes_with, run_cli, tunnel_env
from vapi_bridge import sse

pytestmark = pytest.mark.skipif(os.name != "posix", reason="--workers needs POSIX")


def env_for(fake: FakeSambaNova) -> dict[str, str]:
    return {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}


def test_workers_serve_and_stop_with_nothing_left(fake: FakeSambaNova, isolated_env: Path) -> None:
    with Serve(
        "--no-tunnel", "--port", "0", "--workers", "2", "--secret", SECRET, env=env_for(fake)
    ) as serve:
        url = serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        marker = f"workers-{serve.proc.pid}.json"
        assert wait_until(lambda: len(processes_with(marker)) == 3), "a master, two workers"
        assert not (isolated_env / marker).exists(), "the keys file is gone once read"
        for _ in range(4):
            result = run_cli("test", "--json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["text"] == "Sure! Let me check Tuesday for you."
        # Each turn on a connection of its own, as one process does: a connection kept alive
        # would keep its client's turns on one worker however busy it is.
        reply = httpx.post(
            url + "/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {SECRET}"},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.headers["Connection"] == "close"
        assert serve.stop("SIGTERM") == 0
    assert processes_with(marker) == []
    assert serve.stderr.count("POST /chat/completions 200") == 5
    assert "Traceback" not in serve.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_workers_end_live_streams_cleanly_on_stop(
    fake: FakeSambaNova, isolated_env: Path, sig: str
) -> None:
    with Serve(
        "--no-tunnel",
        "--port",
        "0",
        "--workers",
        "2",
        "--secret",
        SECRET,
        "--shutdown-grace",
        "0.5",
        env=env_for(fake),
    ) as serve:
        listeners = stop_during_streams(serve, [serve.stdout_line()] * 6, sig)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert "Ended 6 live stream(s) early" in serve.stderr, "the workers report what they cut"
    assert fake.wait_no_open_streams(5)
    assert processes_with(f"workers-{serve.proc.pid}.json") == []


def test_workers_ctrl_c_to_the_process_group_keeps_the_tunnel_for_the_grace_period(
    fake: FakeSambaNova, tmp_path: Path
) -> None:
    env, args, pidfile = tunnel_env(fake, tmp_path)
    with Serve(*args, "--workers", "2", env=env, own_group=True) as serve:
        public = serve.stdout_line()
        listeners = stop_during_streams(serve, [public] * 6, "SIGINT", group=True)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert agents_left(pidfile) == [], "the ngrok agent outlived the bridge"
    assert processes_with(f"workers-{serve.proc.pid}.json") == []
    assert "Traceback" not in serve.stderr


def test_workers_on_a_busy_port_is_a_clear_error(fake: FakeSambaNova) -> None:
    with Serve("--demo", "--no-tunnel", "--port", "0") as first:
        port = first.stdout_line().rsplit(":", 1)[1]
        result = run_cli(
            "serve", "--no-tunnel", "--port", port, "--workers", "2", env=env_for(fake)
        )
        assert result.returncode == 2 and "Cannot listen" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "No SambaNova API key"), (["--demo", "--hook", "no_such_module_xyz:f"], "Cannot import")],
)
def test_workers_report_bad_settings_like_one_process(
    args: list[str], message: str, isolated_env: Path
) -> None:
    """Settings the workers would fail on are checked where the error can be explained."""
    result = run_cli("serve", "--no-tunnel", "--port", "0", "--workers", "2", *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert processes_with(str(isolated_env)) == [], "no worker process is left behind"


def test_workers_import_a_hook_module_once(fake: FakeSambaNova, tmp_path: Path) -> None:
    """The app is built once in gunicorn's master and forked, not once per process."""
    imports = tmp_path / "imports.txt"
    (tmp_path / "counting_hook.py").write_text(
        f"with open({str(imports)!r}, 'a') as f:\n    f.write('imported\\n')\n\n"
        "def hook(request):\n    return request\n"
    )
    env = {**env_for(fake), "PYTHONPATH": str(tmp_path)}
    with Serve(
        "--no-tunnel",
        "--port",
        "0",
        "--workers",
        "2",
        "--secret",
        SECRET,
        "--hook",
        "counting_hook:hook",
        env=env,
    ) as serve:
        serve.stdout_line()
        result = run_cli("test", "--json")
        assert result.returncode == 0, result.stderr
        assert serve.stop("SIGTERM") == 0
    assert imports.read_text().splitlines() == ["imported"]
    assert "/health" not in serve.stderr, "health checks are not request-logged"


def test_workers_relay_long_replies_whole_over_http_1_1_and_1_0(fake: FakeSambaNova) -> None:
    """Each worker's relay loop writes HTTP/1.1 chunks after gunicorn's first frame; an
    HTTP/1.0 request (gunicorn does not chunk its reply) is relayed by its own thread."""
    parts = [f"word{i} " for i in range(400)]
    fake.push(Script(chunks=text_chunks(parts)), Script(chunks=text_chunks(parts)))
    with Serve(
        "--no-tunnel", "--port", "0", "--workers", "2", "--secret", SECRET, env=env_for(fake)
    ) as serve:
        url = serve.stdout_line()
        reply = httpx.post(
            url + "/chat/completions",
            json=vapi_request(),
            headers={"Authorization": f"Bearer {SECRET}"},
            timeout=10,
        )
        assert reply.headers["Transfer-Encoding"] == "chunked"
        events = sse_events(reply)
        assert events[-1] == "[DONE]" and text_of(events[:-1]) == "".join(parts)
        body = json.dumps(vapi_request()).encode()
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            sock.sendall(
                b"POST /chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            received = b""
            while block := sock.recv(65536):
                received += block
        head, _, raw = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        lines = raw.decode().split("\n")
        assert all(line.startswith("data: ") or not line for line in lines), "no chunk marks"
        *chunks, done = sse.events(lines)
        assert done.done
        assert text_of([json.loads(event.data) for event in chunks]) == "".join(parts)
        assert serve.stop("SIGTERM") == 0
    assert "Traceback" not in serve.stderr


def test_workers_cut_a_reply_its_client_stopped_reading_without_a_traceback(
    fake: FakeSambaNova,
) -> None:
    """Past the grace a worker's relay loop still holds a reply whose client reads nothing:
    the worker cuts it as a connection gone (gunicorn logs no traceback) and logs the turn."""
    args = ("--no-tunnel", "--port", "0", "--workers", "2", "--secret", SECRET)
    with Serve(*args, "--shutdown-grace", "0.2", env=env_for(fake)) as serve:
        stop_under_a_stuck_client(serve, fake)
