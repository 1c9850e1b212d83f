"""Stored documents the driver cannot decode as they are (a date outside years 1-9999,
invalid UTF-8): each one is dead-lettered and the pipeline goes on, in a change stream and
in a snapshot. The client, databases and codecs are pymongo's, built by the app; only the
server's answers are scripted (MongoDB does not run here)."""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import bson
import orjson
import pytest
from bson import DatetimeMS, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from change_publisher import app
from change_publisher.adapters.memory import MemoryCheckpointStore, MemoryProducer
from change_publisher.adapters.mongo import MongoChangeSource
from change_publisher.config import Settings
from change_publisher.ports import Checkpoint
from change_publisher.publisher import Publisher
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.topics import DEADLETTER_TOPIC

from ..conftest import NOW, Docs, PublisherFactory
from .test_publisher import checkpointed, eventually, stop

Client = AsyncMongoClient[dict[str, Any]]
COLLECTIONS = (SLOTS, BOOKINGS, NOTIFICATIONS)
#: Milliseconds since the epoch far beyond year 9999 (a date written by a buggy client).
FAR_FUTURE_MS = 2**62


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    """The Mongo client exactly as ``build_components`` makes it (it never connects here)."""
    built: list[Client] = []

    class Recorded(AsyncMongoClient[dict[str, Any]]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(app, "AsyncMongoClient", Recorded)
    components = await app.build_components(
        Settings(source="mongo", mongo_url="mongodb://127.0.0.1:50999/?replicaSet=rs0")
    )
    try:
        yield built[0]
    finally:
        for close in components.closers:
            await close()


def _decoded(raw: bytes, codec: CodecOptions[Any]) -> Any:
    """A document as the driver hands it over with ``codec``: raw bytes for
    RawBSONDocument, else decoded (raising as the driver does for the whole batch)."""
    if issubclass(codec.document_class, RawBSONDocument):
        return RawBSONDocument(raw, codec)
    return bson.decode(raw, codec)


def _token(raw: bytes) -> dict[str, Any]:
    return dict(RawBSONDocument(raw)["_id"])


class ScriptedChangeStream:
    """The driver's change stream over scripted changes, opened after ``start_after`` (the
    changes after it are its first batch, decoded on open; else they come by getMore). A
    change decodes with the database's codec options, raising as the driver does for a
    batch that does not decode, or comes raw (RawBSONDocument). None once there is nothing
    more: an empty getMore after the server's await time."""

    def __init__(
        self, changes: Sequence[bytes], codec: CodecOptions[Any], start_after: Any
    ) -> None:
        self._codec = codec
        self.resume_token: dict[str, Any] | None = start_after or {"_data": "00"}
        self._changes = [
            raw
            for raw in changes
            if start_after is None or _token(raw)["_data"] > start_after["_data"]
        ]
        if start_after is not None:
            for raw in self._changes:
                _decoded(raw, codec)

    async def try_next(self) -> Any:
        if not self._changes:
            await asyncio.sleep(0.05)
            return None
        document = _decoded(self._changes[0], self._codec)
        self.resume_token = _token(self._changes.pop(0))
        return document

    async def close(self) -> None:
        return None


class ScriptedCursor:
    """A ``find`` cursor over scripted documents."""

    def __init__(self, documents: Sequence[bytes], codec: CodecOptions[Any]) -> None:
        self._documents = documents
        self._codec = codec

    async def __aiter__(self) -> AsyncIterator[Any]:
        for raw in self._documents:
            yield _decoded(raw, self._codec)


def serve(
    monkeypatch: pytest.MonkeyPatch,
    changes: Sequence[bytes] = (),
    slots: Sequence[bytes] = (),
) -> list[tuple[str, Any]]:
    """The server's answers: ``changes`` to every ``watch``, ``slots`` to a snapshot.
    Returns the streams opened: how they decode ("decoded" or "raw") and where."""
    opened: list[tuple[str, Any]] = []

    async def watch(
        self: AsyncDatabase[Any], *_pipeline: Any, **kwargs: Any
    ) -> ScriptedChangeStream:
        raw = issubclass(self.codec_options.document_class, RawBSONDocument)
        opened.append(("raw" if raw else "decoded", kwargs.get("start_after")))
        return ScriptedChangeStream(changes, self.codec_options, kwargs.get("start_after"))

    async def command(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        return {"ok": 1, "operationTime": Timestamp(1_700_000_000, 1)}

    def find(self: AsyncCollection[Any], *_args: Any, **_kwargs: Any) -> ScriptedCursor:
        return ScriptedCursor(slots if self.name == SLOTS else (), self.codec_options)

    monkeypatch.setattr(AsyncDatabase, "watch", watch)
    monkeypatch.setattr(AsyncDatabase, "command", command)
    monkeypatch.setattr(AsyncCollection, "find", find)
    return opened


def insert(seq: int, document: dict[str, Any]) -> bytes:
    """The change stream document of inserting ``document`` into slots, as BSON."""
    return bson.encode(
        {
            "_id": {"_data": f"{seq:04X}"},
            "operationType": "insert",
            "clusterTime": Timestamp(1_700_000_000, seq),
            "ns": {"db": "slotstream", "coll": SLOTS},
            "documentKey": {"_id": document["_id"]},
            "fullDocument": document,
        }
    )


def with_invalid_utf8(raw: bytes, marker: bytes = b"ZZZZ") -> bytes:
    """``raw`` with the string ``marker`` replaced by bytes that are not UTF-8."""
    assert raw.count(marker) == 1
    return raw.replace(marker, b"\xff\xfe\xfd\xfc")


def far_future_slot(slot_id: str) -> dict[str, Any]:
    return Docs.slot(slot_id, "i1", end=DatetimeMS(FAR_FUTURE_MS))


async def test_the_client_decodes_out_of_range_dates_as_values(client: Client) -> None:
    assert client.codec_options.datetime_conversion is DatetimeConversion.DATETIME_AUTO
    assert client.codec_options.tz_aware


DATE_AFTER_9999 = insert(1, far_future_slot("bad"))
INVALID_UTF8 = with_invalid_utf8(insert(1, Docs.slot("bad", "ZZZZ")))


async def published_through(
    client: Client,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    also: Callable[[], bool] = lambda: True,
) -> tuple[Publisher, MemoryProducer]:
    """Run a publisher on the scripted server until change 0002 is checkpointed (and
    ``also`` holds), then stop it."""
    producer = MemoryProducer()
    source = MongoChangeSource(client, "slotstream", COLLECTIONS)
    publisher = make_publisher(producer=producer, source=source)
    task = asyncio.create_task(publisher.run())
    try:
        await checkpointed(checkpoints, {"_data": "0002"})
        await eventually(also)
    finally:
        await stop(publisher, task)
    return publisher, producer


@pytest.mark.parametrize(
    ("bad", "error", "streams"),
    [
        pytest.param(DATE_AFTER_9999, "end:", [("decoded", None)], id="date-after-year-9999"),
        # The driver fails the batch: the stream re-reads it raw from the last change it
        # passed, then goes back to the driver's decoding once caught up.
        pytest.param(
            INVALID_UTF8,
            "utf-8",
            [("decoded", None), ("raw", {"_data": "00"}), ("decoded", {"_data": "0002"})],
            id="invalid-utf-8",
        ),
    ],
)
async def test_a_change_that_does_not_decode_is_dead_lettered_and_the_stream_goes_on(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
    bad: bytes,
    error: str,
    streams: list[tuple[str, Any]],
) -> None:
    opened = serve(monkeypatch, changes=[bad, insert(2, Docs.slot("s2", "i2"))])
    publisher, producer = await published_through(
        client, make_publisher, checkpoints, lambda: len(opened) >= len(streams)
    )
    dead, published = producer.records
    assert dead.topic == DEADLETTER_TOPIC
    assert dead.key == (b"i1" if bad is DATE_AFTER_9999 else b"slots")
    letter = orjson.loads(dead.value)
    assert error in letter["error"]
    assert letter["change"]["_id"] == {"_data": "0001"}
    assert letter["change"]["documentKey"] == {"_id": "bad"}
    assert orjson.loads(published.value)["subject"] == "slots/s2"
    assert publisher.metrics.dead_letters._value.get() == 1
    assert opened == streams


async def test_resuming_before_a_change_that_does_not_decode_dead_letters_it(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    make_publisher: PublisherFactory,
    checkpoints: MemoryCheckpointStore,
) -> None:
    """The change is in the first batch, which the driver decodes when the stream opens."""
    await checkpoints.save("test", Checkpoint({"_data": "00"}, None, epoch=0, saved_at=NOW))
    opened = serve(monkeypatch, changes=[INVALID_UTF8, insert(2, Docs.slot("s2", "i2"))])
    _, producer = await published_through(client, make_publisher, checkpoints)
    assert [r.kind for r in producer.records] == ["deadletter", "slot.created"]
    assert opened[:2] == [("decoded", {"_data": "00"}), ("raw", {"_data": "00"})]


async def test_a_dead_letter_shows_an_out_of_range_date_as_its_value(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    make_publisher: PublisherFactory,
) -> None:
    serve(monkeypatch, changes=[insert(1, far_future_slot("bad"))])
    producer = MemoryProducer()
    source = MongoChangeSource(client, "slotstream", COLLECTIONS)
    publisher = make_publisher(producer=producer, source=source)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: producer.records != [])
    finally:
        await stop(publisher, task)
    letter = orjson.loads(producer.records[0].value)
    assert str(FAR_FUTURE_MS) in letter["change"]["fullDocument"]["end"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(bson.encode(far_future_slot("bad")), id="date-after-year-9999"),
        pytest.param(with_invalid_utf8(bson.encode(Docs.slot("bad", "ZZZZ"))), id="invalid-utf-8"),
    ],
)
async def test_a_snapshot_document_that_does_not_decode_is_dead_lettered(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    make_publisher: PublisherFactory,
    bad: bytes,
) -> None:
    serve(monkeypatch, slots=[bad, bson.encode(Docs.slot("s2", "i2"))])
    producer = MemoryProducer()
    source = MongoChangeSource(client, "slotstream", COLLECTIONS)
    publisher = make_publisher(producer=producer, source=source, start_mode="snapshot")
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready or task.done())
    finally:
        await stop(publisher, task)
    dead, published = producer.records
    assert dead.topic == DEADLETTER_TOPIC
    assert orjson.loads(dead.value)["change"]["fullDocument"]["_id"] == "bad"
    assert orjson.loads(published.value)["subject"] == "slots/s2"
