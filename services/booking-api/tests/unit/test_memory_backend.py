"""What only the memory backend does: record every domain write as a change event, and
delete expired notifications as MongoDB's TTL monitor does."""

from datetime import UTC, datetime, timedelta

from booking_api.adapters.memory import MemoryStorage
from booking_api.ports import IdempotencyRecord
from slotstream_contracts.changes import OperationType
from slotstream_contracts.documents import NOTIFICATIONS, NotificationDocument, SlotDocument
from slotstream_contracts.entities import Audience, NotificationKind, SlotStatus

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


def notification(note_id: str, created_at: datetime) -> NotificationDocument:
    return NotificationDocument(
        id=note_id,
        user_id="u1",
        audience=Audience.STUDENT,
        kind=NotificationKind.BOOKING_CREATED,
        message="booked",
        booking_id="b1",
        slot_id="s1",
        version=1,
        created_at=created_at,
    )


async def test_expired_notifications_are_deleted_like_the_ttl_index_does() -> None:
    """Deleted, not only hidden: a demo that runs for weeks does not keep every
    notification in its memory, and the publisher reads the same ``delete`` changes from
    ``/internal/changes`` as MongoDB's change stream shows for a TTL deletion."""
    store = MemoryStorage(notification_retention=timedelta(days=7))
    notes = store.notifications
    await notes.insert(notification("n1", NOW))
    await notes.insert(notification("n2", NOW + timedelta(days=3)))
    # a write sweeps too (by its own creation time): a store only written to stays bounded
    await notes.insert(notification("n3", NOW + timedelta(days=8)))
    assert len(store.collections[NOTIFICATIONS]) == 2
    read_at = NOW + timedelta(days=10, seconds=1)
    listed = await notes.list_for_user("u1", 10, False, audience=Audience.STUDENT, now=read_at)
    assert [n.id for n in listed] == ["n3"]
    assert len(store.collections[NOTIFICATIONS]) == 1
    assert await notes.mark_read("n2", "u1", audience=Audience.STUDENT) is None
    deletes = [
        (e.ns.coll, e.document_key, e.full_document)
        for e in store.changelog.read_after(None)
        if e.operation_type is OperationType.DELETE
    ]
    assert deletes == [
        (NOTIFICATIONS, {"_id": "n1"}, None),
        (NOTIFICATIONS, {"_id": "n2"}, None),
    ]
