"""Every kind of change maps to the event consumers expect — or to a skip or dead letter."""

from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId

from change_publisher.adapters.memory import MemoryDatabase
from change_publisher.domain.mapping import (
    ChangeMapper,
    DeadLetter,
    Invalidated,
    Outcome,
    Publish,
    Restructured,
    ResyncCause,
    Skip,
    event_id,
)
from slotstream_contracts.changelog import MemoryChangeLog
from slotstream_contracts.changes import ChangeEvent, ClusterTime, OperationType
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.entities import BookingData, NotificationData, SlotData
from slotstream_contracts.events import CloudEvent, EventType

from ..conftest import Docs

mapper = ChangeMapper()


def published(outcome: Outcome) -> CloudEvent:
    assert isinstance(outcome, Publish), outcome
    return outcome.event


def test_slot_insert_is_slot_created_keyed_by_instructor(database: MemoryDatabase) -> None:
    change = database.insert(SLOTS, Docs.slot("s1", "i7"))
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_CREATED
    assert event.routing_key == "i7"
    assert event.instructorid == "i7"
    assert event.subject == "slots/s1"
    assert event.version == 1
    assert event.time == datetime.fromtimestamp(change.cluster_time.t, UTC)
    assert isinstance(event.data, SlotData)
    assert event.data.status == "available"
    assert "studentId" not in event.to_json().decode()


def test_slot_booking_update_is_slot_updated_with_new_version(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot())
    change = database.update(SLOTS, "s1", {"status": "booked", "bookingId": "b1"})
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_UPDATED
    assert event.version == 2
    assert isinstance(event.data, SlotData)
    assert event.data.booking_id == "b1"


def test_slot_replace_is_slot_updated(database: MemoryDatabase) -> None:
    change = database.log.record(
        OperationType.REPLACE, SLOTS, "s1", Docs.slot(version=3, status="booked")
    )
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_UPDATED
    assert event.version == 3


def test_slot_tombstone_is_slot_deleted_still_routed(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot("s1", "i9"))
    change = database.update(SLOTS, "s1", {"status": "deleted"})
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_DELETED
    assert event.routing_key == "i9"
    assert event.version == 2


def test_slot_hard_delete_with_pre_image_is_deleted_with_next_version(
    database: MemoryDatabase,
) -> None:
    database.insert(SLOTS, Docs.slot("s1", "i3", version=4))
    change = database.delete(SLOTS, "s1", pre_image=True)
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_DELETED
    assert event.routing_key == "i3"
    assert event.version == 5
    assert isinstance(event.data, SlotData)
    assert event.data.status == "deleted"


def test_slot_hard_delete_without_pre_image_is_dead_lettered(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot())
    outcome = mapper.map_change(database.delete(SLOTS, "s1", pre_image=False))
    assert isinstance(outcome, DeadLetter)
    assert "pre-image" in outcome.error
    assert outcome.key == SLOTS


def test_hard_delete_of_a_tombstoned_slot_is_skipped(database: MemoryDatabase) -> None:
    database.insert(SLOTS, Docs.slot(status="deleted"))
    assert isinstance(mapper.map_change(database.delete(SLOTS, "s1")), Skip)


def test_update_without_full_document_is_dead_lettered() -> None:
    log = MemoryChangeLog("slotstream")
    outcome = mapper.map_change(log.record(OperationType.UPDATE, SLOTS, "s1", None))
    assert isinstance(outcome, DeadLetter)
    assert "fullDocument" in outcome.error


def test_update_looked_up_after_a_delete_is_rebuilt_from_the_pre_image(
    database: MemoryDatabase,
) -> None:
    """updateLookup returns null once the document is gone; with pre-images the update
    still says exactly what it wrote."""
    database.insert(SLOTS, Docs.slot("s1", "i7"))
    written = database.update(SLOTS, "s1", {"status": "booked", "bookingId": "b1"})
    before = Docs.slot("s1", "i7")
    change = written.model_copy(
        update={"full_document": None, "full_document_before_change": before}
    )
    event = published(mapper.map_change(change))
    assert event.type is EventType.SLOT_UPDATED
    assert event.routing_key == "i7"
    assert isinstance(event.data, SlotData)
    assert (event.data.status, event.data.booking_id, event.data.version) == ("booked", "b1", 2)


def test_booking_insert_and_cancellation(database: MemoryDatabase) -> None:
    created = published(mapper.map_change(database.insert(BOOKINGS, Docs.booking())))
    assert created.type is EventType.BOOKING_CREATED
    assert created.routing_key == "i1"
    assert isinstance(created.data, BookingData)
    change = database.update(BOOKINGS, "b1", {"status": "cancelled", "cancelledAt": created.time})
    cancelled = published(mapper.map_change(change))
    assert cancelled.type is EventType.BOOKING_CANCELLED
    assert cancelled.version == 2
    assert cancelled.subject == "bookings/b1"


def test_booking_updates_that_are_not_cancellations_are_skipped(
    database: MemoryDatabase,
) -> None:
    database.insert(BOOKINGS, Docs.booking())
    assert isinstance(mapper.map_change(database.update(BOOKINGS, "b1", {"note": "x"})), Skip)
    database.update(BOOKINGS, "b1", {"status": "cancelled"})
    again = database.update(BOOKINGS, "b1", {"note": "y"})
    assert isinstance(mapper.map_change(again), Skip)


def test_booking_hard_delete_with_pre_image_is_a_cancellation(database: MemoryDatabase) -> None:
    database.insert(BOOKINGS, Docs.booking(version=2))
    event = published(mapper.map_change(database.delete(BOOKINGS, "b1")))
    assert event.type is EventType.BOOKING_CANCELLED
    assert event.version == 3
    assert isinstance(event.data, BookingData)
    assert event.data.cancelled_at == event.time


def test_notification_insert_is_keyed_by_user(database: MemoryDatabase) -> None:
    event = published(mapper.map_change(database.insert(NOTIFICATIONS, Docs.notification())))
    assert event.type is EventType.NOTIFICATION_CREATED
    assert event.routing_key == "u1"
    assert event.userid == "u1"
    assert event.instructorid is None
    assert isinstance(event.data, NotificationData)


def test_notification_read_flag_and_delete_are_skipped(database: MemoryDatabase) -> None:
    database.insert(NOTIFICATIONS, Docs.notification())
    assert isinstance(mapper.map_change(database.update(NOTIFICATIONS, "n1", {"read": True})), Skip)
    assert isinstance(mapper.map_change(database.delete(NOTIFICATIONS, "n1")), Skip)


def test_invalidate_and_drops() -> None:
    log = MemoryChangeLog("slotstream")
    invalidate = ChangeEvent.model_validate(
        {
            "_id": {"_data": "AB"},
            "operationType": "invalidate",
            "clusterTime": {"t": 1, "i": 1},
            "ns": {"db": "slotstream"},
        }
    )
    assert isinstance(mapper.map_change(invalidate), Invalidated)
    drop = log.record(OperationType.DROP, SLOTS, "")
    assert mapper.map_change(drop) == Restructured(
        ResyncCause.COLLECTION_DROPPED, (SLOTS,), "drop of slotstream.slots"
    )
    reload = log.record(OperationType.RENAME, "slots_reload", None, to=SLOTS)
    assert mapper.map_change(reload) == Restructured(
        ResyncCause.COLLECTION_RENAMED,
        ("slots_reload", SLOTS),
        "rename of slotstream.slots_reload to slotstream.slots",
    )
    dropped = log.record(OperationType.DROP_DATABASE, None, None)
    assert mapper.map_change(dropped) == Restructured(
        ResyncCause.DATABASE_DROPPED, None, "dropDatabase of slotstream"
    )


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (Docs.slot(instructorId="bad id!"), "instructorId"),
        (Docs.slot(status="exploded"), "status"),
        ({"_id": "s1"}, "Field required"),
        (Docs.slot(version=0), "version"),
        # A date written as text by another program, its offset taking it past year 9999
        # (or before year 1) in UTC: converting it raised OverflowError, not a
        # validation error, and the change was never dead-lettered.
        (Docs.slot(start="9999-12-31T23:59:59-05:00"), "start"),
        (Docs.slot(createdAt="0001-01-01T00:00:00+01:00"), "createdAt"),
    ],
)
def test_bad_documents_are_dead_lettered_with_the_error(
    database: MemoryDatabase, document: dict[str, Any], fragment: str
) -> None:
    outcome = mapper.map_change(database.insert(SLOTS, document))
    assert isinstance(outcome, DeadLetter)
    assert fragment in outcome.error
    copied = mapper.map_document(SLOTS, document, ClusterTime(t=1_800_000_000, i=1))
    assert isinstance(copied, DeadLetter)  # a snapshot dead-letters it too


def test_dead_letter_key_is_the_routing_key_when_readable(database: MemoryDatabase) -> None:
    outcome = mapper.map_change(database.insert(SLOTS, Docs.slot(instructorId="i5", version=0)))
    assert isinstance(outcome, DeadLetter)
    assert outcome.key == "i5"


def test_unknown_collection_is_dead_lettered(database: MemoryDatabase) -> None:
    outcome = mapper.map_change(database.insert("instructors", {"_id": "i1", "_oid": ObjectId()}))
    assert isinstance(outcome, DeadLetter)
    assert "instructors" in outcome.error


def test_event_id_is_stable_per_change_and_distinct_between_changes(
    database: MemoryDatabase,
) -> None:
    first = database.insert(SLOTS, Docs.slot("s1"))
    second = database.insert(SLOTS, Docs.slot("s2"))
    again = ChangeEvent.model_validate(first.model_dump(by_alias=True))
    assert published(mapper.map_change(first)).id == published(mapper.map_change(again)).id
    assert event_id(first) != event_id(second)
    long_token = first.model_copy(update={"token": {"_data": "82" + "F" * 300}})
    assert len(published(mapper.map_change(long_token)).id) <= 128


def test_snapshot_documents_are_created_events_with_repeatable_ids() -> None:
    at = ClusterTime(t=1_800_000_000, i=3)
    slot = published(mapper.map_document(SLOTS, Docs.slot(version=2), at))
    assert slot.type is EventType.SLOT_CREATED
    assert slot.time == datetime.fromtimestamp(at.t, UTC)
    assert slot.id == published(mapper.map_document(SLOTS, Docs.slot(version=2), at)).id
    assert slot.id != published(mapper.map_document(SLOTS, Docs.slot(version=3), at)).id
    gone = published(mapper.map_document(SLOTS, Docs.slot(status="deleted"), at))
    assert gone.type is EventType.SLOT_DELETED
    cancelled = published(mapper.map_document(BOOKINGS, Docs.booking(status="cancelled"), at))
    assert cancelled.type is EventType.BOOKING_CANCELLED
    note = published(mapper.map_document(NOTIFICATIONS, Docs.notification(), at))
    assert note.type is EventType.NOTIFICATION_CREATED
    assert isinstance(mapper.map_document(SLOTS, {"_id": "x"}, at), DeadLetter)
