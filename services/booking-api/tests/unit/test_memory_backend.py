"""What only the memory backend does: record every domain write as a change event."""

from datetime import UTC, datetime, timedelta

from booking_api.adapters.memory import MemoryStorage
from booking_api.ports import IdempotencyRecord
from slotstream_contracts.changes import OperationType
from slotstream_contracts.documents import SlotDocument
from slotstream_contracts.entities import SlotStatus

NOW = datetime(2026, 5, 4, 12, 0, 0, 999999, tzinfo=UTC)


def slot() -> SlotDocument:
    return SlotDocument(
        id="s1",
        instructor_id="i1",
        start=NOW + timedelta(days=1),
        end=NOW + timedelta(days=1, hours=1),
        status=SlotStatus.AVAILABLE,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_writes_are_recorded_as_change_stream_events() -> None:
    store = MemoryStorage()
    await store.slots.insert(slot())
    await store.slots.book("s1", "b1", "st1", NOW)
    await store.slots.release("s1", "b1", NOW)
    events = store.changelog.read_after(None)
    assert [e.operation_type for e in events] == [
        OperationType.INSERT,
        OperationType.UPDATE,
        OperationType.UPDATE,
    ]
    insert, book, release = events
    assert insert.ns.coll == "slots"
    assert insert.document_key == {"_id": "s1"}
    assert insert.full_document is not None
    assert insert.full_document["version"] == 1
    # updateLookup: read after the release, the booking's update shows the current document.
    assert book.full_document is not None
    assert book.full_document["version"] == 3
    assert "bookingId" not in book.full_document
    assert book.update_description is not None
    assert book.update_description.updated_fields["bookingId"] == "b1"
    assert book.update_description.updated_fields["status"] == "booked"
    assert book.update_description.updated_fields["version"] == 2
    assert release.update_description is not None
    assert release.update_description.removed_fields == ["bookingId", "studentId"]
    assert release.full_document is not None
    assert "bookingId" not in release.full_document
    tokens = [e.token_data for e in events]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3


async def test_failed_and_bookkeeping_writes_record_nothing() -> None:
    store = MemoryStorage()
    await store.slots.insert(slot())
    await store.slots.book("s1", "b1", "st1", NOW)
    await store.slots.book("s1", "b2", "st2", NOW)
    record = IdempotencyRecord(
        id="k", fingerprint="f", state="pending", created_at=NOW, expires_at=NOW
    )
    await store.idempotency.reserve(record, NOW, stale_before=NOW, max_per_user=10)
    assert len(store.changelog.read_after(None)) == 2


async def test_documents_are_copies_with_bson_precision() -> None:
    store = MemoryStorage()
    await store.slots.insert(slot())
    first = await store.slots.get("s1")
    assert first is not None
    assert first.created_at.microsecond == 999000
    event = store.changelog.read_after(None)[0]
    assert event.full_document is not None
    event.full_document["status"] = "booked"
    at, documents = store.snapshot("slots")
    documents[0]["status"] = "deleted"
    current = await store.slots.get("s1")
    assert current is not None
    assert current.status is SlotStatus.AVAILABLE
    assert at == event.cluster_time
