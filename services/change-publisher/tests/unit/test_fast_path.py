"""The hot path builds events without re-validating: it must equal the validated contract."""

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from change_publisher.domain.mapping import ChangeMapper, DeadLetter, Publish
from change_publisher.domain.records import encode_records
from slotstream_contracts.changelog import MemoryChangeLog
from slotstream_contracts.changes import ChangeEvent, OperationType
from slotstream_contracts.documents import (
    BOOKINGS,
    NOTIFICATIONS,
    SLOTS,
    BookingDocument,
    NotificationDocument,
    SlotDocument,
    StoredDocument,
)
from slotstream_contracts.entities import Audience
from slotstream_contracts.events import CloudEvent

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
versions = st.integers(min_value=-2, max_value=10**9) | st.integers(
    min_value=2**63, max_value=2**80
)

slots = st.fixed_dictionaries(
    {
        "_id": ids,
        "instructorId": ids,
        "start": times,
        "end": times,
        "status": st.sampled_from(["available", "booked", "deleted"]),
        "bookingId": st.none() | ids,
        "studentId": st.none() | ids,
        "version": versions,
        "createdAt": times,
        "updatedAt": times,
    }
)
bookings = st.fixed_dictionaries(
    {
        "_id": ids,
        "slotId": ids,
        "instructorId": ids,
        "studentId": ids,
        "slotStart": times,
        "slotEnd": times,
        "status": st.sampled_from(["active", "cancelled"]),
        "version": versions,
        "createdAt": times,
        "cancelledAt": st.none() | times,
    }
)
notifications = st.fixed_dictionaries(
    {
        "_id": ids,
        "userId": ids,
        "kind": st.sampled_from(["booking.created", "booking.cancelled"]),
        "message": st.text(max_size=520),
        "bookingId": ids,
        "slotId": ids,
        "read": st.booleans(),
        "version": versions,
        "createdAt": times,
        "audience": st.none() | st.sampled_from(["student", "instructor"]),
    }
)
documents = (
    st.tuples(st.just(SLOTS), slots)
    | st.tuples(st.just(BOOKINGS), bookings)
    | st.tuples(st.just(NOTIFICATIONS), notifications)
)


def validated(change: ChangeEvent, event: CloudEvent, audience: Audience | None) -> CloudEvent:
    """The same event built the slow way: ``to_data()`` and a validating constructor."""
    models: dict[str, type[StoredDocument]] = {
        SLOTS: SlotDocument,
        BOOKINGS: BookingDocument,
        NOTIFICATIONS: NotificationDocument,
    }
    document: Any = models[change.ns.coll or ""].model_validate(change.full_document)
    return CloudEvent(
        id=event.id,
        type=event.type,
        subject=event.subject,
        time=event.time,
        instructorid=event.instructorid,
        userid=event.userid,
        version=document.version,
        data=document.to_data(),
        audience=audience,
    )


@settings(max_examples=150, deadline=None)
@given(document=documents)
def test_fast_events_equal_validated_ones_on_the_wire(document: tuple[str, dict[str, Any]]) -> None:
    collection, stored = document
    log = MemoryChangeLog("slotstream")
    stored = {**stored, "end": stored.get("end", stored.get("start"))}
    change = log.record(OperationType.INSERT, collection, stored["_id"], stored)
    outcome = ChangeMapper().map_change(change)
    if isinstance(outcome, DeadLetter):
        # Only what the public models refuse is dead-lettered.
        assert stored["version"] < 1 or len(stored.get("message", "")) > 500
        return
    assert isinstance(outcome, Publish)
    records = encode_records(outcome, "t", epoch=1)
    for record, (_, audience) in zip(records, outcome.recipients, strict=True):
        reference = validated(change, outcome.event, audience)
        assert outcome.event_for(audience) == reference
        if stored["version"] < 2**64:
            assert record.value == reference.to_json()
        else:  # beyond what orjson (and so ``to_json()``) writes: pydantic-core's bytes
            assert record.value == reference.model_dump_json(exclude_none=True).encode()
        assert record.headers[:-1] == reference.headers()
        assert record.key == reference.routing_key.encode()
    assert stored["version"] >= 1


@settings(max_examples=60, deadline=None)
@given(document=documents)
def test_events_of_hard_deletes_are_byte_identical_too(
    document: tuple[str, dict[str, Any]],
) -> None:
    """A hard delete publishes the pre-image changed (status, version + 1, time)."""
    collection, stored = document
    log = MemoryChangeLog("slotstream")
    change = log.record(OperationType.DELETE, collection, stored["_id"], None, before=stored)
    outcome = ChangeMapper().map_change(change)
    if isinstance(outcome, Publish) and stored["version"] < 2**64 - 1:
        records = encode_records(outcome, "t", epoch=1)
        assert [r.value for r in records] == [
            outcome.event_for(audience).to_json() for _, audience in outcome.recipients
        ]
        assert outcome.event.version == stored["version"] + 1
