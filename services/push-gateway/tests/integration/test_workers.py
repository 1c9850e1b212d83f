"""GATEWAY_WORKERS=2 as real processes: both workers serve streams on the one port
(SO_REUSEPORT), each under its own instance id for presence and metrics."""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint
from slotstream_testkit.net import free_port, free_port_block

from .conftest import FakeBookingApi, start_gateway_process, stop_gateway_process, wait_ready

pytestmark = pytest.mark.integration


def _metric(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


@dataclass(frozen=True)
class Workers:
    port: int
    metrics_base: int
    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self) -> None:
        for n in (0, 1):
            wait_ready(self.process, f"http://127.0.0.1:{self.metrics_base + n}/readyz", self.log)


@pytest.fixture
def workers(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, tmp_path: Path
) -> Iterator[Workers]:
    port = free_port()
    metrics_base = free_port_block(3)
    log = tmp_path / "gateway.log"
    process = start_gateway_process(
        kafka,
        topics,
        booking_api,
        port,
        log,
        GATEWAY_WORKERS="2",
        GATEWAY_WORKER_METRICS_PORT=str(metrics_base),
        GATEWAY_INSTANCE_ID="gw-multi",
        GATEWAY_PRESENCE_INTERVAL_SECONDS="0.3",
    )
    started = Workers(port, metrics_base, process, log)
    try:
        started.wait_ready()
        yield started
    finally:
        stop_gateway_process(process)


def test_two_workers_share_the_port_each_with_its_own_instance(workers: Workers) -> None:
    port, metrics_base, process = workers.port, workers.metrics_base, workers.process
    streams: list[socket.socket] = []
    try:
        for _ in range(24):  # the kernel spreads connections by their 4-tuple hash
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(
                b"GET /api/book-now/schedule-updates?instructorId=wk1 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            received = b""
            while b"event: snapshot" not in received:
                received += client.recv(65536)
            streams.append(client)

        texts = [
            httpx.get(f"http://127.0.0.1:{metrics_base + n}/metrics", timeout=5).text
            for n in (0, 1)
        ]
        infos = [_metric(text, "gateway_instance_info") for text in texts]
        assert 'instance_id="gw-multi-w0"' in infos[0][0]
        assert 'worker="0"' in infos[0][0]
        assert 'instance_id="gw-multi-w1"' in infos[1][0]
        counts = [float(_metric(text, "gateway_connections ")[0].split()[-1]) for text in texts]
        assert all(count > 0 for count in counts), f"both workers serve streams: {counts}"
        assert sum(counts) == 24

        # presence: each worker publishes its own count under its own instance id; every
        # worker sums them, so either one reports all 24 viewers
        presence = "v1/channels/instructors/wk1/schedule/presence"
        deadline = time.monotonic() + 15
        while True:
            seen = [
                httpx.get(f"http://127.0.0.1:{metrics_base + n}/{presence}", timeout=5).json()[
                    "count"
                ]
                for n in (0, 1)
            ]
            if seen == [24, 24]:
                break
            assert time.monotonic() < deadline, f"presence per worker: {seen}"
            time.sleep(0.3)
    finally:
        for client in streams:
            client.close()

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert b"Traceback" not in workers.log.read_bytes()


def _children(pid: int) -> set[str]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return set(found.stdout.split())


def test_a_worker_that_dies_is_restarted(workers: Workers) -> None:
    process = workers.process
    before = _children(process.pid)
    assert len(before) == 2
    # each worker in a session of its own: the scheduler's autogroups weigh it as one
    # process, not all workers together as one
    assert {os.getsid(int(pid)) for pid in before} == {int(pid) for pid in before}
    victim = sorted(before, key=int)[-1]
    os.kill(int(victim), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = _children(process.pid)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no worker restarted: {before} -> {now}"
        time.sleep(0.2)
    workers.wait_ready()


def test_workers_that_cannot_listen_stop_the_supervisor_with_the_reason(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    """A port another program holds is not freed by restarting workers: the supervisor must
    not restart them for ever (each a traceback, every 15 s), but say why and exit 2, as a
    single gateway refuses a Unix socket it cannot bind."""
    log = tmp_path / "gateway.log"
    with socket.socket() as taken:  # no SO_REUSEPORT: the workers' bind fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_gateway_process(kafka, topics, booking_api, port, log, GATEWAY_WORKERS="2")
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_gateway_process(process)
    text = log.read_text()
    assert code == 2, f"the supervisor did not stop with status 2 within 60 s: {text[-3000:]}"
    assert f"push-gateway: refusing to start, cannot listen on 127.0.0.1:{port}" in text
    assert "Traceback" not in text


def test_workers_without_metrics_ports_warn_once_that_none_can_be_scraped(
    booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    """Without ``GATEWAY_WORKER_METRICS_PORT`` the workers start (benchmarks and tests run
    them so), but a scrape of the shared port reaches any one worker, so no worker can be
    scraped on its own: one warning line at start says so. Kafka need not answer: the
    workers serve ``/healthz`` while they wait for it."""
    log = tmp_path / "gateway.log"
    nowhere = KafkaEndpoint(f"127.0.0.1:{free_port()}", kind="none", supports_idempotence=False)
    port = free_port()
    process = start_gateway_process(
        nowhere, TopicSettings(), booking_api, port, log, GATEWAY_WORKERS="2"
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}/healthz", log)
    finally:
        stop_gateway_process(process)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warned = [e for e in lines if "GATEWAY_WORKER_METRICS_PORT" in e["event"]]
    assert len(warned) == 1, f"one warning naming the setting: {warned}"
    [warning] = warned
    assert warning["level"] == "warning"
    assert "GATEWAY_WORKERS" in warning["event"]
    assert "scraped" in warning["event"]
    assert warning["workers"] == 2
