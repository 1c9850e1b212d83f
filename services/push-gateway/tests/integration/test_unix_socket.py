"""``GATEWAY_UNIX_SOCKET`` as real processes: an edge on the same host reaches the gateway
over a Unix socket (streams, live events, the client named by X-Forwarded-For), the socket
file follows the gateway's life, and workers share it."""

import asyncio
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from aiokafka import AIOKafkaProducer

from push_gateway.testing import slot_event
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint
from slotstream_testkit.net import free_port

from .conftest import FakeBookingApi, start_gateway_process, stop_gateway_process, wait_ready

pytestmark = pytest.mark.integration

STREAM = "/api/book-now/schedule-updates"


class Gateway:
    """A gateway process listening on a TCP port and a Unix socket."""

    def __init__(self, process: "subprocess.Popen[bytes]", port: int, path: Path, log: Path):
        self.process, self.port, self.path, self.log = process, port, path, log

    def wait_ready(self) -> None:
        wait_ready(self.process, f"http://127.0.0.1:{self.port}/readyz", self.log)

    def stop(self) -> int:
        return stop_gateway_process(self.process)


class StartGateway(Protocol):
    def __call__(self, path: Path, **extra: str) -> Gateway: ...


@pytest.fixture
def start(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, tmp_path: Path
) -> Iterator[StartGateway]:
    started: list[Gateway] = []

    def start_one(path: Path, **extra: str) -> Gateway:
        port = free_port()
        log = tmp_path / f"gateway-{len(started)}.log"
        process = start_gateway_process(
            kafka, topics, booking_api, port, log, GATEWAY_UNIX_SOCKET=str(path), **extra
        )
        gateway = Gateway(process, port, path, log)
        started.append(gateway)
        return gateway

    yield start_one
    for gateway in started:
        gateway.stop()


def open_stream(path: Path, instructor: str, forwarded_for: str) -> tuple[socket.socket, bytes]:
    """An SSE request on the Unix socket, as the edge sends it; the answer's first bytes
    (through the snapshot, or the whole refusal)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(path))
    client.sendall(
        f"GET {STREAM}?instructorId={instructor} HTTP/1.1\r\nHost: edge\r\n"
        f"X-Forwarded-For: {forwarded_for}\r\n\r\n".encode()
    )
    received = b""
    while b"event: snapshot" not in received:
        chunk = client.recv(65536)
        if not chunk:
            break
        received += chunk
    return client, received


def served(path: Path, instructor: str, forwarded_for: str) -> socket.socket:
    """A stream on the socket once a worker serves it (a worker still starting: 503)."""
    deadline = time.monotonic() + 30
    while True:
        client, head = open_stream(path, instructor, forwarded_for)
        if head.startswith(b"HTTP/1.1 200"):
            return client
        client.close()
        assert head.startswith(b"HTTP/1.1 503"), head
        assert time.monotonic() < deadline, head
        time.sleep(0.2)


def read_until(client: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = client.recv(65536)
        assert chunk, f"stream ended before {marker!r}: {received[-300:]!r}"
        received += chunk
    return received


async def publish_slot(kafka: KafkaEndpoint, topic: str, instructor: str, slot: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        event = slot_event(instructor, slot, 1)
        await producer.send_and_wait(
            topic, event.to_json(), key=event.routing_key.encode(), headers=event.headers()
        )
    finally:
        await producer.stop()


def test_an_edge_on_the_same_host_streams_over_the_unix_socket(
    start: StartGateway, kafka: KafkaEndpoint, topics: TopicSettings, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    gateway = start(path, GATEWAY_MAX_STREAMS_PER_IP="1")
    gateway.wait_ready()
    # only the owner and its group (the edge's) may connect
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660

    stream, head = open_stream(path, "ux1", "203.0.113.7")
    assert head.startswith(b"HTTP/1.1 200"), head
    asyncio.run(publish_slot(kafka, topics.schedule, "ux1", "ux1-slot"))
    assert b"ux1-slot" in read_until(stream, b"ux1-slot")

    # the limits count the client the edge names, not the socket's (address-less) peer
    second, refused = open_stream(path, "ux1", "203.0.113.7")
    assert refused.startswith(b"HTTP/1.1 429"), refused
    other, head = open_stream(path, "ux1", "203.0.113.8")
    assert head.startswith(b"HTTP/1.1 200"), head
    for client in (stream, second, other):
        client.close()

    assert gateway.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert not path.exists(), "the socket file outlived the gateway"


def test_a_socket_file_left_by_a_killed_gateway_is_replaced(
    start: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    first = start(path)
    first.wait_ready()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert path.exists()  # nobody removed it

    second = start(path)
    second.wait_ready()
    served(path, "ux2", "203.0.113.9").close()


def test_a_second_gateway_on_a_live_socket_refuses_to_start(
    start: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    live = start(path)
    live.wait_ready()

    late = start(path)
    assert late.process.wait(30) == 2
    assert "GATEWAY_UNIX_SOCKET" in late.log.read_text()
    assert "another process listens on it" in late.log.read_text()
    # the live gateway keeps its socket
    served(path, "ux3", "203.0.113.10").close()


def test_workers_share_the_unix_socket_and_its_file_goes_with_the_supervisor(
    start: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.sock"
    gateway = start(path, GATEWAY_WORKERS="2")
    gateway.wait_ready()
    workers = subprocess.run(
        ["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(workers) == 2
    # a stream over the socket whichever worker is left to accept it
    for pid in workers:
        streams = [served(path, "ux4", f"203.0.113.{20 + n}") for n in range(4)]
        for stream in streams:
            stream.close()
        os.kill(int(pid), signal.SIGSTOP)  # this one no longer accepts
    for pid in workers:
        os.kill(int(pid), signal.SIGCONT)

    assert gateway.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert not path.exists(), "the socket file outlived the supervisor"
