"""``GET /metrics``: Prometheus' text format, parsed by prometheus_client's own parser, counting
real traffic in one process and across ``--workers``; guarded; nothing private in it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.sambanova import FakeSambaNova
from tests.helpers import (
    PRIVATE_VALUES,
    SECRET,
    BridgeFactory,
    LogCapture,
    RunningBridge,
    vapi_request,
    wait_until,
)
from tests.process import Serve, processes_with
from vapi_bridge.metrics import Metrics
from vapi_bridge.reqlog import RequestRecord

METRICS_TOKEN = "prom_scrape_token_0123456789"
CALL_ID = vapi_request()["call"]["id"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, key: str | None = SECRET) -> Samples:
    response = httpx.get(
        url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_total(samples: Samples, route: str, status: str) -> float:
    return value(samples, "vapi_bridge_requests_total", route=route, status=status)


def test_metrics_need_the_bridge_key_or_the_metrics_token(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(metrics_token=METRICS_TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {SECRET}x"}):
        refused = httpx.get(bridge.url + "/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "vapi_bridge_" not in refused.text
    assert scrape(bridge.url, SECRET)
    assert scrape(bridge.url, METRICS_TOKEN)
    assert (
        httpx.post(
            bridge.url + "/chat/completions",
            json=vapi_request(),
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        ).status_code
        == 401
    ), "the metrics token opens /metrics only"


def test_without_any_key_metrics_are_open(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(secret=None, no_auth=True)
    assert scrape(bridge.url, key=None)


def test_counters_move_as_traffic_flows(
    bridge: RunningBridge, fake: FakeSambaNova, logs: LogCapture
) -> None:
    before = scrape(bridge.url)
    assert bridge.post(vapi_request()).status_code == 200
    assert bridge.post({**vapi_request(), "stream": False}).status_code == 200
    assert bridge.post(vapi_request(), path="/v1/chat/completions").status_code == 200
    assert bridge.post(vapi_request(), headers={"Authorization": "Bearer no"}).status_code == 401
    assert httpx.get(bridge.url + "/+14155550123/" + CALL_ID).status_code == 404
    assert httpx.get(bridge.url + "/health").status_code == 200
    failed = bridge.post({**vapi_request(), "model": "fail-404"})
    assert failed.status_code == 404
    broken = bridge.post({**vapi_request(), "model": "drop"})
    assert broken.status_code == 200
    logs.wait_for(lambda line: "outcome=upstream_error" in line)
    after = scrape(bridge.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("vapi_bridge_requests_total", route="/chat/completions", status="200") == 3
    assert moved("vapi_bridge_requests_total", route="/v1/chat/completions", status="200") == 1
    assert moved("vapi_bridge_requests_total", route="/chat/completions", status="401") == 1
    assert moved("vapi_bridge_requests_total", route="/chat/completions", status="404") == 1
    assert moved("vapi_bridge_requests_total", route="other", status="404") == 1
    assert moved("vapi_bridge_requests_total", route="/health", status="200") == 1
    assert moved("vapi_bridge_requests_total", route="/metrics", status="200") == 1
    # Four replies reached the model: three whole, one cut after its first chunks.
    assert moved("vapi_bridge_time_to_first_token_seconds_count") == 4
    assert moved("vapi_bridge_time_to_first_speech_seconds_count") == 4
    assert moved("vapi_bridge_time_to_first_token_seconds_bucket", le="10.0") == 4
    assert moved("vapi_bridge_time_to_first_token_seconds_sum") > 0
    assert moved("vapi_bridge_upstream_failures_total", kind="model_not_found") == 1
    assert moved("vapi_bridge_upstream_failures_total", kind="stream_broken") == 1
    # The whole reply reports the fixture's usage (43/9); the streams report theirs (21/41).
    assert moved("vapi_bridge_upstream_tokens_total", kind="prompt") >= 43 + 21
    assert moved("vapi_bridge_upstream_tokens_total", kind="completion") >= 9 + 41
    # A stream stops counting as the server closes it, just after its client has read the end.
    assert wait_until(lambda: value(scrape(bridge.url), "vapi_bridge_active_streams") == 0)


def test_voice_sized_buckets(bridge: RunningBridge) -> None:
    samples = scrape(bridge.url)
    bounds = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples
        if name == "vapi_bridge_time_to_first_speech_seconds_bucket"
    )
    assert bounds[0] == 0.05 and 0.5 in bounds and bounds[-2] == 10.0 and bounds[-1] == float("inf")


def test_live_streams_and_barge_ins(bridge: RunningBridge, logs: LogCapture) -> None:
    with httpx.stream(
        "POST",
        bridge.url + "/chat/completions",
        headers=bridge.headers(),
        json={**vapi_request(), "model": "long"},
        timeout=10,
    ) as response:
        # Hold the iterator: dropping it closes httpcore's stream, and so the connection.
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        live = scrape(bridge.url)
        assert value(live, "vapi_bridge_active_streams") == 1
    logs.wait_for(lambda line: "outcome=client_closed" in line)
    assert wait_until(lambda: value(scrape(bridge.url), "vapi_bridge_active_streams") == 0)
    assert value(scrape(bridge.url), "vapi_bridge_client_disconnects_total") == 1


def test_no_label_or_value_carries_a_secret_a_phone_number_or_a_call_id(
    bridge: RunningBridge,
) -> None:
    bridge.post(vapi_request())
    bridge.post(vapi_request(), path="/chat/completions/" + CALL_ID)
    bridge.post(vapi_request(), headers={"Authorization": "Bearer +14155550123"})
    text = httpx.get(bridge.url + "/metrics", headers=bridge.headers()).text
    for private in (*PRIVATE_VALUES, CALL_ID, SECRET, "14155550123"):
        assert private not in text, private
    routes = {dict(labels).get("route") for (_, labels) in parse(text)} - {None}
    assert routes <= {"/chat/completions", "/metrics", "other"}


def test_a_turn_answered_by_a_fallback_model_is_counted(start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(fallback_models=("Meta-Llama-3.3-70B-Instruct",))
    assert bridge.post({**vapi_request(), "model": "fail-503"}).status_code == 200
    assert bridge.post(vapi_request()).status_code == 200
    assert value(scrape(bridge.url), "vapi_bridge_fallbacks_total") == 1


def test_fallbacks_from_the_record_are_counted() -> None:
    """A turn answered by another model than the one asked counts once, however it got there
    (A failed twice, B was slow, C answered; or A was cooling down and B answered at once)."""
    metrics = Metrics()
    record = RequestRecord(method="POST", path="/chat/completions", status=200)
    record.requested_model = "A"
    record.attempts(["A(429)", "A(503)", "B(slow)", "C"], hedged=False)
    record.upstream_failures = ["rate_limit_exceeded", "upstream_server_error"]
    record.observer = lambda r: metrics.observe(r, "/chat/completions")
    record.emit("text")
    record.emit("text")  # a record is counted once, whatever calls emit
    skipped = RequestRecord(method="POST", path="/chat/completions", status=200)
    skipped.requested_model = "A"
    skipped.attempts(["B"], hedged=False)
    metrics.observe(skipped, "/chat/completions")
    same = RequestRecord(method="POST", path="/chat/completions", status=200)
    same.requested_model = "A"
    same.attempts(["A(503)", "A"], hedged=False)
    metrics.observe(same, "/chat/completions")
    samples = parse(metrics.render(None)[0].decode())
    assert value(samples, "vapi_bridge_fallbacks_total") == 2
    assert value(samples, "vapi_bridge_upstream_failures_total", kind="rate_limit_exceeded") == 1
    assert value(samples, "vapi_bridge_upstream_failures_total", kind="upstream_server_error") == 1
    odd = RequestRecord(method="POST", path="/x", upstream_failures=["Not A Code: +1415"])
    metrics.observe(odd, "other")
    assert "1415" not in metrics.render(None)[0].decode()


def test_openmetrics_when_prometheus_asks_for_it(bridge: RunningBridge) -> None:
    response = httpx.get(
        bridge.url + "/metrics",
        headers={**bridge.headers(), "Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


# --- --workers: prometheus_client's multiprocess mode -------------------------------------------


def metrics_dir_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (entry,) = [e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(entry.split(b"=", 1)[1].decode())


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])


def chats_served_by(pid: int, shared: Path) -> float:
    """The chat requests one worker counted, read from its own file in the shared directory."""
    counters = shared / f"counter_{pid}.db"
    if not counters.exists():
        return 0.0
    with tempfile.TemporaryDirectory() as alone:
        shutil.copy(counters, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=alone)  # type: ignore[no-untyped-call]
        labels = {"route": "/chat/completions", "status": "200"}
        return registry.get_sample_value("vapi_bridge_requests_total", labels) or 0.0


def send_batch(url: str, count: int) -> list[int]:
    """``count`` requests at once, each on its own connection, so both workers get some."""
    statuses: list[int] = []

    def one() -> None:
        response = httpx.post(
            url + "/chat/completions",
            json={**vapi_request(), "stream": False},
            headers={"Authorization": f"Bearer {SECRET}", "Connection": "close"},
            timeout=10,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return statuses


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_workers_add_up_their_metrics_and_clean_up(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    args = ("--no-tunnel", "--port", "0", "--workers", "2", "--secret", SECRET)
    with Serve(*args, "--shutdown-grace", "1", env=env) as serve:
        url = serve.stdout_line()
        serve.wait_stderr(lambda line: "Try it" in line)
        marker = f"workers-{serve.proc.pid}.json"
        assert wait_until(lambda: len(processes_with(marker)) == 3), "a master, two workers"
        # By parent, not by number: pids wrap around (at 32768 on many Linux machines).
        (master,) = [pid for pid in processes_with(marker) if parent_of(pid) == serve.proc.pid]
        workers = [pid for pid in processes_with(marker) if pid != master]
        shared = metrics_dir_of(master)
        assert shared.is_dir()

        def served_by_both() -> bool:
            return all(chats_served_by(pid, shared) > 0 for pid in workers)

        sent = 0
        for _ in range(10):  # bounded: the kernel spreads new connections over both workers
            statuses = send_batch(url, 6)
            assert statuses == [200] * 6
            sent += 6
            if served_by_both():
                break
        assert served_by_both(), "the requests did not reach both workers"
        for _ in range(6):  # whichever worker answers, the sum is the same
            samples = scrape(url)
            assert requests_total(samples, "/chat/completions", "200") == sent
            assert value(samples, "vapi_bridge_time_to_first_token_seconds_count") == sent

        # A worker killed with a stream live: the master marks it dead, its stream stops counting.
        done = threading.Event()

        def listen() -> None:
            try:
                with httpx.stream(
                    "POST",
                    url + "/chat/completions",
                    json={**vapi_request(), "model": "long"},
                    headers={"Authorization": f"Bearer {SECRET}"},
                    timeout=20,
                ) as response:
                    for line in response.iter_lines():
                        if line:
                            done.set()
            except httpx.HTTPError:
                pass
            finally:
                done.set()

        threading.Thread(target=listen, daemon=True).start()
        assert done.wait(10)
        assert value(scrape(url), "vapi_bridge_active_streams") == 1
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: len(set(processes_with(marker)) - {master, *workers}) == 2)
        assert wait_until(lambda: value(scrape(url), "vapi_bridge_active_streams") == 0)
        assert requests_total(scrape(url), "/chat/completions", "200") == sent
        assert serve.stop("SIGTERM") == 0
    assert not shared.exists(), "the metrics directory is removed on stop"
    assert "Traceback" not in serve.stderr


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_workers_remove_their_metrics_even_when_the_bridge_is_killed(fake: FakeSambaNova) -> None:
    env = {"SAMBANOVA_API_KEY": "test-key", "SAMBANOVA_BASE_URL": fake.base_url}
    args = ("--no-tunnel", "--port", "0", "--workers", "2", "--secret", SECRET)
    with Serve(*args, "--shutdown-grace", "0", env=env) as serve:
        url = serve.stdout_line()
        marker = f"workers-{serve.proc.pid}.json"
        assert wait_until(lambda: len(processes_with(marker)) == 3), "a master, two workers"
        shared = metrics_dir_of(min(processes_with(marker)))
        assert scrape(url)
        serve.proc.kill()
        serve.proc.wait(10)
    assert wait_until(lambda: processes_with(marker) == [], timeout=20), "the workers outlived it"
    assert not shared.exists(), "the workers' master removes the metrics directory"


def test_metrics_import_lazily() -> None:
    """``vapi-bridge --help`` and the CLI module never load prometheus_client."""
    import subprocess
    import sys

    code = "import sys, vapi_bridge.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
