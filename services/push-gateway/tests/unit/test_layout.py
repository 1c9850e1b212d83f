"""Partitions added to a data topic under a running gateway: noticed from the ingest's
metadata, and the gateway stops as on SIGTERM, then exits for a restart with the new
layout. A whole server (uvicorn, in a thread) over a fake Kafka consumer at the seam."""

import asyncio
import gc
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from push_gateway.adapters import kafka as kafka_adapter
from push_gateway.adapters.kafka import FakeHistory
from push_gateway.adapters.presence import FakePresenceBus, PresenceTable
from push_gateway.adapters.snapshots import FakeSnapshotSource
from push_gateway.adapters.tickets import FakeTicketRedeemer
from push_gateway.app import RESTART_EXIT_CODE, build_server, create_app
from push_gateway.config import GatewayKafkaSettings, Settings
from push_gateway.domain.layout import LayoutChange, layout_changes
from push_gateway.testing import snapshot
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.topics import NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC
from slotstream_testkit.net import free_port


def test_a_changed_count_is_a_change_and_a_missing_topic_is_not() -> None:
    assigned = {"s": 2, "n": 1}
    assert layout_changes(assigned, {"s": 2, "n": 1}) == []
    assert layout_changes(assigned, {"s": 4, "n": 1}) == [LayoutChange("s", 2, 4)]
    assert layout_changes(assigned, {"s": None, "n": 3}) == [LayoutChange("n", 1, 3)]


class FakeConsumer:
    """The parts of ``AIOKafkaConsumer`` the ingest uses with ``fetch_loop=aiokafka``: a
    silent log, and cluster metadata whose partition counts a test changes (``layout``, as
    aiokafka's periodic refresh would)."""

    layout: ClassVar[dict[str, int]] = {}
    created: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **options: Any) -> None:
        self.created.append(options)
        self._fetcher = SimpleNamespace(_fetch_max_wait_ms=5)
        self._client = SimpleNamespace()  # held by the lean loop's brokers, unused here

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.layout.get(topic)
        return None if count is None else set(range(count))

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeConsumer]]:
    monkeypatch.setattr(kafka_adapter, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(FakeConsumer, "layout", {SCHEDULE_TOPIC: 2, NOTIFICATIONS_TOPIC: 1})
    monkeypatch.setattr(FakeConsumer, "created", [])
    thresholds = gc.get_threshold()
    yield FakeConsumer
    gc.unfreeze()  # what the server's lifespan froze and tuned, for the rest of the suite
    gc.set_threshold(*thresholds)


def stream_until_closed(port: int, grow: threading.Event) -> bytes:
    """A page's stream: read its snapshot, let the test grow the topic, read to the end."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(
        b"GET /api/book-now/schedule-updates?instructorId=i1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    received = b""
    while b"event: snapshot" not in received:
        received += client.recv(65536)
    grow.set()
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    return received


def test_a_gateway_whose_topic_gained_partitions_stops_its_streams_and_exits_for_a_restart(
    fake_kafka: type[FakeConsumer],
) -> None:
    """On main the gateway went on serving the two partitions it was assigned at start: the
    stream never got its ``bye`` (the read timed out) and the process never exited, while
    the keys hashing to the two new partitions reached none of its streams."""
    port = free_port()
    settings = Settings(
        port=port,
        host="127.0.0.1",
        jwt=JwtSettings(secret=SecretStr("unit-secret-5e0b9c2d7f1a4e8b6c3d9a0f")),
        kafka=GatewayKafkaSettings(fetch_loop="aiokafka", metadata_max_age_ms=500),
        shutdown_retry_ms=250,
        shutdown_retry_jitter_ms=0,
    )
    app = create_app(
        settings,
        snapshot_source=FakeSnapshotSource({"i1": snapshot("i1", [])}),
        history=FakeHistory(),
        presence=FakePresenceBus("g1", PresenceTable(10)),
        tickets=FakeTicketRedeemer(),
    )
    server = build_server(settings, app)
    exit_codes: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:
            exit_codes.append(exc.code)
        else:
            exit_codes.append(0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            threading.Event().wait(0.05)
        assert fake_kafka.created[-1]["metadata_max_age_ms"] == 500
        grow = threading.Event()

        def add_partitions() -> None:  # as aiokafka's next metadata refresh shows them
            grow.wait(10)
            fake_kafka.layout[SCHEDULE_TOPIC] = 4

        grown = threading.Thread(target=add_partitions)
        grown.start()
        received = stream_until_closed(port, grow)
        grown.join()
        assert received.endswith(b'retry: 250\n\nevent: bye\ndata: {"reason":"shutdown"}\n\n')
        thread.join(10)
        assert exit_codes == [RESTART_EXIT_CODE]
    finally:
        server.should_exit = True
        thread.join(10)
