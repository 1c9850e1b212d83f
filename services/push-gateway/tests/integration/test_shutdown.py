"""The console entry point as a real process: SIGTERM closes the port and drains streams
with a short retry."""

import asyncio
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from push_gateway.app import RESTART_EXIT_CODE
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint, create_topics
from slotstream_testkit.net import free_port

from .conftest import FakeBookingApi, start_gateway_process, wait_ready

pytestmark = pytest.mark.integration


def schedule_stream(port: int, instructor: str) -> tuple[socket.socket, bytes]:
    """A raw SSE client of ``instructor``'s schedule, and what it received up to its snapshot."""
    client = socket.create_connection(("127.0.0.1", port), timeout=15)
    client.sendall(
        f"GET /api/book-now/schedule-updates?instructorId={instructor} HTTP/1.1\r\n"
        "Host: x\r\n\r\n".encode()
    )
    received = b""
    while b"event: snapshot" not in received:
        received += client.recv(65536)
    return client, received


def websocket_subscribed(port: int, channel: str) -> socket.socket:
    """A raw WebSocket client on ``/v1/ws`` subscribed to ``channel`` (snapshot received)."""
    ws = socket.create_connection(("127.0.0.1", port), timeout=10)
    ws.sendall(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    got = b""
    while b"\r\n\r\n" not in got:
        got += ws.recv(65536)
    assert got.startswith(b"HTTP/1.1 101")
    op = b'{"op":"subscribe","channel":"' + channel.encode() + b'"}'
    ws.sendall(bytes((0x81, 0x80 | len(op))) + b"\0\0\0\0" + op)  # masked with key 0
    while b'"snapshot"' not in got:
        got += ws.recv(65536)
    return ws


def test_sigterm_tells_clients_to_reconnect_soon_and_exits(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    process = start_gateway_process(
        kafka,
        topics,
        booking_api,
        port,
        log,
        GATEWAY_SHUTDOWN_RETRY_MS="250",
        GATEWAY_SHUTDOWN_RETRY_JITTER_MS="1000",
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}/readyz", log)
        client, received = schedule_stream(port, "term1")
        ws = websocket_subscribed(port, "instructors/term1/schedule")
        process.send_signal(signal.SIGTERM)
        while chunk := client.recv(65536):
            received += chunk
        # The hint is the base plus a random share of the jitter window.
        tail = re.search(rb'retry: (\d+)\n\nevent: bye\ndata: {"reason":"shutdown"}\n\n$', received)
        assert tail is not None, received[-200:]
        assert 250 <= int(tail.group(1)) <= 1250
        # The port closed as the drain began, before the bye: a scrape now fails, so
        # Prometheus sees a drain as the target going away (gateway_ready 0 is never read)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        on_ws = b""
        while chunk := ws.recv(65536):
            on_ws += chunk
        # the bye message, then a close frame: code 1001, reason "shutdown"
        assert on_ws.endswith(
            b'{"event":"bye","data":{"reason":"shutdown"}}\x88\x0a\x03\xe9shutdown'
        )
        ws.close()
        # uvicorn drains, then re-raises the signal it captured: a clean SIGTERM exit
        assert process.wait(15) in (0, -signal.SIGTERM)
        assert b"Traceback" not in log.read_bytes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def recreate_with_more_partitions(kafka: KafkaEndpoint, topic: str, partitions: int) -> None:
    """Tansu has no ``create_partitions``: the topic is deleted and created again with more,
    which the gateway's metadata shows as a grown partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    await create_topics(kafka.bootstrap_servers, {topic: partitions})


def test_partitions_added_under_a_gateway_end_its_streams_and_the_process_for_a_restart(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    process = start_gateway_process(
        kafka,
        topics,
        booking_api,
        port,
        log,
        GATEWAY_KAFKA__METADATA_MAX_AGE_MS="500",
        GATEWAY_SHUTDOWN_RETRY_MS="250",
        GATEWAY_SHUTDOWN_RETRY_JITTER_MS="0",
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}/readyz", log)
        client, received = schedule_stream(port, "grow1")
        asyncio.run(recreate_with_more_partitions(kafka, topics.schedule, 5))  # was 3
        while chunk := client.recv(65536):
            received += chunk
        assert received.endswith(b'retry: 250\n\nevent: bye\ndata: {"reason":"shutdown"}\n\n')
        assert process.wait(15) == RESTART_EXIT_CODE
        logged = log.read_bytes()
        assert b"partition count of a data topic changed" in logged
        assert b'"partitions_read": 3, "partitions_now": 5' in logged, logged[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
