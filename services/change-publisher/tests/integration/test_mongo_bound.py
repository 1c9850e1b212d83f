"""The same scenarios bound to a real MongoDB replica set (skipped, with the reason, where
there is none): the Mongo change source, checkpoint store and lease store."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from change_publisher.adapters.mongo import (
    MongoChangeSource,
    MongoCheckpointStore,
    MongoLeaseStore,
)
from change_publisher.domain.mapping import ChangeMapper, DeadLetter, Publish
from change_publisher.ports import ChangeBatch, Checkpoint, Fenced, StreamPosition
from change_publisher.publisher import Publisher, PublisherOptions, Role
from slotstream_contracts.changes import ChangeEvent
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.events import EventType
from slotstream_testkit.kafka import KafkaEndpoint

from ..conftest import NOW, Docs
from .conftest import Topics, consume, epoch, header, kafka_producer

pytestmark = [pytest.mark.integration, pytest.mark.mongo]

Document = dict[str, Any]


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def db(mongo: AsyncMongoClient[Document]) -> AsyncIterator[AsyncDatabase[Document]]:
    name = f"publisher_test_{uuid.uuid4().hex[:8]}"
    database = mongo[name]
    for collection in (SLOTS, BOOKINGS, NOTIFICATIONS):
        await database.create_collection(collection)
    try:
        yield database
    finally:
        await mongo.drop_database(name)


def source_for(mongo: AsyncMongoClient[Document], db: AsyncDatabase[Document]) -> MongoChangeSource:
    return MongoChangeSource(mongo, db.name, (SLOTS, BOOKINGS, NOTIFICATIONS), max_await_ms=100)


async def read_until(stream: Any, done: Callable[[list[ChangeEvent]], bool]) -> list[ChangeEvent]:
    changes: list[ChangeEvent] = []
    for _ in range(100):
        batch: ChangeBatch = await stream.next_batch()
        changes.extend(batch.changes)
        if done(changes):
            break
    return changes


async def test_mongo_lease_store_hands_out_one_lease_with_growing_epochs(
    db: AsyncDatabase[Document],
) -> None:
    leases = MongoLeaseStore(db)
    a = await leases.acquire("stream", "a", ttl=30)
    assert a is not None
    assert a.epoch == 1
    assert await leases.acquire("stream", "b", ttl=30) is None
    renewed = await leases.renew(a, ttl=30)
    assert renewed is not None
    assert renewed.epoch == 1
    await leases.release(a)
    b = await leases.acquire("stream", "b", ttl=30)
    assert b is not None
    assert b.epoch == 2
    assert await leases.renew(a, ttl=30) is None
    short = await leases.acquire("other", "a", ttl=0.2)
    assert short is not None
    await asyncio.sleep(0.4)
    taken = await leases.acquire("other", "b", ttl=30)
    assert taken is not None
    assert taken.epoch == 2


async def test_mongo_checkpoint_store_fences_older_epochs(db: AsyncDatabase[Document]) -> None:
    store = MongoCheckpointStore(db)
    assert await store.load("s") is None
    await store.save("s", Checkpoint({"_data": "01"}, None, epoch=1, saved_at=NOW))
    await store.save("s", Checkpoint({"_data": "02"}, None, epoch=2, saved_at=NOW))
    with pytest.raises(Fenced):
        await store.save("s", Checkpoint({"_data": "03"}, None, epoch=1, saved_at=NOW))
    loaded = await store.load("s")
    assert loaded is not None
    assert (loaded.token, loaded.epoch) == ({"_data": "02"}, 2)


async def test_mongo_change_stream_maps_inserts_updates_tombstones_and_hard_deletes(
    mongo: AsyncMongoClient[Document], db: AsyncDatabase[Document]
) -> None:
    source = source_for(mongo, db)
    stream = await source.open(StreamPosition())
    try:
        await stream.next_batch()  # the stream is open from here on
        await db[SLOTS].insert_one(Docs.slot("s1", "i1"))
        await db[SLOTS].update_one(
            {"_id": "s1"}, {"$set": {"status": "deleted"}, "$inc": {"version": 1}}
        )
        await db[SLOTS].delete_one({"_id": "s1"})
        await db["elsewhere"].insert_one({"_id": "ignored"})
        # A watched write after the unwatched one: reading up to it reads past the
        # unwatched insert, so a stream that let it through would have delivered it first.
        await db[SLOTS].insert_one(Docs.slot("after-ignored", "i1"))
        changes = await read_until(
            stream, lambda cs: any(c.document_key == {"_id": "after-ignored"} for c in cs)
        )
    finally:
        await stream.aclose()
    assert [c.ns.coll for c in changes] == [SLOTS] * 4, [c.ns for c in changes]
    assert changes[-1].document_key == {"_id": "after-ignored"}
    mapper = ChangeMapper()
    outcomes = [mapper.map_change(c) for c in changes[:3]]
    assert isinstance(outcomes[0], Publish)
    assert outcomes[0].event.type is EventType.SLOT_CREATED
    assert isinstance(outcomes[1], Publish)
    assert outcomes[1].event.type is EventType.SLOT_DELETED
    assert outcomes[1].event.routing_key == "i1"
    assert isinstance(outcomes[2], DeadLetter)  # no pre-images on this collection


async def test_mongo_snapshot_then_stream_from_the_captured_time(
    mongo: AsyncMongoClient[Document], db: AsyncDatabase[Document]
) -> None:
    await db[SLOTS].insert_one(Docs.slot("s1"))
    source = source_for(mongo, db)
    part = await source.snapshot(SLOTS)
    assert [d["_id"] async for d in part.documents] == ["s1"]
    await db[SLOTS].insert_one(Docs.slot("s2"))
    stream = await source.open(StreamPosition(at=part.operation_time))
    try:
        # The start is inclusive: the copy's own last write may come again; s2 must come.
        changes = await read_until(stream, lambda cs: {"_id": "s2"} in [c.document_key for c in cs])
    finally:
        await stream.aclose()
    assert {"_id": "s2"} in [c.document_key for c in changes]


async def test_mongo_publisher_resumes_after_a_crash_and_hands_over(
    mongo: AsyncMongoClient[Document],
    db: AsyncDatabase[Document],
    kafka: KafkaEndpoint,
    topics: Topics,
) -> None:
    def publisher(instance: str) -> Publisher:
        return Publisher(
            PublisherOptions(
                stream_name="it",
                instance_id=instance,
                collections=(SLOTS, BOOKINGS, NOTIFICATIONS),
                checkpoint_interval=0.1,
                lease_ttl=1.0,
                backoff_initial=0.05,
                backoff_max=0.5,
            ),
            source=source_for(mongo, db),
            checkpoints=MongoCheckpointStore(db),
            leases=MongoLeaseStore(db),
            producer=kafka_producer(kafka.bootstrap_servers, kafka.supports_idempotence),
            router=topics.router,
        )

    a, b = publisher("a"), publisher("b")
    task_a = asyncio.create_task(a.run())
    for _ in range(200):
        if a.ready:
            break
        await asyncio.sleep(0.05)
    task_b = asyncio.create_task(b.run())
    await db[SLOTS].insert_many([Docs.slot(f"s{n}", f"i{n % 3}") for n in range(30)])
    await consume(kafka.bootstrap_servers, (topics.schedule,), lambda rs: len(rs) >= 30)
    task_a.cancel()  # a dies without releasing its lease
    with pytest.raises(asyncio.CancelledError):
        await task_a
    await db[SLOTS].insert_many([Docs.slot(f"t{n}", f"i{n % 3}") for n in range(30)])
    records = await consume(
        kafka.bootstrap_servers,
        (topics.schedule,),
        lambda rs: len({header(r, "ce_id") for r in rs}) >= 60,
        within=30,
    )
    assert b.role is Role.LEADER
    b.stop()
    await asyncio.wait_for(task_b, 10)
    assert len({header(r, "ce_id") for r in records}) == 60
    for partition in {r.partition for r in records}:
        epochs = [
            epoch(r) for r in sorted(records, key=lambda r: r.offset) if r.partition == partition
        ]
        assert epochs == sorted(epochs)
