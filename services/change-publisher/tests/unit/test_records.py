"""Routing and what a record on Kafka looks like (key, headers, value)."""

from datetime import UTC, datetime

import orjson
from bson import ObjectId

from change_publisher.adapters.memory import MemoryDatabase
from change_publisher.domain.mapping import ChangeMapper, Publish
from change_publisher.domain.records import (
    EPOCH_HEADER,
    Router,
    dead_letter_of_change,
    encode_dead_letter,
    encode_publish,
    encode_records,
)
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.events import decode_event

from ..conftest import NOW, ROUTER, Docs


def test_router_maps_collections_to_topics_and_lists_each_data_topic_once() -> None:
    assert ROUTER.topic_for(SLOTS) == "slotstream.schedule.v1"
    assert ROUTER.topic_for(BOOKINGS) == ROUTER.topic_for(NOTIFICATIONS)
    assert ROUTER.topic_for(NOTIFICATIONS) == "slotstream.notifications.v1"
    assert ROUTER.topic_for("instructors") is None
    assert ROUTER.data_topics == ("slotstream.schedule.v1", "slotstream.notifications.v1")
    custom = Router({SLOTS: "a", BOOKINGS: "b"}, "dlq")
    assert custom.data_topics == ("a", "b")


def test_event_record_has_key_headers_and_decodable_value(database: MemoryDatabase) -> None:
    outcome = ChangeMapper().map_change(database.insert(SLOTS, Docs.slot("s1", "i4")))
    assert isinstance(outcome, Publish)
    record = encode_publish(outcome, "slotstream.schedule.v1", epoch=7)
    headers = dict(record.headers)
    assert record.key == b"i4"
    assert headers["ce_type"] == b"slot.created"
    assert headers["ce_id"] == outcome.event.id.encode()
    assert headers["ce_subject"] == b"slots/s1"
    assert headers["content-type"] == b"application/cloudevents+json"
    assert headers[EPOCH_HEADER] == b"7"
    assert decode_event(record.value) == outcome.event
    assert b"\n" not in record.value


def test_dead_letter_keeps_the_original_change_even_with_bson_types(
    database: MemoryDatabase,
) -> None:
    change = database.insert(SLOTS, Docs.slot(instructorId="i1", version=0, extra=ObjectId()))
    record = dead_letter_of_change(change, "slot invalid: version", "abc", "p1", datetime.now(UTC))
    encoded = encode_dead_letter(record, "i1", "slotstream.deadletter.v1", epoch=1)
    body = orjson.loads(encoded.value)
    assert encoded.key == b"i1"
    assert body["error"] == "slot invalid: version"
    assert body["change"]["fullDocument"]["_id"] == "s1"
    assert body["change"]["operationType"] == "insert"
    assert dict(encoded.headers)["dlq_error"] == b"slot invalid: version"


def test_fast_event_json_is_byte_identical_to_the_contract(database: MemoryDatabase) -> None:
    mapper = ChangeMapper()
    changes = [
        database.insert(SLOTS, Docs.slot()),
        database.update(SLOTS, "s1", {"status": "deleted"}),
        database.insert(BOOKINGS, Docs.booking()),
        database.update(BOOKINGS, "b1", {"status": "cancelled", "cancelledAt": NOW}),
        database.insert(NOTIFICATIONS, Docs.notification(message='say "hi"\nbye ✓')),
    ]
    for change in changes:
        outcome = mapper.map_change(change)
        assert isinstance(outcome, Publish)
        assert encode_publish(outcome, "t", epoch=1).value == outcome.event.to_json()
        record = encode_publish(outcome, "t", epoch=3)
        assert record.headers == [*outcome.event.headers(), (EPOCH_HEADER, b"3")]
        assert record.key == outcome.event.routing_key.encode()
        assert record.kind == outcome.event.type.value


def test_a_booking_goes_to_the_student_and_to_the_instructor(database: MemoryDatabase) -> None:
    """The same event, keyed once by each party: each lands on that user's private channel."""
    outcome = ChangeMapper().map_change(database.insert(BOOKINGS, Docs.booking()))
    assert isinstance(outcome, Publish)
    records = encode_records(outcome, "slotstream.notifications.v1", epoch=2)
    assert sorted(r.key for r in records) == [b"i1", b"u1"]
    assert {r.value for r in records} == {outcome.event.to_json()}
    assert {r.topic for r in records} == {"slotstream.notifications.v1"}


def test_a_booking_of_ones_own_slot_is_sent_once(database: MemoryDatabase) -> None:
    change = database.insert(BOOKINGS, Docs.booking(studentId="i1"))
    outcome = ChangeMapper().map_change(change)
    assert isinstance(outcome, Publish)
    assert [r.key for r in encode_records(outcome, "t", epoch=1)] == [b"i1"]


def test_slots_and_notifications_have_one_record(database: MemoryDatabase) -> None:
    for change in (
        database.insert(SLOTS, Docs.slot("s1", "i4")),
        database.insert(NOTIFICATIONS, Docs.notification()),
    ):
        outcome = ChangeMapper().map_change(change)
        assert isinstance(outcome, Publish)
        (record,) = encode_records(outcome, "t", epoch=1)
        assert record == encode_publish(outcome, "t", epoch=1)
