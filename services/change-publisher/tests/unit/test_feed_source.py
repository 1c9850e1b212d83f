"""The HTTP feed source against a fake booking-api feed speaking the documented protocol."""

import asyncio

import httpx
import orjson
import pytest

from change_publisher.adapters.feed import FeedChangeSource
from change_publisher.adapters.memory import (
    MemoryCheckpointStore,
    MemoryDatabase,
    MemoryProducer,
)
from change_publisher.ports import HistoryLost, SourceUnavailable, StreamPosition
from slotstream_contracts.documents import BOOKINGS, SLOTS

from ..conftest import TOKEN, Docs, FakeFeed, PublisherFactory
from .test_publisher import checkpointed, eventually, ids, stop


def feed_source(feed: FakeFeed, token: str = TOKEN) -> FeedChangeSource:
    return FeedChangeSource(
        "http://booking-api", token, limit=2, wait=0.05, transport=httpx.MockTransport(feed)
    )


async def test_reads_changes_in_batches_after_a_token(database: MemoryDatabase) -> None:
    first = database.insert(SLOTS, Docs.slot("s1"))
    database.insert(SLOTS, Docs.slot("s2"))
    database.insert(SLOTS, Docs.slot("s3"))
    feed = FakeFeed(database)
    source = feed_source(feed)
    stream = await source.open(StreamPosition(after=first.token))
    batch = await stream.next_batch()
    assert [c.document_key for c in batch.changes] == [{"_id": "s2"}, {"_id": "s3"}]
    assert batch.resume_token == batch.changes[-1].token
    idle = await stream.next_batch()
    assert idle.changes == []
    assert idle.resume_token == database.log.latest_token
    assert feed.requests[0].url.params["after"] == first.token["_data"]
    assert feed.requests[0].headers["X-Internal-Token"] == TOKEN
    await source.close()


async def test_latest_starts_after_the_newest_change(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot("old"))
    source = feed_source(FakeFeed(database))
    stream = await source.open(StreamPosition())
    assert (await stream.next_batch()).changes == []
    database.insert(SLOTS, Docs.slot("new"))
    batch = await stream.next_batch()
    assert [c.document_key for c in batch.changes] == [{"_id": "new"}]
    await source.close()


async def test_operation_time_position_and_snapshot(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot("s1"))
    source = feed_source(FakeFeed(database))
    part = await source.snapshot(SLOTS)
    assert [d["_id"] async for d in part.documents] == ["s1"]
    database.insert(BOOKINGS, Docs.booking("b1"))
    stream = await source.open(StreamPosition(at=part.operation_time))
    keys = [c.document_key for c in (await stream.next_batch()).changes]
    assert {"_id": "b1"} in keys
    await source.close()


async def test_lost_history_foreign_tokens_and_refusals(database: MemoryDatabase) -> None:
    log_small = MemoryDatabase(retain=2)
    rolled_over = log_small.insert(SLOTS, Docs.slot("s0")).token
    for n in range(1, 5):
        log_small.insert(SLOTS, Docs.slot(f"s{n}"))
    source = feed_source(FakeFeed(log_small))
    with pytest.raises(HistoryLost, match="older than the history"):
        await (await source.open(StreamPosition(after=rolled_over))).next_batch()
    before_restart = database.insert(SLOTS, Docs.slot("s0")).token  # another run's log
    with pytest.raises(HistoryLost, match="another run"):
        await (await source.open(StreamPosition(after=before_restart))).next_batch()
    with pytest.raises(HistoryLost, match="not a resume token"):  # one it never issued
        await (await source.open(StreamPosition(after={"_data": "00000000000000FF"}))).next_batch()
    refused = feed_source(FakeFeed(database), token="wrong")
    with pytest.raises(SourceUnavailable, match="403"):
        await (await refused.open(StreamPosition())).next_batch()
    down = FeedChangeSource(
        "http://booking-api", TOKEN, transport=httpx.MockTransport(_refuse_connection)
    )
    with pytest.raises(SourceUnavailable):
        await (await down.open(StreamPosition())).next_batch()
    for s in (source, refused, down):
        await s.close()


async def test_a_restarted_booking_api_makes_the_publisher_resync_not_skip(
    make_publisher: PublisherFactory, checkpoints: MemoryCheckpointStore
) -> None:
    """The booking-api restarts, and its new log is already past the checkpoint's position:
    every change of the new run reaches Kafka after a resync, none under an old event id."""
    feed = FakeFeed(MemoryDatabase())
    producer = MemoryProducer()
    source = feed_source(feed)
    publisher = make_publisher(producer=producer, source=source)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: publisher.ready)
    old = [feed.database.insert(SLOTS, Docs.slot(f"old{n}")) for n in range(3)]
    await checkpointed(checkpoints, old[-1].token)
    await stop(publisher, task)
    old_ids = set(ids(producer.records))

    feed.database = MemoryDatabase()  # the restart: seeded anew, more changes than before
    for n in range(6):
        feed.database.insert(SLOTS, Docs.slot(f"new{n}"))
    producer.records.clear()
    publisher = make_publisher(producer=producer, source=source)
    task = asyncio.create_task(publisher.run())
    await eventually(lambda: "slots/new5" in _subjects(producer))
    await stop(publisher, task)
    await source.close()
    assert {f"slots/new{n}" for n in range(6)} <= _subjects(producer)
    assert "stream.resync" in [r.kind for r in producer.records]
    assert old_ids.isdisjoint(ids(producer.records))


def _subjects(producer: MemoryProducer) -> set[str]:
    return {orjson.loads(r.value)["subject"] for r in producer.records if r.kind != "stream.resync"}


def _refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_publisher_over_the_feed_publishes_every_change(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    producer = MemoryProducer()
    source = feed_source(FakeFeed(database))
    publisher = make_publisher(producer=producer, source=source, start_mode="snapshot")
    database.insert(SLOTS, Docs.slot("s0"))
    task = asyncio.create_task(publisher.run())
    for n in range(1, 6):
        database.insert(SLOTS, Docs.slot(f"s{n}"))
    for _ in range(500):
        if len({orjson.loads(r.value)["subject"] for r in producer.records}) == 6:
            break
        await asyncio.sleep(0.01)
    publisher.stop()
    await asyncio.wait_for(task, 5)
    await source.close()
    assert {orjson.loads(r.value)["subject"] for r in producer.records} == {
        f"slots/s{n}" for n in range(6)
    }


async def test_only_the_configured_collections_come_through(database: MemoryDatabase) -> None:
    start = database.log.latest_token
    database.insert("instructors", {"_id": "i1", "name": "Ann"})
    database.insert(SLOTS, Docs.slot("s1"))
    source = FeedChangeSource(
        "http://booking-api",
        TOKEN,
        collections=[SLOTS],
        transport=httpx.MockTransport(FakeFeed(database)),
    )
    stream = await source.open(StreamPosition(after=start))
    batch = await stream.next_batch()
    assert [c.ns.coll for c in batch.changes] == [SLOTS]
    assert batch.resume_token == database.log.latest_token
    await source.close()


async def test_malformed_feed_answers_are_retried_not_skipped() -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("after") == "01":
            return httpx.Response(200, content=b'{"changes": [{"nope": 1}]}')
        return httpx.Response(200, content=b"<html>proxy error</html>")

    source = FeedChangeSource("http://booking-api", TOKEN, transport=httpx.MockTransport(garbage))
    with pytest.raises(SourceUnavailable, match="malformed JSON"):
        await (await source.open(StreamPosition(after={"_data": "00"}))).next_batch()
    with pytest.raises(SourceUnavailable, match="malformed change"):
        await (await source.open(StreamPosition(after={"_data": "01"}))).next_batch()
    await source.close()


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy error</html>",
        b"[]",
        b'{"documents": []}',
        b'{"operationTime": {"t": -1, "i": 0}, "documents": []}',
        b'{"operationTime": {"t": 1, "i": 0}}',
        b'{"operationTime": {"t": 1, "i": 0}, "documents": [1]}',
    ],
    ids=["not-json", "not-an-object", "no-time", "bad-time", "no-documents", "not-documents"],
)
async def test_a_malformed_snapshot_answer_is_the_feed_being_unavailable(body: bytes) -> None:
    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    source = FeedChangeSource("http://booking-api", TOKEN, transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(SourceUnavailable, match="snapshot of slots"):
            await source.snapshot(SLOTS)
    finally:
        await source.close()


async def test_a_publisher_snapshotting_through_a_proxy_error_page_retries(
    database: MemoryDatabase, make_publisher: PublisherFactory
) -> None:
    """A proxy answering 200 with its own page once must not end the process."""
    database.insert(SLOTS, Docs.slot("s1"))
    feed = FakeFeed(database)
    pages: list[httpx.Request] = []

    async def proxied(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/internal/snapshot" and not pages:
            pages.append(request)
            return httpx.Response(200, content=b"<html>502 Bad Gateway</html>")
        return await feed(request)

    producer = MemoryProducer()
    source = FeedChangeSource(
        "http://booking-api", TOKEN, wait=0.05, transport=httpx.MockTransport(proxied)
    )
    publisher = make_publisher(producer=producer, source=source, start_mode="snapshot")
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: producer.records != [] or task.done())
        assert not task.done()
    finally:
        await stop(publisher, task)
        await source.close()
    assert orjson.loads(producer.records[0].value)["subject"] == "slots/s1"
    assert publisher.metrics.source_errors._value.get() == 1
