"""The child side of ``serve --workers N``: gunicorn over the bridge's listening socket.

Run as ``python -m vapi_bridge.prefork FD SETTINGS_FILE`` by :class:`server.PreforkServer`.
Each worker builds its own app (and SambaNova client) after the fork. On SIGTERM a worker
stops accepting, lets live replies run for the shutdown grace period, then ends the rest
cleanly (final chunk and ``[DONE]``) so gunicorn never has to cut them.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vapi_bridge import runner
from vapi_bridge.settings import from_json


def main(argv: list[str]) -> None:
    from gunicorn.app.base import BaseApplication

    fd, settings_file = int(argv[0]), Path(argv[1])
    settings = from_json(settings_file.read_text(encoding="utf-8"))
    settings_file.unlink()  # it holds the keys: gone once read, the workers inherit them
    grace = settings.shutdown_grace

    def on_worker_ready(worker: Any) -> None:
        stopping: threading.Event = worker.wsgi.extensions["vapi_bridge.stopping"]
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            timer = threading.Timer(grace, stopping.set)
            timer.daemon = True
            timer.start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

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
                "graceful_timeout": math.ceil(grace) + 3,
                "keepalive": 5,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "proc_name": "vapi-bridge",
                "post_worker_init": on_worker_ready,
                "when_ready": watch_parent,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            runner.setup_logging(settings.log_format)
            return runner.build_app(settings).app

    Workers().run()


if __name__ == "__main__":
    main(sys.argv[1:])
