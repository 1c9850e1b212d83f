"""Resume older than the ring buffer: read back from real Kafka (Tansu)."""

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from push_gateway.adapters.kafka import KafkaHistory
from push_gateway.app import build_server
from push_gateway.config import GatewayKafkaSettings
from push_gateway.testing import slot_event
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint

from .conftest import FakeBookingApi, ServerThread, gateway_settings
from .test_gateways import PAGE, Stream, get, producer, publish

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_ring_gateway(
    kafka: KafkaEndpoint, topics: TopicSettings, booking_api: FakeBookingApi
) -> Iterator[ServerThread]:
    settings = gateway_settings(kafka, topics, booking_api, ring_buffer_size=16)
    server = ServerThread(build_server(settings), settings.port).start("/readyz")
    try:
        yield server
    finally:
        server.stop()


async def test_history_reads_exactly_the_requested_range_and_keys(
    kafka: KafkaEndpoint, topics: TopicSettings
) -> None:
    async with producer(kafka) as p:
        sent = [
            await p.send_and_wait(
                topics.notifications, f'{{"n":{n}}}'.encode(), key=b"hist-a" if n % 2 else b"hist-b"
            )
            for n in range(12)
        ]
    partition = sent[0].partition
    mine = [m for m in sent if m.partition == partition]
    history = KafkaHistory(GatewayKafkaSettings(bootstrap_servers=kafka.bootstrap_servers))
    first, stop = mine[1].offset, mine[-1].offset
    found = await history.read(topics.notifications, partition, first, stop, {b"hist-a", b"hist-b"})
    assert [r.offset for r in found] == [m.offset for m in mine if first <= m.offset < stop]


async def test_resume_older_than_the_ring_is_read_back_from_kafka(
    kafka: KafkaEndpoint, topics: TopicSettings, small_ring_gateway: ServerThread
) -> None:
    params = {"instructorId": "deep1"}
    async with producer(kafka) as p:
        async with Stream(small_ring_gateway.url + PAGE, params) as first:
            await first.wait_for("snapshot", 1)
            await publish(p, topics.schedule, [slot_event("deep1", "s1", 1)])
            [seen] = await first.wait_for("slot", 1)
        # 40 more for this instructor, plus others' records on every partition: the ring
        # (16 per partition) no longer reaches back to the client's position
        await publish(p, topics.schedule, [slot_event("deep1", "s1", v) for v in range(2, 42)])
        await publish(p, topics.schedule, [slot_event(f"o{n}", "x", 1) for n in range(60)])
        await asyncio.sleep(0.5)
        resumed = Stream(small_ring_gateway.url + PAGE, params, {"Last-Event-ID": seen.id})
        async with resumed:
            await resumed.wait_for("slot", 40, within=20)
    assert [orjson.loads(e.data)["version"] for e in resumed.events] == list(range(2, 42))
    metrics = (await get(small_ring_gateway.url + "/metrics")).text
    assert 'gateway_resumes_total{source="kafka"} 1.0' in metrics
