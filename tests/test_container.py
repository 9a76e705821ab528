"""The container image, built from the Dockerfile and run with docker or podman.

Opt-in: building the image downloads the bridge's dependencies from PyPI, and tests use no
network beyond loopback, so this runs only with ``VAPI_BRIDGE_CONTAINER_TEST=1``, a
reachable engine (``docker info`` or ``podman info`` succeeds) and the base image already
present (tests never pull it). The container runs on the host's network (Linux), so the
bridge inside reaches the fake SambaNova on loopback like any other replica.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import SECRET, vapi_request
from tests.process import free_port
from vapi_bridge import sse

ROOT = Path(__file__).resolve().parent.parent
OPT_IN = "VAPI_BRIDGE_CONTAINER_TEST"
ENTRYPOINT = ["vapi-bridge", "serve", "--no-tunnel", "--host", "0.0.0.0"]
REPLY = "Sure! Let me check Tuesday for you."
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m; print(' '.join(d.metadata['Name'] for d in m.distributions()))"
)


def base_image() -> str:
    """The default of the Dockerfile's ``PYTHON_IMAGE`` build argument."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.partition("=")[2].strip()
    raise AssertionError("the Dockerfile should declare ARG PYTHON_IMAGE=<base image>")


def find_engine() -> tuple[str | None, str]:
    """The first of docker and podman that can build here, or why neither can."""
    base = base_image()
    reasons = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            reasons.append(f"{name} is not installed")
            continue
        info = subprocess.run([path, "info"], capture_output=True, text=True, timeout=30)
        if info.returncode != 0:
            reasons.append(f"`{name} info` failed (no daemon or no permission)")
            continue
        found = subprocess.run(
            [path, "image", "inspect", base], capture_output=True, text=True, timeout=30
        )
        if found.returncode != 0:
            reasons.append(f"{name} has no {base} image (tests do not pull: `{name} pull {base}`)")
            continue
        return path, ""
    return None, "; ".join(reasons)


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str]]:
    """(engine, tag) of an image built from this checkout, removed afterwards."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"set {OPT_IN}=1 to build the image (its build downloads from PyPI)")
    if sys.platform != "linux":
        pytest.skip("the container reaches the fake SambaNova through host networking (Linux)")
    engine, why = find_engine()
    if engine is None:
        pytest.skip(f"no container engine can build here: {why}")
    tag = f"vapi-bridge-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(
        [engine, "build", "--network", "host", "--tag", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    yield engine, tag
    subprocess.run([engine, "rmi", "--force", tag], capture_output=True, timeout=60)


def inspect(engine: str, tag: str) -> dict[str, Any]:
    out = subprocess.run(
        [engine, "image", "inspect", tag], capture_output=True, text=True, check=True
    )
    config: dict[str, Any] = json.loads(out.stdout)[0]["Config"]
    return config


def test_image_runs_as_non_root_with_no_key_and_no_build_tools(image: tuple[str, str]) -> None:
    engine, tag = image
    config = inspect(engine, tag)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ENTRYPOINT, "exec form, so SIGTERM reaches the bridge"
    assert "8080/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PORT"] == "8080"
    assert env["VAPI_BRIDGE_HOME"] == "/var/lib/vapi-bridge"
    assert not {"SAMBANOVA_API_KEY", "VAPI_BRIDGE_SECRET", "NGROK_AUTHTOKEN"} & env.keys()
    listed = subprocess.run(
        [engine, "run", "--rm", "--entrypoint", "python", tag, "-c", LIST_DISTRIBUTIONS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.lower().split())
    assert {"vapi-bridge", "flask", "sambanova"} <= names
    assert not {"hatchling", "pip", "setuptools"} & names, "build tools left in the image"


class Container:
    """A detached container and its stdout, read line by line."""

    def __init__(self, engine: str, args: list[str]) -> None:
        self.engine = engine
        started = subprocess.run(
            [engine, "run", "--detach", *args], capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stderr
        self.id = started.stdout.strip()
        self.lines: queue.Queue[str] = queue.Queue()
        self._follow = subprocess.Popen(
            [engine, "logs", "--follow", self.id],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._follow.stdout is not None
        for line in self._follow.stdout:
            self.lines.put(line.rstrip("\n"))

    def stdout_line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the container; logs:\n{self.logs()}") from None

    def logs(self) -> str:
        out = subprocess.run(
            [self.engine, "logs", self.id], capture_output=True, text=True, timeout=30
        )
        return out.stdout + out.stderr

    def remove(self) -> None:
        self._follow.kill()
        self._follow.wait(10)
        subprocess.run([self.engine, "rm", "--force", self.id], capture_output=True, timeout=60)


def stream(url: str, model: str, started: threading.Event, out: dict[str, Any]) -> None:
    contents: list[str] = []
    out["contents"] = contents
    with httpx.stream(
        "POST",
        url + "/chat/completions",
        json={**vapi_request(), "model": model},
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=30,
    ) as response:
        out["status"] = response.status_code
        for event in sse.events(response.iter_lines(), comments=True):
            if event.comment is not None:
                out["cut"] = event.comment
            elif event.done:
                out["done"] = True
            else:
                delta = json.loads(event.data)["choices"][0]["delta"]
                contents.append(delta.get("content") or "")
                started.set()


def test_container_serves_a_stream_and_drains_on_stop(
    image: tuple[str, str], fake: FakeSambaNova
) -> None:
    engine, tag = image
    port = free_port()
    container = Container(
        engine,
        [
            "--network",
            "host",
            "--env",
            "SAMBANOVA_API_KEY=test-key",
            "--env",
            f"SAMBANOVA_BASE_URL={fake.base_url}",
            "--env",
            f"VAPI_BRIDGE_SECRET={SECRET}",
            "--env",
            f"PORT={port}",
            tag,
            "--port",
            str(port),
            "--shutdown-grace",
            "10",
        ],
    )
    try:
        url = container.stdout_line()
        assert url == f"http://127.0.0.1:{port}", container.logs()
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
        check = inspect(engine, tag)["Healthcheck"]["Test"]
        assert check[0] == "CMD"
        probe = subprocess.run(
            [engine, "exec", container.id, *check[1:]], capture_output=True, timeout=30
        )
        assert probe.returncode == 0, "the image's HEALTHCHECK command fails"

        started = threading.Event()
        first: dict[str, Any] = {}
        live: dict[str, Any] = {}
        stream(url, "Meta-Llama-3.3-70B-Instruct", started, first)
        assert "".join(first["contents"]) == REPLY and first.get("done")

        started.clear()
        reader = threading.Thread(target=stream, args=(url, "paced-50-20", started, live))
        reader.start()
        assert started.wait(30), "the paced stream did not start"
        stopped = subprocess.run(
            [engine, "stop", "--time", "30", container.id], capture_output=True, timeout=60
        )
        reader.join(30)
        assert stopped.returncode == 0
        status = subprocess.run(
            [engine, "inspect", "--format", "{{.State.ExitCode}}", container.id],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.stdout.strip() == "0", container.logs()
        assert live.get("done") and "cut" not in live, live
        assert "".join(live["contents"]) == "tok " * 50
        assert "vapi-bridge stopped." in container.logs(), "SIGTERM reached the bridge"
    finally:
        container.remove()
