"""``serve --workers N`` (POSIX): gunicorn's master and N gthread workers in a child process.

One Python process is held near one core by the GIL; worker processes use them all. The
bridge's own process keeps the main thread (signals, tunnel, panel) and the listening socket,
which the child inherits as ``fd://``. The child runs in its own session, so a terminal's
Ctrl-C reaches only the bridge, which then asks gunicorn for a graceful stop.

Both sides live here. The child builds the app once in gunicorn's master (``preload_app``),
so user hooks are imported once and workers share its pages; the app starts its threads on
first use, so nothing is lost in the fork. The child reports back through a pipe, one JSON
object a line: a start-up error (shown as the bridge's own error), and at shutdown how many
streams each worker had to cut and how many after-reply jobs it lost.

Metrics: the child gets a fresh directory for prometheus_client's multiprocess mode in its
environment from its first instruction (the library picks its mode when first imported), the
master marks each exited worker dead there, and the master and the bridge each remove the
directory when they stop (the master also when the bridge was killed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from vapi_bridge import keystore
from vapi_bridge.errors import ConfigError
from vapi_bridge.server import listen, local_url
from vapi_bridge.settings import Settings, from_json, to_json

START_TIMEOUT = 30.0


class PreforkServer:
    """The bridge's side: start the child, check it serves, stop it gracefully."""

    def __init__(self, settings: Settings) -> None:
        if os.name != "posix":
            raise OSError("--workers needs a POSIX system (gunicorn); use --workers 1")
        self._settings = settings
        self._listener = listen(settings.host, settings.port)
        self._port = int(self._listener.getsockname()[1])
        self._settings_file = settings.home / f"workers-{os.getpid()}.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._reports: Any = None
        self._metrics_dir: Path | None = None
        self.lost = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="vapi-bridge-metrics-"))
        settings = replace(self._settings, metrics_dir=self._metrics_dir)
        keystore.write_private(self._settings_file, to_json(settings))
        read_end, write_end = os.pipe()
        fd = self._listener.fileno()
        try:
            args = [str(fd), str(write_end), str(self._settings_file)]
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "vapi_bridge.prefork", *args],
                pass_fds=(fd, write_end),
                start_new_session=True,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)},
            )
        finally:
            os.close(write_end)
            self._listener.close()
        self._reports = os.fdopen(read_end, "r", encoding="utf-8")
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        health = local_url(self._settings.host, self.port) + "/health"
        deadline = time.monotonic() + START_TIMEOUT
        # A local URL: never through the environment's proxy.
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    error = next((r for r in self._read_reports() if "error" in r), None)
                    self.stop()
                    if error is not None:
                        raise ConfigError(error["error"], hint=error.get("hint", ""))
                    raise OSError("the worker processes exited at start")
                try:
                    client.get(health).raise_for_status()
                    return
                except httpx.HTTPError:
                    time.sleep(0.05)
        self.stop(grace=0)
        raise OSError(f"the worker processes did not answer within {START_TIMEOUT:g} s")

    def stop(self, grace: float = 5.0) -> int:
        """Graceful stop; returns how many live streams the workers had to end early."""
        with contextlib.suppress(OSError):
            self._settings_file.unlink()
        try:
            return self._stop_child(grace)
        finally:
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _stop_child(self, grace: float) -> int:
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace + 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        reports = self._read_reports()
        self.lost = sum(int(r.get("lost", 0)) for r in reports)
        return sum(int(r.get("cut", 0)) for r in reports)

    def _read_reports(self) -> list[dict[str, Any]]:
        """Every report the child wrote; the pipe ends when the child and its workers exit."""
        if self._reports is None:
            return []
        with self._reports as pipe:
            lines = pipe.read().splitlines()
        self._reports = None
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                if isinstance(report, dict):
                    out.append(report)
        return out


# main() is long by gunicorn's hooks: small closures over the settings and the report pipe,
# kept beside the one place that registers them.
def main(argv: list[str]) -> None:
    """The child's side: ``python -m vapi_bridge.prefork LISTEN_FD REPORT_FD SETTINGS_FILE``."""
    from gunicorn.app.base import BaseApplication

    from vapi_bridge import reqlog
    from vapi_bridge.app import bridge_of, create_app
    from vapi_bridge.errors import BridgeError
    from vapi_bridge.metrics import mark_process_dead
    from vapi_bridge.relay import RelayLoop, offer
    from vapi_bridge.server import STUCK_WAIT, quick_handover, quiet_gc

    fd, report_fd, settings_file = int(argv[0]), int(argv[1]), Path(argv[2])
    settings = from_json(settings_file.read_text(encoding="utf-8"))
    settings_file.unlink()  # it holds the keys: gone once read, the workers inherit them
    grace = settings.shutdown_grace

    def report(**fields: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(report_fd, (json.dumps(fields) + "\n").encode())

    def on_worker_ready(worker: Any) -> None:
        # Each worker relays as the single process does, with a relay loop of its own (made
        # here, after the fork: a loop's selector must not be shared between processes).
        quiet_gc()
        quick_handover()
        app = worker.wsgi
        bridge = bridge_of(app)
        relay = worker.vapi_bridge_relay = RelayLoop()
        wsgi_app = app.wsgi_app

        def relayed(environ: dict[str, Any], start_response: Any) -> Any:
            # gunicorn chunks a streamed reply only for an HTTP/1.1 request.
            if environ.get("SERVER_PROTOCOL") == "HTTP/1.1":
                offer(environ, relay, environ["gunicorn.socket"])
            return wsgi_app(environ, start_response)

        app.wsgi_app = relayed
        previous = signal.getsignal(signal.SIGTERM)

        def end_live_turns() -> None:
            cut = bridge.end_live_turns()
            if cut:
                report(cut=cut)
            # As in one process: a reply whose client still reads nothing is cut a little
            # later, so the worker's requests end (and are logged) before gunicorn's kill.
            cut_stuck = threading.Timer(STUCK_WAIT, relay.close)
            cut_stuck.daemon = True
            cut_stuck.start()

        def on_term(signum: int, frame: Any) -> None:
            bridge.draining = True
            timer = threading.Timer(grace, end_live_turns)
            timer.daemon = True
            timer.start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

    def on_worker_exit(_arbiter: Any, worker: Any) -> None:
        relay = getattr(worker, "vapi_bridge_relay", None)
        try:
            lost = bridge_of(worker.wsgi).close(grace)
        finally:
            if relay is not None:
                relay.close()
        if lost:
            report(lost=lost)

    def on_child_exit(_arbiter: Any, worker: Any) -> None:
        if settings.metrics_dir is not None:
            mark_process_dead(worker.pid, settings.metrics_dir)

    def on_exit(_arbiter: Any) -> None:
        """The master's last act: the bridge removes the metrics directory too, but it may
        have been killed (then watch_parent brought us here)."""
        if settings.metrics_dir is not None:
            shutil.rmtree(settings.metrics_dir, ignore_errors=True)

    def watch_parent(_arbiter: Any) -> None:
        """Stop gracefully if the bridge process that started us is gone."""
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True).start()

    class Workers(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": [f"fd://{fd}"],
                "workers": settings.workers,
                "worker_class": "gthread",
                "threads": 128,
                "preload_app": True,
                "graceful_timeout": math.ceil(grace) + 3,
                # A connection per request, as werkzeug does in one process: gthread keeps a
                # kept-alive connection on the worker that accepted it, so a busy worker kept
                # its clients' next turns (at 100 streams the added TTFT p99 was 1.3-1.6 s
                # with keep-alive clients, about 0.1 s without; docs/performance.md).
                "keepalive": 0,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "proc_name": "vapi-bridge",
                "post_worker_init": on_worker_ready,
                "worker_exit": on_worker_exit,
                "child_exit": on_child_exit,
                "on_exit": on_exit,
                "when_ready": watch_parent,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            reqlog.setup(settings.log_format)
            try:
                return create_app(settings)
            except BridgeError as exc:
                report(error=exc.message, hint=exc.hint)
                os._exit(2)

    Workers().run()


if __name__ == "__main__":
    main(sys.argv[1:])
