"""Resume older than the ring buffer: read back from real Kafka (Tansu)."""

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from httpx_sse import ServerSentEvent

from push_gateway.adapters.kafka import HistoryBusy, KafkaHistory
from push_gateway.app import build_server
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import ChannelHub
from push_gateway.gateway import Gateway
from push_gateway.testing import resync_event, slot_event
from slotstream_contracts.settings import TopicSettings
from slotstream_contracts.topics import CONTROL_KEY
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


async def first_delta(
    gateway: ServerThread, p: AIOKafkaProducer, topics: TopicSettings, instructor: str
) -> ServerSentEvent:
    """A stream's first delta (slot s1 v1), received live; the stream is closed after it."""
    async with Stream(gateway.url + PAGE, {"instructorId": instructor}) as first:
        await first.wait_for("snapshot", 1)
        await publish(p, topics.schedule, [slot_event(instructor, "s1", 1)])
        [seen] = await first.wait_for("slot", 1)
    return seen


async def ring_moved_past(gateway: ServerThread, event_id: str) -> None:
    """Wait until the gateway's ring no longer holds the records after ``event_id``, so that
    a resume from there reads Kafka back (a fixed sleep was sometimes too short)."""
    app = gateway.server.config.app
    assert isinstance(app, FastAPI)
    hub: ChannelHub = app.state.gateway.hub
    partition, offset = event_id.split(":")
    key = (partition[0], int(partition[1:]))
    async with asyncio.timeout(20):
        while hub.ring_floor(key) <= int(offset) + 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


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
        seen = await first_delta(small_ring_gateway, p, topics, "deep1")
        # 40 more for this instructor, plus others' records on every partition: the ring
        # (16 per partition) no longer reaches back to the client's position
        await publish(p, topics.schedule, [slot_event("deep1", "s1", v) for v in range(2, 42)])
        await publish(p, topics.schedule, [slot_event(f"o{n}", "x", 1) for n in range(60)])
        await ring_moved_past(small_ring_gateway, seen.id)
        resumed = Stream(small_ring_gateway.url + PAGE, params, {"Last-Event-ID": seen.id})
        async with resumed:
            await resumed.wait_for("slot", 40, within=20)
    # presence frames (every 0.3 s here) may come in between on a slow machine; nothing else
    assert [e.event for e in resumed.events if e.event != "presence"] == ["slot"] * 40
    assert [d["version"] for d in resumed.data("slot")] == list(range(2, 42))
    metrics = (await get(small_ring_gateway.url + "/metrics")).text
    assert 'gateway_resumes_total{source="kafka"} 1.0' in metrics


async def test_one_shared_reader_serves_concurrent_reads_with_a_bounded_pool(
    kafka: KafkaEndpoint, topics: TopicSettings
) -> None:
    async with producer(kafka) as p:
        sent = [
            await p.send_and_wait(topics.notifications, b"{}", key=b"pool-a", partition=0)
            for _ in range(20)
        ]
    first, stop = sent[0].offset, sent[-1].offset + 1
    settings = GatewayKafkaSettings(bootstrap_servers=kafka.bootstrap_servers)
    history = KafkaHistory(settings, max_reads=2, wait_seconds=30)
    try:
        reads = [history.read(topics.notifications, 0, first, stop, {b"pool-a"}) for _ in range(6)]
        results = await asyncio.gather(*reads)
        assert all([r.offset for r in found] == list(range(first, stop)) for found in results)
        await history.read(topics.notifications, 0, first, stop, {b"pool-a"})
        assert history.consumers_started <= 2  # reused, never one per request
        assert history.reads == 7
    finally:
        await history.close()


async def test_a_read_finding_no_free_slot_in_time_is_refused(
    kafka: KafkaEndpoint, topics: TopicSettings
) -> None:
    settings = GatewayKafkaSettings(bootstrap_servers=kafka.bootstrap_servers)
    history = KafkaHistory(settings, max_reads=1, wait_seconds=0.001)
    try:
        results = await asyncio.gather(
            history.read(topics.notifications, 0, 0, 1, {b"x"}),
            history.read(topics.notifications, 0, 0, 1, {b"x"}),
            return_exceptions=True,
        )
        assert sum(isinstance(r, HistoryBusy) for r in results) == 1
        assert history.busy == 1
    finally:
        await history.close()


async def test_a_resync_in_the_range_read_back_from_kafka_restarts_with_a_snapshot(
    kafka: KafkaEndpoint, topics: TopicSettings, small_ring_gateway: ServerThread
) -> None:
    params = {"instructorId": "deep2"}
    async with producer(kafka) as p:
        seen = await first_delta(small_ring_gateway, p, topics, "deep2")
        partition = int(seen.id.split(":")[0][1:])
        resync = resync_event("resync-deep2", topics.schedule)
        await p.send_and_wait(
            topics.schedule,
            resync.to_json(),
            key=CONTROL_KEY.encode(),
            partition=partition,
            headers=resync.headers(),
        )
        await publish(p, topics.schedule, [slot_event("deep2", "s1", v) for v in range(2, 6)])
        await publish(p, topics.schedule, [slot_event(f"r{n}", "x", 1) for n in range(60)])
        await ring_moved_past(small_ring_gateway, seen.id)
        resumed = Stream(small_ring_gateway.url + PAGE, params, {"Last-Event-ID": seen.id})
        async with resumed:
            await resumed.wait_for("snapshot", 1)
    assert [e.event for e in resumed.events][:2] == ["resync", "snapshot"]
    assert resumed.data("slot") == []  # nothing replayed across the resync


async def test_an_id_ahead_of_the_log_gets_a_snapshot_at_once(
    small_ring_gateway: ServerThread,
) -> None:
    """Refused on the spot, not after waiting (catch_up_timeout_seconds) for the gateway to
    reach that position."""
    app = small_ring_gateway.server.config.app
    assert isinstance(app, FastAPI)
    gateway: Gateway = app.state.gateway
    refused = gateway.stats.resumes_refused
    started = time.monotonic()
    ahead = {"Last-Event-ID": "s0:999999999.s1:999999999.s2:999999999"}
    async with Stream(small_ring_gateway.url + PAGE, {"instructorId": "deep3"}, ahead) as stream:
        await stream.wait_for("snapshot", 1)
    assert gateway.stats.resumes_refused == refused + 1
    assert time.monotonic() - started < gateway.settings.catch_up_timeout_seconds / 2
