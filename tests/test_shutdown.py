"""SIGTERM with streams in flight: every stream ends cleanly, the process exits, no agent left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import (
    SECRET,
    assert_ended_cleanly_by_the_stop,
    stop_during_streams,
    stop_under_a_stuck_client,
)
from tests.process import Serve, agents_left, bridge_state, tunnel_env


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_stop_under_load_ends_every_stream_cleanly(
    fake: FakeSambaNova, tmp_path: Path, isolated_env: Path, sig: str
) -> None:
    env, args, pidfile = tunnel_env(fake, tmp_path)
    with Serve(*args, env=env) as serve:
        public = serve.stdout_line()
        local = bridge_state(isolated_env, serve)["local_url"]
        listeners = stop_during_streams(serve, [public] * 3 + [local] * 3, sig)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert agents_left(pidfile) == []
    assert fake.wait_no_open_streams(5), "an upstream stream outlived the bridge"
    assert fake.abandoned >= 6


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_ctrl_c_to_the_process_group_keeps_the_tunnel_for_the_grace_period(
    fake: FakeSambaNova, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C signals every process of the foreground job, the agent included
    unless it runs in its own session; the agent must outlive the grace period."""
    env, args, pidfile = tunnel_env(fake, tmp_path)
    with Serve(*args, env=env, own_group=True) as serve:
        public = serve.stdout_line()
        listeners = stop_during_streams(serve, [public] * 6, "SIGINT", group=True)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert agents_left(pidfile) == [], "the ngrok agent outlived the bridge"
    assert "Traceback" not in serve.stderr


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_a_reply_its_client_stopped_reading_is_cut_at_the_stop_and_still_logged(
    fake: FakeSambaNova, isolated_env: Path, version: str
) -> None:
    """Past the grace a reply whose client reads nothing is still being written, by the relay
    loop (HTTP/1.1) or by its own thread (HTTP/1.0, unchunked): the stop cuts its connection,
    and the request's log line is written before the process exits."""
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    args = ("--no-tunnel", "--port", "0", "--secret", SECRET, "--shutdown-grace", "0.2")
    with Serve(*args, env=env) as serve:
        stop_under_a_stuck_client(serve, fake, version)
