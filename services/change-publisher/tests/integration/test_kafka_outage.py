"""Kafka unreachable for a while (a TCP fault proxy in front of Tansu), then back: no loss."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger

from change_publisher.adapters.memory import (
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryLeaseStore,
)
from change_publisher.publisher import Publisher
from slotstream_testkit.faultproxy import TcpFaultProxy
from slotstream_testkit.kafka import TansuBroker
from slotstream_testkit.net import free_port

from .conftest import Topics, consume, header, kafka_producer, make_topics
from .test_delivery_kafka import publisher_for, wait_until, write_schedule

pytestmark = pytest.mark.integration

#: aiokafka itself stops taking records after about three source batches while the broker
#: is unreachable (each partition's batch waits for the one before it); the publisher's bound
#: is set below that so that it, not the client library, is what holds the backlog back.
MAX_IN_FLIGHT = 150
READ_BATCH = 100


@pytest.fixture
async def proxied_broker(tmp_path: Path) -> AsyncIterator[tuple[TansuBroker, TcpFaultProxy]]:
    """Tansu advertising the proxy's port, so every client connection crosses the proxy."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpFaultProxy(proxy_port, "127.0.0.1", broker_port)
    await proxy.start()
    broker = TansuBroker(
        port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "tansu.log"
    )
    try:
        await asyncio.to_thread(broker.start)
        yield broker, proxy
    finally:
        await asyncio.to_thread(broker.stop)
        await proxy.stop()


def _stamped(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    event["created"] = time.time()
    return event


def _log_lines(events: list[EventDict], records: list[logging.LogRecord]) -> list[EventDict]:
    """The publisher's events and the client library's warnings, in the order they were
    said: what an operator reads in the process's log."""
    library: list[EventDict] = [
        {"event": r.getMessage(), "logger": r.name, "created": r.created}
        for r in records
        if r.levelno >= logging.WARNING and r.name.startswith("aiokafka")
    ]
    return sorted([*events, *library], key=lambda line: float(line["created"]))


async def test_outage_goes_unready_bounds_in_flight_loses_nothing_and_says_so_per_attempt(
    proxied_broker: tuple[TansuBroker, TcpFaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    broker, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.listen_port}"
    topics = await make_topics(bootstrap)
    database = MemoryDatabase()
    publisher = publisher_for(
        database,
        kafka_producer(bootstrap, idempotence=False, request_timeout_ms=1_500),
        topics,
        MemoryCheckpointStore(),
        MemoryLeaseStore(),
        max_in_flight=MAX_IN_FLIGHT,
        read_batch=READ_BATCH,
        lease_ttl=30.0,
        bootstrap_servers=bootstrap,
    )
    caplog.set_level(logging.WARNING, logger="aiokafka")
    with capture_logs(processors=[_stamped]) as events:
        await _outage(publisher, database, proxy, bootstrap, topics)
    lines = _log_lines(events, caplog.records)
    print(*lines, sep="\n")  # noqa: T201 - with -s: the outage as an operator reads it

    # While it waits for Kafka: one line per failed probe naming the address and the real
    # reason (aiokafka's complaint, folded in), nothing else about Kafka; then one line
    # saying Kafka is back.
    interrupted = next(
        i for i, line in enumerate(lines) if line["event"].startswith("stream interrupted")
    )
    assert lines[interrupted]["bootstrap_servers"] == bootstrap
    recovered = [
        i for i, line in enumerate(lines) if line["event"] == "kafka reachable again: resuming"
    ]
    assert len(recovered) == 1, lines[interrupted:]
    waiting = lines[interrupted + 1 : recovered[0]]
    assert waiting, lines[interrupted:]
    assert {line["event"] for line in waiting} == {"kafka not reachable: retrying"}, waiting
    for line in waiting:
        assert line["bootstrap_servers"] == bootstrap
        assert f"Connection at {bootstrap} closed" in line["error"], line
    back = lines[recovered[0]]
    assert back["bootstrap_servers"] == bootstrap
    assert back["attempts"] == len(waiting) + 1
    assert back["outage_seconds"] > 0
    assert not [line for line in lines if line["event"].startswith("stamina")]


async def _outage(
    publisher: Publisher,
    database: MemoryDatabase,
    proxy: TcpFaultProxy,
    bootstrap: str,
    topics: Topics,
) -> None:
    """Publish, cut Kafka off for 3 s with a backlog far over the in-flight bound, restore
    it: unready meanwhile, the bound held, every change delivered once Kafka is back."""
    task = asyncio.create_task(publisher.run())
    await wait_until(lambda: publisher.ready)
    written = write_schedule(database, instructors=5, slots=20)
    await wait_until(lambda: publisher.in_flight == 0)

    proxy.cut()
    backlog = write_schedule(database, instructors=5, slots=200, start=20)
    assert backlog > 2 * (MAX_IN_FLIGHT + READ_BATCH)  # far more than the bound lets out
    written += backlog
    peak_in_flight = 0
    saw_unready = False
    for _ in range(150):  # 3 s of outage
        peak_in_flight = max(peak_in_flight, publisher.in_flight)
        saw_unready = saw_unready or not publisher.ready
        await asyncio.sleep(0.02)
    proxy.restore()
    await wait_until(
        lambda: (
            publisher.last_checkpoint is not None
            and publisher.last_checkpoint.token == database.log.latest_token
        ),
        within=30,
    )
    assert publisher.ready
    publisher.stop()
    await asyncio.wait_for(task, 10)

    assert saw_unready
    # Backpressure engaged (the bound was reached) and held: at most one source batch over.
    assert MAX_IN_FLIGHT <= peak_in_flight <= MAX_IN_FLIGHT + READ_BATCH
    assert publisher.metrics.kafka_errors._value.get() >= 1
    records = await consume(bootstrap, (topics.schedule,), lambda rs: len(rs) >= written)
    assert len({header(r, "ce_id") for r in records}) == written
