"""What a change source really does, bound to the fake and to MongoDB alike (issue 11,
item 8): the fake must show every one of these, or tests pass on semantics Mongo lacks."""

import asyncio
from collections.abc import Callable

import pytest
from bson import Binary

from change_publisher.ports import ChangeStream, SourceUnavailable, StreamPosition
from slotstream_contracts.changes import ChangeEvent, OperationType
from slotstream_contracts.documents import SLOTS

from ..conftest import Docs
from .conftest import Binding

pytestmark = pytest.mark.timeout(60)


async def read_until(
    stream: ChangeStream, done: Callable[[list[ChangeEvent]], bool], within: float = 10.0
) -> list[ChangeEvent]:
    changes: list[ChangeEvent] = []

    async def collect() -> None:
        while not done(changes):
            changes.extend((await stream.next_batch()).changes)

    await asyncio.wait_for(collect(), within)
    return changes


async def token_after_insert(binding: Binding, slot_id: str) -> ChangeEvent:
    """Insert a slot and return its change (to open later streams after it)."""
    stream = await binding.source.open(StreamPosition())
    try:
        await binding.writer.insert(SLOTS, Docs.slot(slot_id))
        changes = await read_until(stream, lambda cs: len(cs) >= 1)
    finally:
        await stream.aclose()
    return changes[0]


async def test_a_new_stream_starts_now_not_at_the_start_of_history(binding: Binding) -> None:
    await binding.writer.insert(SLOTS, Docs.slot("before"))
    stream = await binding.source.open(StreamPosition())
    try:
        await binding.writer.insert(SLOTS, Docs.slot("after"))
        changes = await read_until(stream, lambda cs: len(cs) >= 1)
        await asyncio.sleep(0.2)
        changes.extend((await stream.next_batch()).changes)
    finally:
        await stream.aclose()
    assert [c.document_key for c in changes] == [{"_id": "after"}]


async def test_binary_data_arrives_as_bytes(binding: Binding) -> None:
    """BSON binary (a subtype-4 UUID another driver wrote, raw bytes) reaches the publisher
    as ``bytes`` (Mongo: ``Binary``, a subclass), seldom UTF-8: a dead letter of such a
    document must encode it (``records.DeadLetterRecord``: as hex)."""
    uuid = bytes.fromhex("9f1c3e5a7b2d4c6e8f0a1b2c3d4e5f60")
    stream = await binding.source.open(StreamPosition())
    try:
        await binding.writer.insert(
            SLOTS, Docs.slot("s1", version=0, legacyId=Binary(uuid, 4), raw=b"\xff\x00")
        )
        (change,) = await read_until(stream, lambda cs: len(cs) >= 1)
    finally:
        await stream.aclose()
    assert change.full_document is not None
    values = (change.full_document["legacyId"], change.full_document["raw"])
    assert all(isinstance(value, bytes) for value in values)
    assert [bytes(value) for value in values] == [uuid, b"\xff\x00"]


async def test_update_lookup_returns_the_version_current_at_read_time(binding: Binding) -> None:
    insert = await token_after_insert(binding, "s1")
    await binding.writer.update(SLOTS, "s1", {"status": "booked", "bookingId": "b1"})
    await binding.writer.update(SLOTS, "s1", {"status": "available", "bookingId": None})
    stream = await binding.source.open(StreamPosition(after=insert.token))
    try:
        changes = await read_until(stream, lambda cs: len(cs) >= 2)
    finally:
        await stream.aclose()
    first, second = changes[:2]
    assert first.operation_type is OperationType.UPDATE
    assert first.update_description is not None
    assert first.update_description.updated_fields["status"] == "booked"
    # fullDocument is looked up when the change is read, not when it was written.
    assert first.full_document is not None
    assert (first.full_document["status"], first.full_document["version"]) == ("available", 3)
    assert second.full_document == first.full_document


async def test_update_lookup_of_a_deleted_document_is_null(binding: Binding) -> None:
    insert = await token_after_insert(binding, "s1")
    await binding.writer.update(SLOTS, "s1", {"status": "deleted"})
    await binding.writer.delete(SLOTS, "s1")
    stream = await binding.source.open(StreamPosition(after=insert.token))
    try:
        changes = await read_until(stream, lambda cs: len(cs) >= 2)
    finally:
        await stream.aclose()
    update, delete = changes[:2]
    assert update.operation_type is OperationType.UPDATE
    assert update.full_document is None
    assert delete.operation_type is OperationType.DELETE


async def test_changes_of_one_transaction_share_a_cluster_time(binding: Binding) -> None:
    insert = await token_after_insert(binding, "s0")
    await binding.writer.insert_in_transaction([(SLOTS, Docs.slot("s1")), (SLOTS, Docs.slot("s2"))])
    stream = await binding.source.open(StreamPosition(after=insert.token))
    try:
        changes = await read_until(stream, lambda cs: len(cs) >= 2)
    finally:
        await stream.aclose()
    one, two = changes[:2]
    assert one.cluster_time == two.cluster_time
    assert one.token != two.token
    # Starting at that operation time delivers the whole transaction.
    at = await binding.source.open(StreamPosition(at=one.cluster_time))
    try:
        again = await read_until(at, lambda cs: {"_id": "s2"} in [c.document_key for c in cs])
    finally:
        await at.aclose()
    assert {"_id": "s1"} in [c.document_key for c in again]


async def test_a_dropped_database_invalidates_the_stream_and_ends_it(binding: Binding) -> None:
    stream = await binding.source.open(StreamPosition())
    try:
        await binding.writer.insert(SLOTS, Docs.slot("s1"))
        await read_until(stream, lambda cs: len(cs) >= 1)
        await binding.writer.drop_database()
        changes = await read_until(
            stream, lambda cs: any(c.operation_type is OperationType.INVALIDATE for c in cs)
        )
        kinds = [c.operation_type for c in changes]
        assert OperationType.DROP_DATABASE in kinds
        assert kinds[-1] is OperationType.INVALIDATE
        invalidate = changes[-1]
        assert invalidate.ns.coll is None
        assert (
            next(c for c in changes if c.operation_type is OperationType.DROP_DATABASE).ns.coll
            is None
        )
        # The cursor is closed: reading on fails at once rather than waiting forever.
        with pytest.raises(SourceUnavailable):
            await asyncio.wait_for(stream.next_batch(), 5)
    finally:
        await stream.aclose()
    # startAfter the invalidate: the changes of the recreated collection come.
    reopened = await binding.source.open(StreamPosition(after=invalidate.token))
    try:
        await binding.writer.insert(SLOTS, Docs.slot("s2"))
        later = await read_until(reopened, lambda cs: len(cs) >= 1)
    finally:
        await reopened.aclose()
    assert later[0].document_key == {"_id": "s2"}


async def test_a_dropped_collection_arrives_as_a_drop_of_it(binding: Binding) -> None:
    """``mongorestore --drop``: the documents that vanish get no ``delete`` each; the
    ``drop`` is all the publisher learns of them."""
    insert = await token_after_insert(binding, "s1")
    await binding.writer.drop_collection(SLOTS)
    stream = await binding.source.open(StreamPosition(after=insert.token))
    try:
        changes = await read_until(
            stream, lambda cs: any(c.operation_type is OperationType.DROP for c in cs)
        )
    finally:
        await stream.aclose()
    drop = next(c for c in changes if c.operation_type is OperationType.DROP)
    assert drop.ns.coll == SLOTS


async def test_a_collection_renamed_over_a_watched_one_arrives_with_its_target(
    binding: Binding,
) -> None:
    """A reload (``$out`` into a collection of its own, then ``renameCollection`` over the
    watched one): its inserts are of an unwatched collection, and the rename is the only
    change that says the watched collection's documents were replaced."""
    insert = await token_after_insert(binding, "s1")
    await binding.writer.insert("slots_reload", Docs.slot("s2"))
    await binding.writer.rename_collection("slots_reload", SLOTS)
    stream = await binding.source.open(StreamPosition(after=insert.token))
    try:
        changes = await read_until(
            stream, lambda cs: any(c.operation_type is OperationType.RENAME for c in cs)
        )
    finally:
        await stream.aclose()
    assert [c.ns.coll for c in changes if c.operation_type is OperationType.INSERT] == []
    rename = next(c for c in changes if c.operation_type is OperationType.RENAME)
    assert rename.ns.coll == "slots_reload"
    assert rename.to is not None
    assert rename.to.coll == SLOTS
