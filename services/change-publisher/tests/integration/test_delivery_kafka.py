"""The publisher against real Kafka (Tansu): keys, headers, order, crashes, handovers."""

import asyncio
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from change_publisher.adapters.memory import (
    MemoryChangeSource,
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryLeaseStore,
)
from change_publisher.ports import Checkpoint, EventProducer
from change_publisher.publisher import Publisher, PublisherOptions, Role
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.events import decode_event
from slotstream_contracts.topics import CONTROL_KEY
from slotstream_testkit.kafka import KafkaEndpoint

from ..conftest import NOW, Docs
from .conftest import (
    PARTITIONS,
    Record,
    Topics,
    by_partition,
    consume,
    epoch,
    header,
    kafka_producer,
)

pytestmark = pytest.mark.integration


def publisher_for(
    database: MemoryDatabase,
    producer: EventProducer,
    topics: Topics,
    checkpoints: MemoryCheckpointStore,
    leases: MemoryLeaseStore,
    instance: str = "p1",
    read_batch: int = 1000,
    **options: Any,
) -> Publisher:
    settings: dict[str, Any] = {
        "stream_name": "it",
        "instance_id": instance,
        "collections": (SLOTS, BOOKINGS, NOTIFICATIONS),
        "checkpoint_interval": 0.05,
        "lease_ttl": 1.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        **options,
    }
    return Publisher(
        PublisherOptions(**settings),
        source=MemoryChangeSource(database, limit=read_batch, wait=0.05),
        checkpoints=checkpoints,
        leases=leases,
        producer=producer,
        router=topics.router,
    )


async def wait_until(condition: object, within: float = 10.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def write_schedule(database: MemoryDatabase, instructors: int, slots: int, start: int = 0) -> int:
    """Create slots and move each through booked and deleted: 3 changes per slot."""
    changes = 0
    for n in range(start, start + slots):
        slot_id = f"s{n}"
        database.insert(SLOTS, Docs.slot(slot_id, f"i{n % instructors}"))
        database.update(SLOTS, slot_id, {"status": "booked", "bookingId": f"b{n}"})
        database.update(SLOTS, slot_id, {"status": "deleted"})
        changes += 3
    return changes


async def test_events_arrive_keyed_with_headers_in_order_per_key(
    kafka: KafkaEndpoint, topics: Topics
) -> None:
    database = MemoryDatabase()
    producer = kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence)
    publisher = publisher_for(
        database, producer, topics, MemoryCheckpointStore(), MemoryLeaseStore()
    )
    task = asyncio.create_task(publisher.run())
    await wait_until(lambda: publisher.ready)
    expected = write_schedule(database, instructors=7, slots=100)
    database.insert(NOTIFICATIONS, Docs.notification("n1", "u9"))
    database.insert(SLOTS, Docs.slot("bad", "i1", version=0))
    records = await consume(kafka.bootstrap_servers, topics.all, lambda rs: len(rs) >= expected + 2)
    publisher.stop()
    await asyncio.wait_for(task, 10)

    schedule = [r for r in records if r.topic == topics.schedule]
    assert len(schedule) == expected
    versions: dict[str, list[int]] = defaultdict(list)
    for partition in by_partition(schedule).values():
        for record in partition:
            event = decode_event(record.value)
            assert record.key == event.routing_key.encode()
            assert header(record, "ce_type") == event.type.value.encode()
            assert header(record, "ce_id") == event.id.encode()
            assert header(record, "content-type") == b"application/cloudevents+json"
            assert event.version is not None
            versions[event.subject].append(event.version)
    # In order per key. An update's document is looked up when the change is read
    # (updateLookup), so the booking may already show the later version: 1, 3, 3.
    assert all(v[0] == 1 and v[-1] == 3 and v == sorted(v) for v in versions.values())
    assert all(len(v) == 3 for v in versions.values())
    assert len(versions) == 100
    (note,) = [r for r in records if r.topic == topics.notifications]
    assert note.key == b"u9"
    (dead,) = [r for r in records if r.topic == topics.deadletter]
    assert orjson.loads(dead.value)["change"]["documentKey"] == {"_id": "bad"}


async def test_crash_between_send_and_checkpoint_resends_with_the_same_ids(
    kafka: KafkaEndpoint, topics: Topics
) -> None:
    database = MemoryDatabase()
    checkpoints, leases = MemoryCheckpointStore(), MemoryLeaseStore()
    first = publisher_for(
        database,
        kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
        topics,
        checkpoints,
        leases,
        instance="first",
    )
    task = asyncio.create_task(first.run())
    await wait_until(lambda: first.ready)
    before = write_schedule(database, instructors=5, slots=50)
    last_checkpointed = database.log.latest_token
    await wait_until(
        lambda: (
            first.last_checkpoint is not None and first.last_checkpoint.token == last_checkpointed
        )
    )
    checkpoints.hold()  # the process dies after sending, before its next checkpoint
    after = write_schedule(database, instructors=5, slots=50, start=50)
    await consume(kafka.bootstrap_servers, (topics.schedule,), lambda rs: len(rs) >= before + after)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    checkpoints.release_hold()

    second = publisher_for(
        database,
        kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
        topics,
        checkpoints,
        leases,
        instance="second",
    )
    task = asyncio.create_task(second.run())
    await wait_until(
        lambda: (
            second.last_checkpoint is not None
            and second.last_checkpoint.token == database.log.latest_token
        )
    )
    second.stop()
    await asyncio.wait_for(task, 10)

    records = await consume(
        kafka.bootstrap_servers, (topics.schedule,), lambda rs: len(rs) >= before + 2 * after
    )
    copies: dict[bytes, set[bytes]] = defaultdict(set)
    for record in records:
        copies[header(record, "ce_id")].add(record.value)
    assert len(copies) == before + after  # every change present
    assert all(len(values) == 1 for values in copies.values())  # re-sends are identical
    counts = Counter(header(r, "ce_id") for r in records)
    assert sum(1 for c in counts.values() if c == 2) == after  # exactly the unacked part


async def test_lease_handover_never_interleaves_two_leaders(
    kafka: KafkaEndpoint, topics: Topics
) -> None:
    database = MemoryDatabase()
    checkpoints, leases = MemoryCheckpointStore(), MemoryLeaseStore()
    a = publisher_for(
        database,
        kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
        topics,
        checkpoints,
        leases,
        instance="a",
    )
    b = publisher_for(
        database,
        kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
        topics,
        checkpoints,
        leases,
        instance="b",
    )
    tasks = [asyncio.create_task(a.run())]
    await wait_until(lambda: a.ready)
    tasks.append(asyncio.create_task(b.run()))
    await wait_until(lambda: b.role is Role.STANDBY)

    async def writer() -> int:
        written = 0
        for round_ in range(30):
            written += write_schedule(database, instructors=4, slots=4, start=round_ * 4)
            await asyncio.sleep(0.05)
        return written

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0.4)
    leases.cut_off("a")  # a is alive but partitioned from the lease store
    await wait_until(lambda: b.role is Role.LEADER, within=5)
    written = await writing
    await wait_until(
        lambda: (
            b.last_checkpoint is not None and b.last_checkpoint.token == database.log.latest_token
        )
    )
    for publisher, task in zip((a, b), tasks, strict=True):
        publisher.stop()
        await asyncio.wait_for(task, 10)

    records: list[Record] = await consume(
        kafka.bootstrap_servers, (topics.schedule,), lambda rs: len(rs) >= written
    )
    assert len({header(r, "ce_id") for r in records}) == written  # nothing lost
    epochs_seen = set()
    for partition in by_partition(records).values():
        epochs = [epoch(r) for r in partition]
        assert epochs == sorted(epochs), "an old leader produced after the new one started"
        epochs_seen.update(epochs)
    assert epochs_seen == {1, 2}
    assert [g.holder for g in leases.grants] == ["a", "b"]


async def test_lost_history_writes_resync_to_every_partition_then_the_snapshot(
    kafka: KafkaEndpoint, topics: Topics
) -> None:
    database = MemoryDatabase(retain=5)
    stale = database.insert(SLOTS, Docs.slot("s0", "i0"))
    for n in range(1, 10):
        database.insert(SLOTS, Docs.slot(f"s{n}", f"i{n % 3}"))
    checkpoints = MemoryCheckpointStore()
    await checkpoints.save("it", Checkpoint(stale.token, None, epoch=0, saved_at=NOW))
    publisher = publisher_for(
        database,
        kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
        topics,
        checkpoints,
        MemoryLeaseStore(),
    )
    task = asyncio.create_task(publisher.run())
    await wait_until(lambda: publisher.ready)
    publisher.stop()
    await asyncio.wait_for(task, 10)

    records = await consume(
        kafka.bootstrap_servers,
        (topics.schedule, topics.notifications),
        lambda rs: len(rs) >= 2 * PARTITIONS + 10,
    )
    resyncs = [r for r in records if header(r, "ce_type") == b"stream.resync"]
    assert sorted((r.topic, r.partition) for r in resyncs) == sorted(
        (t, p) for t in (topics.schedule, topics.notifications) for p in range(PARTITIONS)
    )
    assert {r.key for r in resyncs} == {CONTROL_KEY.encode()}
    for partition in by_partition(records).values():
        # The resync comes first in every partition: clients refetch, then deltas follow.
        assert header(partition[0], "ce_type") == b"stream.resync"
    snapshot = {decode_event(r.value).subject for r in records if r.key != CONTROL_KEY.encode()}
    assert snapshot == {f"slots/s{n}" for n in range(10)}
