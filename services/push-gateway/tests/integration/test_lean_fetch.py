"""The ingest's lean fetch loop against real Tansu: records produced across several
partitions while the broker connection is dropped (a TCP fault proxy in front of Tansu)
all reach the hub exactly once, in order per partition; the same run through aiokafka's
consumer (``fetch_loop=aiokafka``) gives the same."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
from aiokafka import AIOKafkaProducer

from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.config import GatewayKafkaSettings
from push_gateway.domain.hub import ChannelHub
from slotstream_contracts.channels import ChannelKind
from slotstream_testkit.faultproxy import TcpFaultProxy
from slotstream_testkit.kafka import TansuBroker, create_topics
from slotstream_testkit.net import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 4
ROUNDS = 30
PER_ROUND = 20


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[str, TcpFaultProxy]]:
    """Tansu advertising the proxy's port, so every client connection crosses the proxy."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpFaultProxy(proxy_port, "127.0.0.1", broker_port)
    await proxy.start()
    broker = TansuBroker(port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "t.log")
    try:
        await asyncio.to_thread(broker.start)
        yield f"127.0.0.1:{proxy_port}", proxy
    finally:
        await asyncio.to_thread(broker.stop)
        await proxy.stop()


def ring_values(hub: ChannelHub, partition: int) -> list[tuple[int, bytes | None]]:
    state = hub._partitions[("s", partition)]  # noqa: SLF001 - what the hub kept, in order
    return [(r[0], r[2]) for r in state.ring]


@pytest.mark.parametrize("fetch_loop", ["lean", "aiokafka"])
async def test_records_arrive_once_in_order_across_dropped_connections(
    proxied: tuple[str, TcpFaultProxy], fetch_loop: Literal["lean", "aiokafka"]
) -> None:
    bootstrap, proxy = proxied
    tag = uuid.uuid4().hex[:8]
    schedule, notifications = f"lean.{tag}.schedule", f"lean.{tag}.notifications"
    await create_topics(bootstrap, {schedule: PARTITIONS, notifications: 1})
    hub = ChannelHub(
        {ChannelKind.SCHEDULE: schedule, ChannelKind.NOTIFICATIONS: notifications}, 4096
    )
    settings = GatewayKafkaSettings(
        bootstrap_servers=bootstrap, fetch_loop=fetch_loop, request_timeout_ms=3000
    )
    ingest = KafkaIngest(settings, (schedule, notifications), hub, backfill=0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=2)
    await ingest.start()
    await producer.start()
    sent: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    try:
        assert (ingest.fetcher is not None) == (fetch_loop == "lean")
        for n in range(ROUNDS):
            batch = []
            for i in range(PER_ROUND):
                partition = (n + i) % PARTITIONS
                value = b"%d-%d" % (n, i)
                sent[partition].append(value)
                batch.append(await producer.send(schedule, value, key=b"k", partition=partition))
            await asyncio.gather(*batch)
            if n in (8, 19):  # drop every broker connection mid-stream (producer's too)
                proxy.cut()
                await asyncio.sleep(0.05)
                proxy.restore()
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 30
        while hub.stats.records < ROUNDS * PER_ROUND and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything read twice would show now
        for partition in range(PARTITIONS):
            got = ring_values(hub, partition)
            assert [offset for offset, _ in got] == list(range(len(sent[partition])))
            assert [value for _, value in got] == sent[partition]
        assert hub.stats.records == ROUNDS * PER_ROUND
        assert ingest.fetch_errors >= 0
        if ingest.fetcher is not None:
            assert ingest.fetcher.counters.errors >= 1  # the drops were seen, and survived
            _, highwater = ingest.bounds(schedule, 0)
            assert highwater == len(sent[0])
            assert await ingest.refresh_lag() == 0
    finally:
        await producer.stop()
        await ingest.stop()
