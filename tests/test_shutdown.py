"""SIGTERM with streams in flight: every stream ends cleanly, the process exits, no agent left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import (
    SECRET,
    assert_ended_cleanly_by_the_stop,
    stop_during_streams,
)
from tests.process import Serve, process_alive, write_fake_agent


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_under_load_ends_every_stream_cleanly(
    fake: FakeSambaNova, tmp_path: Path, isolated_env: Path, sig: str
) -> None:
    agent = write_fake_agent(tmp_path)
    pidfile = tmp_path / "pids"
    env = {
        "SAMBANOVA_API_KEY": "test-key",
        "SAMBANOVA_BASE_URL": fake.base_url,
        "NGROK_AUTHTOKEN": "2fakeTokenForTests_abcdefghijklmnop",
        "FAKE_NGROK_PIDFILE": str(pidfile),
    }
    with Serve(
        "--port",
        "0",
        "--secret",
        SECRET,
        "--ngrok-path",
        str(agent),
        "--shutdown-grace",
        "0.5",
        env=env,
    ) as serve:
        public = serve.stdout_line()
        local = json.loads((isolated_env / "state.json").read_text())["local_url"]
        listeners = stop_during_streams(serve, [public] * 3 + [local] * 3, sig)
    assert_ended_cleanly_by_the_stop(listeners)
    assert serve.stderr.count("outcome=shutdown") == 6
    assert not any(process_alive(int(pid)) for pid in pidfile.read_text().split())
    assert fake.wait_no_open_streams(5), "an upstream stream outlived the bridge"
    assert fake.abandoned >= 6
