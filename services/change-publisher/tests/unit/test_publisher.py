"""The delivery loop against fakes: order, checkpoints, failures, modes, leadership."""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import structlog
from aiokafka.errors import KafkaConnectionError
from bson import Binary

from change_publisher.adapters.memory import (
    MemoryChangeSource,
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryLeaseStore,
    MemoryProducer,
)
from change_publisher.domain.records import OutgoingRecord, Router
from change_publisher.ports import (
    Checkpoint,
    Fenced,
    PendingBatch,
    SourceUnavailable,
    StreamPosition,
)
from change_publisher.publisher import HistoryLostFatal, Publisher, Role
from slotstream_contracts.changes import OperationType, ResumeToken
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.topics import CONTROL_KEY, DEADLETTER_TOPIC, NOTIFICATIONS_TOPIC

from ..conftest import NOW, Docs, PublisherFactory


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def stop(publisher: Publisher, task: "asyncio.Task[None]") -> None:
    publisher.stop()
    await asyncio.wait_for(task, 5)


def types(records: Sequence[OutgoingRecord]) -> list[str]:
    return [r.kind for r in records]


async def checkpointed(checkpoints: MemoryCheckpointStore, token: ResumeToken) -> None:
    """Until the publisher's checkpoint is ``token`` (everything up to it acknowledged)."""
    await eventually(
        lambda: (c := checkpoints.checkpoints.get("test")) is not None and c.token == token
    )


async def history_gone(checkpoints: MemoryCheckpointStore) -> MemoryDatabase:
    """A database that keeps 2 changes, with 4 made since the stored checkpoint: resuming
    from it finds the history lost."""
    database = MemoryDatabase(retain=2)
    stale = database.insert(SLOTS, Docs.slot("s1"))
    for n in range(2, 5):
        database.insert(SLOTS, Docs.slot(f"s{n}"))
    await checkpoints.save("test", Checkpoint(stale.token, None, epoch=0, saved_at=NOW))
    return database


def ids(records: Sequence[OutgoingRecord]) -> list[str]:
    return [dict(r.headers)["ce_id"].decode() for r in records]


async def test_publishes_in_order_checkpoints_and_releases_the_lease_on_stop(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    leases: MemoryLeaseStore,
) -> None:
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready and publisher.role is Role.LEADER)
    database.insert(SLOTS, Docs.slot("s1", "i1"))
    database.update(SLOTS, "s1", {"status": "booked", "bookingId": "b1"})
    database.insert(BOOKINGS, Docs.booking("b1", "s1"))
    database.insert(NOTIFICATIONS, Docs.notification("n1", "u1"))
    database.update(NOTIFICATIONS, "n1", {"read": True})  # skipped
    last = database.insert(SLOTS, Docs.slot("s2", "i2", version=0))  # dead letter
    await checkpointed(checkpoints, last.token)
    await stop(publisher, task)

    assert types(producer.records) == [
        "slot.created",
        "slot.updated",
        "booking.created",
        "booking.created",
        "notification.created",
        "deadletter",
    ]
    # The booking names its student: it goes to the instructor's and to the student's
    # private channel (notifications topic), never to the public schedule topic.
    assert [r.key for r in producer.records] == [b"i1", b"i1", b"i1", b"u1", b"u1", b"i2"]
    assert {r.topic for r in producer.records if r.kind == "booking.created"} == {
        NOTIFICATIONS_TOPIC
    }
    assert producer.records[-1].topic == DEADLETTER_TOPIC
    assert leases.leases["test"].expires_at == 0  # released
    assert publisher.role is Role.STOPPED
    metrics = publisher.metrics
    assert metrics.events.labels("slot.created")._value.get() == 1
    assert metrics.skipped._value.get() == 1
    assert metrics.dead_letters._value.get() == 1


async def test_kafka_failure_resends_from_the_last_acknowledged_change(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    first = database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: len(producer.records) == 1)
    await eventually(
        lambda: (
            publisher.last_checkpoint is not None and publisher.last_checkpoint.token == first.token
        )
    )
    producer.fail_next(ConnectionError("broker gone"))
    database.insert(SLOTS, Docs.slot("s2"))
    database.insert(SLOTS, Docs.slot("s3"))
    await eventually(lambda: len(producer.records) >= 3)
    await stop(publisher, task)
    subjects = [orjson.loads(r.value)["subject"] for r in producer.records]
    assert subjects == ["slots/s1", "slots/s2", "slots/s3"]
    assert publisher.metrics.kafka_errors._value.get() == 1


class HeldProducer(MemoryProducer):
    """Acknowledges nothing until ``release()``: Kafka is slow."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[Any]] = []

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.records.extend(records)
        self.pending.append(future)
        return [PendingBatch(future, range(len(records)))]

    def release(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)


async def test_bounded_in_flight_stops_pulling_until_acknowledged(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = HeldProducer()
    source = MemoryChangeSource(database, limit=2, wait=0.05)
    publisher = make_publisher(producer=producer, source=source, max_in_flight=3)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    for n in range(10):
        database.insert(SLOTS, Docs.slot(f"s{n}"))
    await eventually(lambda: len(producer.records) >= 3)
    await asyncio.sleep(0.2)
    assert len(producer.records) == 4  # two batches of two, then it waits
    assert publisher.in_flight == 4
    while len(producer.records) < 10:
        producer.release()
        await asyncio.sleep(0.01)
    producer.release()
    await stop(publisher, task)
    assert len(producer.records) == 10


async def test_invalidate_checkpoints_and_reopens_after_it(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    source = MemoryChangeSource(database, wait=0.05)
    publisher = make_publisher(source=source)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    invalidate = database.log.record(OperationType.INVALIDATE, SLOTS, "")
    await eventually(lambda: len(source.opened) == 2)
    assert source.opened[1] == StreamPosition(after=invalidate.token)
    assert publisher.last_checkpoint is not None
    assert publisher.last_checkpoint.token == invalidate.token
    await stop(publisher, task)


async def test_history_lost_resyncs_every_partition_then_snapshots(
    make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    database = MemoryDatabase(retain=3)
    stale = database.insert(SLOTS, Docs.slot("s1"))
    for n in range(2, 6):
        database.insert(SLOTS, Docs.slot(f"s{n}", f"i{n}"))
    await checkpoints.save("test", Checkpoint(stale.token, None, epoch=0, saved_at=NOW))
    producer = MemoryProducer(partitions=3)
    publisher = make_publisher(producer=producer, source=MemoryChangeSource(database, wait=0.05))
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(BOOKINGS, Docs.booking("b9"))
    await eventually(lambda: "booking.created" in types(producer.records))
    await stop(publisher, task)

    resyncs = [r for r in producer.records if r.kind == "stream.resync"]
    assert {(r.topic, r.partition) for r in resyncs} == {
        (topic, p)
        for topic in ("slotstream.schedule.v1", "slotstream.notifications.v1")
        for p in range(3)
    }
    assert all(r.key == CONTROL_KEY.encode() for r in resyncs)
    created = {
        orjson.loads(r.value)["subject"] for r in producer.records if r.kind == "slot.created"
    }
    assert created == {f"slots/s{n}" for n in range(1, 6)}  # at least once each
    assert publisher.metrics.history_lost._value.get() == 1


async def test_history_lost_under_policy_fail_stops_with_an_error(
    make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    database = await history_gone(checkpoints)
    publisher = make_publisher(
        source=MemoryChangeSource(database, wait=0.05), history_lost_policy="fail"
    )
    with pytest.raises(HistoryLostFatal):
        await asyncio.wait_for(publisher.run(), 5)


async def test_snapshot_mode_copies_documents_then_streams_from_before_the_copy(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    database.insert(SLOTS, Docs.slot("s1"))
    database.insert(NOTIFICATIONS, Docs.notification("n1"))
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer, start_mode="snapshot")
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(SLOTS, Docs.slot("s2"))
    await eventually(lambda: len(producer.records) >= 3)
    await stop(publisher, task)
    subjects = [orjson.loads(r.value)["subject"] for r in producer.records]
    assert subjects[:2] == ["slots/s1", "notifications/n1"]
    assert "slots/s2" in subjects
    assert "stream.resync" not in types(producer.records)


async def test_a_snapshot_copies_a_booking_to_both_private_channels_only(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    database.insert(BOOKINGS, Docs.booking("b1", "s1"))
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer, start_mode="snapshot")
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: len(producer.records) >= 2)
    await stop(publisher, task)
    bookings = [r for r in producer.records if r.kind == "booking.created"]
    # At least once each (the stream that follows the copy may repeat it).
    assert {(r.topic, r.key) for r in bookings} == {
        (NOTIFICATIONS_TOPIC, b"i1"),
        (NOTIFICATIONS_TOPIC, b"u1"),
    }


async def test_latest_mode_skips_the_past(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    database.insert(SLOTS, Docs.slot("old"))
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer, start_mode="latest")
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(SLOTS, Docs.slot("new"))
    await eventually(lambda: len(producer.records) == 1)
    await stop(publisher, task)
    assert orjson.loads(producer.records[0].value)["subject"] == "slots/new"


async def test_fenced_checkpoint_stops_production(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a checkpoint is refused for a newer epoch, not one more record is produced: the
    instance steps down to standby and backs off before it asks for the lease again (it
    used to re-acquire, re-snapshot and be fenced again in a hot loop)."""
    producer = MemoryProducer()
    # The back-off after a fence is a random half to all of lease_ttl: with the fixture's
    # 2 s it could end inside the second of changes below on a slow machine (the instance
    # then took the lease again and was fenced a second time). 30 s keeps it out of reach.
    publisher = make_publisher(producer=producer, lease_ttl=30.0)
    produced_at_fence: list[int] = []
    save = checkpoints.save

    async def watched_save(name: str, checkpoint: Checkpoint) -> None:
        try:
            await save(name, checkpoint)
        except Fenced:
            produced_at_fence.append(len(producer.records))
            raise

    monkeypatch.setattr(checkpoints, "save", watched_save)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready and publisher.role is Role.LEADER)
    # A newer leader (epoch 99) wrote the checkpoint: this one must step down.
    await checkpoints.save("test", Checkpoint({"_data": "FF"}, None, epoch=99, saved_at=NOW))
    database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: produced_at_fence != [])
    await eventually(lambda: publisher.role is Role.STANDBY)
    for number in range(20):  # changes keep coming; a fenced instance must ignore them
        database.insert(SLOTS, Docs.slot(f"later-{number}"))
        await asyncio.sleep(0.05)  # 20 checkpoint intervals in all
    assert len(producer.records) - produced_at_fence[0] == 0
    assert len(checkpoints.refused) == 1
    assert publisher.role is Role.STANDBY
    assert publisher.metrics.leader._value.get() == 0
    assert not producer.started  # what it had in flight is given up: none of it lands later
    await stop(publisher, task)
    stored = checkpoints.checkpoints["test"]
    assert (stored.epoch, stored.token) == (99, {"_data": "FF"})


async def test_standby_takes_over_when_the_leader_is_cut_off(
    database: MemoryDatabase, make_publisher: PublisherFactory, leases: MemoryLeaseStore
) -> None:
    leader_out, standby_out = MemoryProducer(), MemoryProducer()
    leader = make_publisher(producer=leader_out, instance="a", lease_ttl=1.0)
    standby = make_publisher(producer=standby_out, instance="b", lease_ttl=1.0)
    tasks = [asyncio.create_task(leader.run())]
    await eventually(lambda: leader.ready)
    tasks.append(asyncio.create_task(standby.run()))
    await eventually(lambda: standby.role is Role.STANDBY)
    database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: len(leader_out.records) == 1)
    leases.cut_off("a")
    await eventually(lambda: standby.role is Role.LEADER, within=5)
    assert leader.role is not Role.LEADER
    database.insert(SLOTS, Docs.slot("s2"))
    await eventually(lambda: any(b"slots/s2" in r.value for r in standby_out.records))
    assert not any(b"slots/s2" in r.value for r in leader_out.records)
    for publisher, task in zip((leader, standby), tasks, strict=True):
        await stop(publisher, task)
    assert [g.holder for g in leases.grants] == ["a", "b"]


async def test_a_leader_that_loses_its_lease_stops_reporting_its_lag_and_checkpoint_age(
    database: MemoryDatabase, make_publisher: PublisherFactory, leases: MemoryLeaseStore
) -> None:
    """A former leader's lag and checkpoint age describe a stream it no longer reads: shown
    beside the new leader's they misled the dashboard, and the lag alert needed a guard.
    A standby exports neither series (absent, not 0: 0 would read as "no lag")."""
    leader = make_publisher(producer=MemoryProducer(), instance="a", lease_ttl=1.0)
    standby = make_publisher(producer=MemoryProducer(), instance="b", lease_ttl=1.0)
    tasks = [asyncio.create_task(leader.run())]
    await eventually(lambda: leader.ready)
    tasks.append(asyncio.create_task(standby.run()))
    await eventually(lambda: standby.role is Role.STANDBY)
    term_series = ("publisher_lag_seconds", "publisher_checkpoint_age_seconds")

    def reported(publisher: Publisher) -> list[float | None]:
        """The term's series, and the checkpoint age /readyz and /healthz show."""
        scraped = [publisher.metrics.registry.get_sample_value(name) for name in term_series]
        return [*scraped, publisher.status()["checkpointAgeSeconds"]]

    assert reported(standby) == [None, None, None]
    database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: (reported(leader)[0] or 0.0) > 0)
    leases.cut_off("a")
    await eventually(lambda: standby.role is Role.LEADER, within=5)
    assert reported(leader) == [None, None, None]
    assert None not in reported(standby)
    for publisher, task in zip((leader, standby), tasks, strict=True):
        await stop(publisher, task)


async def test_latest_start_is_pinned_so_a_failure_before_any_ack_loses_nothing(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = MemoryProducer()
    producer.fail_next(ConnectionError("broker gone"))
    publisher = make_publisher(producer=producer, start_mode="latest", checkpoint_interval=60)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: len(producer.records) == 1)
    await stop(publisher, task)
    assert orjson.loads(producer.records[0].value)["subject"] == "slots/s1"


class FlakySource(MemoryChangeSource):
    """Refuses to open while ``down`` (a database that is not reachable)."""

    def __init__(self, database: MemoryDatabase) -> None:
        super().__init__(database, wait=0.05)
        self.down = True
        self.attempts = 0

    async def open(self, position: StreamPosition) -> Any:
        self.attempts += 1
        if self.down:
            raise SourceUnavailable("connection refused")
        return await super().open(position)


async def test_unreachable_source_is_retried_with_backoff_then_streams(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    source = FlakySource(database)
    producer = MemoryProducer()
    publisher = make_publisher(source=source, producer=producer, backoff_max=0.1)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: source.attempts >= 2)
    await asyncio.sleep(0.3)
    assert not publisher.ready
    assert source.attempts < 20  # backing off, not spinning
    source.down = False
    await eventually(lambda: publisher.ready)
    database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: len(producer.records) == 1)
    await stop(publisher, task)
    assert publisher.metrics.source_errors._value.get() >= 2


async def test_an_event_too_large_for_kafka_is_dead_lettered_without_its_documents(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer, max_record_bytes=800)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(NOTIFICATIONS, Docs.notification("n1", message="x" * 500, pad="y" * 5_000))
    database.insert(NOTIFICATIONS, Docs.notification("n2"))
    await eventually(lambda: len(producer.records) == 2)
    await stop(publisher, task)
    dead, ok = producer.records
    assert dead.topic == DEADLETTER_TOPIC
    assert dead.key == b"u1"
    body = orjson.loads(dead.value)
    assert "fullDocument" not in body["change"]
    assert body["change"]["documentKey"] == {"_id": "n1"}
    assert "exceeds" in body["error"]
    assert ok.kind == "notification.created"


async def dead_lettered_then_published(
    database: MemoryDatabase, make_publisher: PublisherFactory, bad: dict[str, Any]
) -> Any:
    """Insert the slot ``bad`` of instructor i1, then a valid one of i2, into a running
    publisher: the first must be dead-lettered (returned) and the stream go on."""
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(SLOTS, bad)
    database.insert(SLOTS, Docs.slot("s2", "i2"))
    await eventually(lambda: task.done() or len(producer.records) == 2)
    assert not task.done(), f"the publisher stopped: {task.exception()!r}"
    await stop(publisher, task)
    dead, ok = producer.records
    assert (dead.topic, dead.key) == (DEADLETTER_TOPIC, b"i1")
    assert ok.kind == "slot.created"
    return dead


async def test_an_invalid_document_holding_binary_data_is_dead_lettered_and_the_stream_goes_on(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """BSON binary (a UUID another driver stored as subtype 4, raw bytes) is seldom UTF-8:
    the dead letter shows it as hex, where it used to fail to encode and crash the
    publisher, which then failed on the same change after every restart."""
    uuid = bytes.fromhex("9f1c3e5a7b2d4c6e8f0a1b2c3d4e5f60")
    bad = Docs.slot("s1", "i1", version=0, legacyId=Binary(uuid, 4))
    dead = await dead_lettered_then_published(database, make_publisher, bad)
    assert orjson.loads(dead.value)["change"]["fullDocument"]["legacyId"] == uuid.hex()


async def test_a_date_out_of_range_in_utc_is_dead_lettered_and_the_stream_goes_on(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """A date stored as text whose offset takes it past year 9999 in UTC (.NET's
    ``DateTimeOffset.MaxValue`` with a local offset, say) used to raise OverflowError out
    of the mapping: the publisher stopped, and failed on the same change after every
    restart."""
    bad = Docs.slot("s1", "i1", end="9999-12-31T23:59:59-05:00")
    dead = await dead_lettered_then_published(database, make_publisher, bad)
    assert "end" in orjson.loads(dead.value)["error"]


async def test_an_event_of_a_collection_without_a_topic_is_dead_lettered(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = MemoryProducer()
    router = Router({SLOTS: "slotstream.schedule.v1"}, DEADLETTER_TOPIC)
    publisher = make_publisher(producer=producer, router=router)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    database.insert(BOOKINGS, Docs.booking("b1", "s1"))
    database.insert(SLOTS, Docs.slot("s1", "i1"))
    await eventually(lambda: len(producer.records) == 2)
    await stop(publisher, task)
    dead, ok = producer.records
    assert (dead.topic, dead.key) == (DEADLETTER_TOPIC, b"i1")
    assert "no topic for collection 'bookings'" in orjson.loads(dead.value)["error"]
    assert (ok.topic, ok.kind) == ("slotstream.schedule.v1", "slot.created")


async def test_invalidate_inside_a_batch_publishes_before_it_and_reopens_after_it(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    source = MemoryChangeSource(database, wait=0.05)
    producer = MemoryProducer()
    publisher = make_publisher(source=source, producer=producer)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    # Written together, so the source returns them in one batch.
    database.insert(SLOTS, Docs.slot("s1", "i1"))
    invalidate = database.log.record(OperationType.INVALIDATE, SLOTS, "")
    database.insert(SLOTS, Docs.slot("s2", "i2"))
    await eventually(lambda: len(producer.records) == 2)
    await stop(publisher, task)
    assert source.opened[1] == StreamPosition(after=invalidate.token)
    assert [r.key for r in producer.records] == [b"i1", b"i2"]


async def test_unready_while_kafka_acknowledges_nothing_ready_again_after(
    make_publisher: PublisherFactory, database: MemoryDatabase
) -> None:
    """A partition hides behind the producer's long retries: readiness must not."""
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer, ack_stall_seconds=0.2)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready)
        producer.hold()
        database.insert(SLOTS, Docs.slot("s1"))
        await eventually(lambda: producer.records != [])
        await eventually(lambda: not publisher.ready)
        producer.release()
        await eventually(lambda: publisher.ready)
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)


class PartitionsFailOnce(MemoryProducer):
    """The first metadata request for a topic's partitions fails (a broker restarting)."""

    def __init__(self, partitions: int) -> None:
        super().__init__(partitions)
        self.asked = 0

    async def partitions(self, topic: str) -> list[int]:
        self.asked += 1
        if self.asked == 1:
            raise KafkaConnectionError("metadata request failed")
        return await super().partitions(topic)


async def test_a_kafka_error_while_announcing_a_resync_is_retried(
    make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    database = await history_gone(checkpoints)
    producer = PartitionsFailOnce(partitions=2)
    publisher = make_publisher(producer=producer, source=MemoryChangeSource(database, wait=0.05))
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready or task.done())
        assert not task.done()
    finally:
        await stop(publisher, task)
    resyncs = {(r.topic, r.partition) for r in producer.records if r.kind == "stream.resync"}
    assert len(resyncs) == 4  # every partition of both data topics
    assert publisher.metrics.kafka_errors._value.get() == 1


async def test_a_source_refused_for_hours_is_still_retried(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """1,100 refusals in a row: about three hours at the default backoff (15 s). The
    exponent of the backoff used to overflow a float after 1,024 of them."""
    source = FlakySource(database)
    publisher = make_publisher(source=source, backoff_initial=0.0, backoff_max=0.0)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: source.attempts >= 1100 or task.done(), within=60)
        assert not task.done()
        source.down = False
        await eventually(lambda: publisher.ready)
    finally:
        await stop(publisher, task)


async def test_latest_mode_ignores_the_stored_checkpoint_when_the_first_open_fails(
    database: MemoryDatabase, make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    """START_MODE=latest after an outage: the backlog behind an old checkpoint stays
    unpublished even if the source refuses the first open."""
    old = database.insert(SLOTS, Docs.slot("old"))
    for n in range(3):
        database.insert(SLOTS, Docs.slot(f"backlog-{n}"))
    await checkpoints.save("test", Checkpoint(old.token, None, epoch=0, saved_at=NOW))
    source = FlakySource(database)
    producer = MemoryProducer()
    publisher = make_publisher(source=source, producer=producer, start_mode="latest")
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: source.attempts >= 1)
        source.down = False
        await eventually(lambda: publisher.ready)
        database.insert(SLOTS, Docs.slot("new"))
        await eventually(lambda: producer.records != [])
    finally:
        await stop(publisher, task)
    assert [orjson.loads(r.value)["subject"] for r in producer.records] == ["slots/new"]
    assert source.opened == [StreamPosition()]


async def test_a_stop_gives_up_what_kafka_never_acknowledges_and_hands_the_lease_over(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    leases: MemoryLeaseStore,
) -> None:
    """Kafka acknowledging nothing with the idempotent producer (the default): aiokafka
    retries a batch forever and never fails it."""
    stuck = MemoryProducer()
    leader = make_publisher(producer=stuck, lease_ttl=1.0, stop_drain_seconds=0.5)
    task = asyncio.create_task(leader.run())
    await eventually(lambda: leader.ready)
    stuck.hold()
    change = database.insert(SLOTS, Docs.slot("s1"))
    await eventually(lambda: stuck.records != [])
    started = asyncio.get_running_loop().time()
    leader.stop()  # SIGTERM
    done, _ = await asyncio.wait({task}, timeout=3)
    if not done:
        stuck.release()
        await asyncio.wait_for(task, 5)
    assert done, "not stopped 3 s after the stop"
    assert asyncio.get_running_loop().time() - started >= 0.5  # it did wait for Kafka
    assert leader.role is Role.STOPPED
    assert leases.leases["test"].expires_at == 0  # released, not left to expire
    assert not stuck.started  # the producer stopped too: nothing more reaches Kafka
    stored = checkpoints.checkpoints["test"]
    assert stored.token != change.token  # never acknowledged, so never checkpointed
    # The next leader takes over at once and publishes the change given up (at least once).
    successor_out = MemoryProducer()
    successor = make_publisher(producer=successor_out, instance="p2", lease_ttl=1.0)
    successor_task = asyncio.create_task(successor.run())
    try:
        await eventually(lambda: successor_out.records != [], within=2)
    finally:
        await stop(successor, successor_task)
    assert orjson.loads(successor_out.records[0].value)["subject"] == "slots/s1"


class SilentKafka(MemoryProducer):
    """The idempotent producer against a Kafka that may stop answering: while ``answering``
    is off a batch is neither acknowledged nor ever failed; ``stop()`` gives the rest up
    (like the adapter) and a stopped producer refuses sends. ``delivered``: what Kafka
    stored, in the order it stored it."""

    def __init__(self) -> None:
        super().__init__()
        self.answering = True
        self.delivered: list[OutgoingRecord] = []
        self.unanswered: list[tuple[asyncio.Future[Any], Sequence[OutgoingRecord]]] = []
        self.stops = 0

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        if not self.started:
            raise RuntimeError("producer not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.records.extend(records)
        self.unanswered.append((future, records))
        if self.answering:
            self.answer()
        return [PendingBatch(future, range(len(records)))]

    def answer(self) -> None:
        self.answering = True
        unanswered, self.unanswered = self.unanswered, []
        for future, records in unanswered:
            if not future.done():
                self.delivered.extend(records)
                future.set_result(None)

    async def stop(self, drain_seconds: float) -> None:  # noqa: ARG002 - gives up at once
        self.stops += 1
        self.started = False
        unanswered, self.unanswered = self.unanswered, []
        for future, _ in unanswered:
            if not future.done():
                future.set_exception(TimeoutError("given up"))


def subjects_and_epochs(records: Sequence[OutgoingRecord]) -> list[tuple[str, int]]:
    return [
        (orjson.loads(r.value)["subject"], int(dict(r.headers)["publisher_epoch"])) for r in records
    ]


async def test_a_lost_lease_gives_up_what_kafka_has_not_acknowledged_and_resends_it_next_term(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    leases: MemoryLeaseStore,
) -> None:
    """The idempotent producer never fails a batch: records a deposed leader left in it
    would land whenever Kafka answers again, after the next leader's (a higher
    ``publisher_epoch`` followed by a lower one). They are given up when the lease is lost,
    and the next term starts the producer again and re-sends them from the checkpoint."""
    kafka = SilentKafka()
    publisher = make_publisher(producer=kafka, lease_ttl=1.0)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready and publisher.role is Role.LEADER)
        first = database.insert(SLOTS, Docs.slot("s0"))
        await checkpointed(checkpoints, first.token)
        kafka.answering = False
        second = database.insert(SLOTS, Docs.slot("s1"))
        await eventually(lambda: kafka.unanswered != [])
        in_flight = [future for future, _ in kafka.unanswered]
        leases.cut_off("p1")  # renewals fail: it stops leading LEASE_TTL/2 after the last
        await eventually(lambda: all(future.done() for future in in_flight), within=3)
        assert publisher.role is not Role.LEADER
        assert kafka.stops == 1
        assert not kafka.started
        kafka.answer()  # Kafka is back: nothing of the deposed term is left to land
        assert kafka.delivered == kafka.records[:1]
        leases.reconnect("p1")  # leads again (same epoch: its lease had not expired yet)
        await checkpointed(checkpoints, second.token)  # a stopped producer refuses sends
    finally:
        await stop(publisher, task)
    # s1 was produced twice (given up, then re-read from the checkpoint), stored once.
    assert [subject for subject, _ in subjects_and_epochs(kafka.records)] == [
        "slots/s0",
        "slots/s1",
        "slots/s1",
    ]
    assert subjects_and_epochs(kafka.delivered) == [("slots/s0", 1), ("slots/s1", 1)]


async def test_the_checkpoint_age_grows_while_no_checkpoint_can_be_saved(
    database: MemoryDatabase,
    checkpoints: MemoryCheckpointStore,
    make_publisher: PublisherFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``checkpointAgeSeconds`` (``publisher_checkpoint_age_seconds``) is what an operator
    alerts on: a store that refuses every save must show a growing age, not 0 (on main it
    read 0 until a first checkpoint was saved: for ever, if none ever was)."""

    async def refuse(_name: str, _checkpoint: Any) -> None:
        raise OSError("checkpoint store unavailable")

    monkeypatch.setattr(checkpoints, "save", refuse)
    publisher = make_publisher(checkpoint_interval=0.05)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.streaming)
    database.insert(SLOTS, Docs.slot("s1", "i1"))
    await asyncio.sleep(0.5)
    assert publisher.status()["checkpointAgeSeconds"] >= 0.3
    await stop(publisher, task)


async def test_notifications_deleted_by_the_ttl_index_reach_nobody(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """The booking-api's TTL index deletes notifications older than the retention: each
    deletion is a ``delete`` change, with the notification as it was when the collection
    has pre-images (as deployed) and without it otherwise. Users were told of it long ago:
    nothing is produced (no event, no dead letter for ``PublisherDeadLetters`` to count),
    nothing is logged, and the checkpoint moves past the deletions."""
    # Written (and published) long before this run of the publisher.
    database.collections.setdefault(NOTIFICATIONS, {}).update(
        n1=Docs.notification("n1", "u1"), n2=Docs.notification("n2", "u2")
    )
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(publisher.run())
        await eventually(lambda: publisher.ready and publisher.role is Role.LEADER)
        database.delete(NOTIFICATIONS, "n1", pre_image=True)
        last = database.delete(NOTIFICATIONS, "n2", pre_image=False)
        await eventually(
            lambda: (c := publisher.last_checkpoint) is not None and c.token == last.token
        )
        await stop(publisher, task)
    assert producer.records == []
    assert publisher.metrics.dead_letters._value.get() == 0
    assert publisher.metrics.skipped._value.get() == 2
    assert [e for e in logs if e["log_level"] in ("warning", "error", "critical")] == []


# -- structural changes: documents that vanish without a ``delete`` each -----------------

SCHEDULE = "slotstream.schedule.v1"
WATCHED = (SLOTS, BOOKINGS, NOTIFICATIONS)


def resyncs_of(records: Sequence[OutgoingRecord]) -> list[tuple[str, int | None, str]]:
    """(topic, partition, reason) of every ``stream.resync`` record, in send order."""
    return [
        (r.topic, r.partition, orjson.loads(r.value)["data"]["reason"])
        for r in records
        if r.kind == "stream.resync"
    ]


@asynccontextmanager
async def watching_publisher(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> AsyncIterator[tuple[MemoryProducer, MemoryChangeSource, Publisher]]:
    """A running publisher of the watched collections (two partitions per topic), ready."""
    producer = MemoryProducer(partitions=2)
    source = MemoryChangeSource(database, wait=0.05, collections=WATCHED)
    publisher = make_publisher(producer=producer, source=source)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready)
        yield producer, source, publisher
    finally:
        await stop(publisher, task)


async def test_a_restore_from_a_backup_tells_every_reader_of_the_collection_to_refetch(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
) -> None:
    """``mongorestore --drop``: a ``drop`` of slots, then the backup's inserts. The slots
    that are not in the backup get no ``slot.deleted``: without a resync between the two,
    every open schedule keeps showing them."""
    async with watching_publisher(database, make_publisher) as (producer, source, publisher):
        database.insert(SLOTS, Docs.slot("gone", "i1"))
        database.insert(NOTIFICATIONS, Docs.notification("n1", "u1"))
        database.drop_collection(SLOTS)
        restored = database.insert(SLOTS, Docs.slot("kept", "i2"))
        await checkpointed(checkpoints, restored.token)

    schedule = [(r.kind, r.partition) for r in producer.records if r.topic == SCHEDULE]
    # after the change before the drop, before the restore's inserts, on every partition
    assert [kind for kind, _ in schedule] == [
        "slot.created",
        "stream.resync",
        "stream.resync",
        "slot.created",
    ]
    resyncs = resyncs_of(producer.records)
    assert {(topic, partition) for topic, partition, _ in resyncs} == {(SCHEDULE, 0), (SCHEDULE, 1)}
    assert all(reason.startswith("collection-dropped") for _, _, reason in resyncs)
    assert all(r.key == CONTROL_KEY.encode() for r in producer.records if r.kind == "stream.resync")
    assert publisher.metrics.resyncs.labels("collection-dropped")._value.get() == 1
    assert publisher.metrics.skipped._value.get() == 0


@pytest.mark.parametrize(
    ("renamed", "to"),
    [
        pytest.param("slots_reload", SLOTS, id="a reload renamed over slots"),
        pytest.param(SLOTS, "slots_old", id="slots renamed away"),
    ],
)
async def test_a_collection_renamed_over_or_away_from_a_watched_one_resyncs_its_readers(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    renamed: str,
    to: str,
) -> None:
    async with watching_publisher(database, make_publisher) as (producer, source, publisher):
        database.insert(SLOTS, Docs.slot("s1", "i1"))
        database.insert("slots_reload", Docs.slot("s2", "i2"))  # not watched: unseen
        rename = database.rename_collection(renamed, to)
        await checkpointed(checkpoints, rename.token)
    resyncs = resyncs_of(producer.records)
    assert {(topic, partition) for topic, partition, _ in resyncs} == {(SCHEDULE, 0), (SCHEDULE, 1)}
    assert all(reason.startswith("collection-renamed") for _, _, reason in resyncs)
    assert types(producer.records)[0] == "slot.created"


async def test_a_dropped_database_resyncs_every_data_topic_once_then_streams_on(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """Mongo writes a ``drop`` per collection, ``dropDatabase``, then ``invalidate``: the
    readers are told once, and the invalidate that ends the stream adds no second resync."""
    async with watching_publisher(database, make_publisher) as (producer, source, publisher):
        database.insert(SLOTS, Docs.slot("s1", "i1"))
        database.insert(BOOKINGS, Docs.booking("b1", "s1"))
        database.insert(NOTIFICATIONS, Docs.notification("n1", "u1"))
        database.drop()
        database.insert(SLOTS, Docs.slot("s2", "i2"))
        await eventually(
            lambda: types(producer.records)[-1:] == ["slot.created"] and len(source.opened) == 2
        )
    resyncs = resyncs_of(producer.records)
    assert sorted((topic, partition) for topic, partition, _ in resyncs) == [
        (topic, p) for topic in sorted((NOTIFICATIONS_TOPIC, SCHEDULE)) for p in range(2)
    ]
    assert all(reason.startswith("database-dropped") for _, _, reason in resyncs)
    kinds = types(producer.records)
    assert kinds.index("stream.resync") > kinds.index("notification.created")
    assert kinds[-1] == "slot.created"


async def test_a_resync_for_a_drop_is_checkpointed_only_once_kafka_has_it(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
) -> None:
    """A crash after the drop was read but before its resync was acknowledged must not
    pass the drop: the next leader reads it again and tells the readers."""
    stuck = MemoryProducer(partitions=2)
    source = MemoryChangeSource(database, wait=0.05, collections=WATCHED)
    leader = make_publisher(producer=stuck, source=source, lease_ttl=1.0, stop_drain_seconds=0.2)
    task = asyncio.create_task(leader.run())
    await eventually(lambda: leader.ready)
    before = database.insert(SLOTS, Docs.slot("s1", "i1"))
    await checkpointed(checkpoints, before.token)
    stuck.hold()
    drop = database.drop_collection(SLOTS)
    try:
        await eventually(lambda: "stream.resync" in types(stuck.records), within=2)
        await asyncio.sleep(0.3)  # several checkpoint intervals
        assert checkpoints.checkpoints["test"].token == before.token
    finally:
        await stop(leader, task)
    assert checkpoints.checkpoints["test"].token == before.token

    successor_out = MemoryProducer(partitions=2)
    successor = make_publisher(
        producer=successor_out,
        source=MemoryChangeSource(database, wait=0.05, collections=WATCHED),
        instance="p2",
        lease_ttl=1.0,
    )
    successor_task = asyncio.create_task(successor.run())
    try:
        await checkpointed(checkpoints, drop.token)
    finally:
        await stop(successor, successor_task)
    assert {(t, p) for t, p, _ in resyncs_of(successor_out.records)} == {
        (SCHEDULE, 0),
        (SCHEDULE, 1),
    }


async def test_a_dropped_collection_that_feeds_no_topic_resyncs_nobody(
    database: MemoryDatabase,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
) -> None:
    producer = MemoryProducer()
    publisher = make_publisher(producer=producer)  # a source without a collection filter
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready)
        drop = database.drop_collection("audit")
        await checkpointed(checkpoints, drop.token)
    finally:
        await stop(publisher, task)
    assert producer.records == []
    assert publisher.metrics.skipped._value.get() == 1
