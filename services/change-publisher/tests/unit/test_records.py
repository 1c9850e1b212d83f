"""Routing and what a record on Kafka looks like (key, headers, value)."""

from datetime import UTC, datetime

import orjson
from bson import Binary, ObjectId

from change_publisher.adapters.memory import MemoryDatabase
from change_publisher.domain.mapping import ChangeMapper, Publish
from change_publisher.domain.records import (
    EPOCH_HEADER,
    Router,
    dead_letter_of_change,
    encode_dead_letter,
    encode_records,
)
from slotstream_contracts.documents import BOOKINGS, NOTIFICATIONS, SLOTS
from slotstream_contracts.entities import Audience
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
    (record,) = encode_records(outcome, "slotstream.schedule.v1", epoch=7)
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


def test_dead_letter_shows_binary_values_as_hex(database: MemoryDatabase) -> None:
    """Bytes that are not UTF-8 (a subtype-4 UUID, any BinData) must not fail the dead
    letter: nothing else would take the change off the stream."""
    uuid = bytes.fromhex("9f1c3e5a7b2d4c6e8f0a1b2c3d4e5f60")
    change = database.insert(
        SLOTS, Docs.slot(version=0, legacyId=Binary(uuid, 4), raw=b"\xff\x00", text=b"ok")
    )
    record = dead_letter_of_change(change, "slot invalid: version", "abc", "p1", NOW)
    document = orjson.loads(encode_dead_letter(record, "i1", "dlq", epoch=1).value)["change"][
        "fullDocument"
    ]
    assert (document["legacyId"], document["raw"], document["text"]) == (
        uuid.hex(),
        "ff00",
        b"ok".hex(),
    )


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
        records = encode_records(outcome, "t", epoch=3)
        for record, (_, audience) in zip(records, outcome.recipients, strict=True):
            event = outcome.event_for(audience)
            assert record.value == event.to_json()
            assert record.headers == [*event.headers(), (EPOCH_HEADER, b"3")]
            assert record.key == event.routing_key.encode()
            assert record.kind == event.type.value


def test_a_booking_goes_to_the_student_and_to_the_instructor(database: MemoryDatabase) -> None:
    """The same event, keyed once by each party (each copy naming its reader's role): each
    lands on that user's private channel."""
    outcome = ChangeMapper().map_change(database.insert(BOOKINGS, Docs.booking()))
    assert isinstance(outcome, Publish)
    records = encode_records(outcome, "slotstream.notifications.v1", epoch=2)
    assert [r.key for r in records] == [b"i1", b"u1"]
    assert [decode_event(r.value) for r in records] == [
        outcome.event_for(Audience.INSTRUCTOR),
        outcome.event_for(Audience.STUDENT),
    ]
    assert {r.topic for r in records} == {"slotstream.notifications.v1"}


def test_each_record_of_a_private_event_names_the_role_it_is_for(
    database: MemoryDatabase,
) -> None:
    """A student and an instructor may share an id: each record says whom it is for (the
    gateway filters private streams by it), so a booking of a slot whose instructor has its
    student's id still goes to both, once each."""
    mapper = ChangeMapper()
    shared = mapper.map_change(database.insert(BOOKINGS, Docs.booking(studentId="i1")))
    assert isinstance(shared, Publish)
    records = encode_records(shared, "t", epoch=1)
    assert [(r.key, orjson.loads(r.value).get("audience")) for r in records] == [
        (b"i1", "instructor"),
        (b"i1", "student"),
    ]
    note = mapper.map_change(
        database.insert(NOTIFICATIONS, Docs.notification("n2", "i1", audience="instructor"))
    )
    assert isinstance(note, Publish)
    (record,) = encode_records(note, "t", epoch=1)
    assert orjson.loads(record.value)["audience"] == "instructor"
    # stored before notifications had an audience: every role of the user reads it
    old = mapper.map_change(database.insert(NOTIFICATIONS, Docs.notification("n3", "i1")))
    assert isinstance(old, Publish)
    (record,) = encode_records(old, "t", epoch=1)
    assert "audience" not in orjson.loads(record.value)


def test_slots_and_notifications_have_one_record(database: MemoryDatabase) -> None:
    for change in (
        database.insert(SLOTS, Docs.slot("s1", "i4")),
        database.insert(NOTIFICATIONS, Docs.notification()),
    ):
        outcome = ChangeMapper().map_change(change)
        assert isinstance(outcome, Publish)
        (record,) = encode_records(outcome, "t", epoch=1)
        assert record.value == outcome.event.to_json()
