from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotstream_contracts.channels import Channel, ChannelError, channels_for_event
from slotstream_contracts.entities import (
    Audience,
    BookingData,
    BookingStatus,
    NotificationData,
    NotificationKind,
    SlotData,
    SlotStatus,
)
from slotstream_contracts.events import (
    CloudEvent,
    EventDecodeError,
    EventType,
    ResyncData,
    decode_event,
)
from slotstream_contracts.topics import CONTROL_KEY, NOTIFICATIONS_TOPIC, SCHEDULE_TOPIC

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def slot_event(message_text: str = "i1") -> CloudEvent:
    slot = SlotData(
        id="s1",
        instructor_id=message_text,
        start=NOW,
        end=NOW.replace(hour=11),
        status=SlotStatus.AVAILABLE,
        version=1,
        updated_at=NOW,
    )
    return CloudEvent(
        id="e1",
        type=EventType.SLOT_CREATED,
        subject="slots/s1",
        time=NOW,
        instructorid=message_text,
        version=1,
        data=slot,
    )


def test_event_round_trips_through_json_with_camel_case_keys() -> None:
    event = slot_event()
    raw = event.to_json()
    assert b"\n" not in raw
    body = orjson.loads(raw)
    assert body["specversion"] == "1.0"
    assert body["data"]["instructorId"] == "i1"
    assert body["data"]["updatedAt"] == "2026-11-23T10:00:00Z"
    assert "bookingId" not in body["data"]
    assert decode_event(raw) == event


def test_event_is_routed_by_instructor_to_the_schedule_topic() -> None:
    event = slot_event()
    assert event.routing_key == "i1"
    assert event.topic == SCHEDULE_TOPIC
    assert dict(event.headers())["ce_type"] == b"slot.created"
    assert channels_for_event(event) == (Channel.schedule("i1"),)


def test_notification_is_routed_by_user() -> None:
    data = NotificationData(
        id="n1",
        user_id="u7",
        kind=NotificationKind.BOOKING_CREATED,
        message="New booking",
        booking_id="b1",
        slot_id="s1",
        version=1,
        created_at=NOW,
    )
    event = CloudEvent(
        id="e2",
        type=EventType.NOTIFICATION_CREATED,
        subject="notifications/n1",
        time=NOW,
        userid="u7",
        version=1,
        data=data,
    )
    assert event.routing_key == "u7"
    assert event.topic == NOTIFICATIONS_TOPIC
    assert channels_for_event(event) == (Channel.notifications("u7"),)


def test_a_booking_goes_only_to_the_private_channels_of_its_student_and_instructor() -> None:
    """A booking names its student: never on the public schedule channel (issue 10, item 1)."""
    event = CloudEvent(
        id="e3",
        type=EventType.BOOKING_CREATED,
        subject="bookings/b1",
        time=NOW,
        instructorid="i1",
        version=1,
        data=BookingData(
            id="b1",
            slot_id="s1",
            instructor_id="i1",
            student_id="u7",
            slot_start=NOW,
            slot_end=NOW,
            status=BookingStatus.ACTIVE,
            version=1,
            created_at=NOW,
        ),
    )
    assert event.topic == NOTIFICATIONS_TOPIC
    assert event.routing_keys == ("i1", "u7")
    assert channels_for_event(event) == (Channel.notifications("i1"), Channel.notifications("u7"))


def test_a_private_event_naming_its_audience_goes_to_that_reader_only() -> None:
    """A student and an instructor may share an id: the booking is written once per role,
    each copy keyed by its reader; the copy without one (written before audiences) to both."""
    booking = BookingData(
        id="b1",
        slot_id="s1",
        instructor_id="i1",
        student_id="u7",
        slot_start=NOW,
        slot_end=NOW,
        status=BookingStatus.ACTIVE,
        version=1,
        created_at=NOW,
    )
    shared = {
        "id": "e4",
        "type": EventType.BOOKING_CREATED,
        "subject": "bookings/b1",
        "time": NOW,
        "instructorid": "i1",
        "data": booking,
    }
    for audience, key in ((Audience.INSTRUCTOR, "i1"), (Audience.STUDENT, "u7")):
        event = CloudEvent.model_validate({**shared, "audience": audience})
        assert event.routing_keys == (key,)
        assert orjson.loads(event.to_json())["audience"] == audience.value
        assert decode_event(event.to_json()) == event
    assert CloudEvent.model_validate(shared).routing_keys == ("i1", "u7")
    with pytest.raises(ValueError, match="slot.created is public: it has no audience"):
        CloudEvent.model_validate({**slot_event().model_dump(), "audience": Audience.STUDENT})


def test_resync_is_a_control_event_for_every_channel() -> None:
    event = CloudEvent(
        id="r1",
        type=EventType.STREAM_RESYNC,
        subject="stream",
        time=NOW,
        data=ResyncData(reason="history lost", topic=SCHEDULE_TOPIC),
    )
    assert event.routing_key == CONTROL_KEY
    assert channels_for_event(event) is None


def test_data_must_match_the_event_type() -> None:
    with pytest.raises(ValueError, match="slot.created carries SlotData"):
        CloudEvent(
            id="x",
            type=EventType.SLOT_CREATED,
            subject="s",
            time=NOW,
            data=ResyncData(reason="r", topic="t"),
        )


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"type": "nope"}', b'{"type": "slot.created", "data": {}}'],
)
def test_decode_rejects_malformed_events(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(raw)


@given(st.text(max_size=200))
def test_no_string_can_put_a_raw_newline_into_an_encoded_event(text: str) -> None:
    data = ResyncData(reason=text, topic="t")
    event = CloudEvent(id="r", type=EventType.STREAM_RESYNC, subject="s", time=NOW, data=data)
    raw = event.to_json()
    assert b"\n" not in raw
    assert b"\r" not in raw
    assert decode_event(raw).data == data


@pytest.mark.parametrize(
    ("name", "kind"),
    [("instructors/i-1/schedule", "schedule"), ("users/u_2/notifications", "notifications")],
)
def test_channels_parse_and_print_back(name: str, kind: str) -> None:
    channel = Channel.parse(name)
    assert channel.name == name
    assert channel.kind.value == kind


@pytest.mark.parametrize(
    "name",
    [
        "instructors/i1/notifications",
        "users/u1/schedule",
        "instructors//schedule",
        "instructors/a$b/schedule",
        "instructors/a.b/schedule",
        "instructors/i1/schedule/extra",
        "x" * 300,
    ],
)
def test_malformed_channels_are_rejected(name: str) -> None:
    with pytest.raises(ChannelError):
        Channel.parse(name)


def test_record_key_maps_back_to_the_channel() -> None:
    assert Channel.for_record(SCHEDULE_TOPIC, b"i1") == Channel.schedule("i1")
    assert Channel.for_record(NOTIFICATIONS_TOPIC, b"u1") == Channel.notifications("u1")
    assert Channel.for_record(SCHEDULE_TOPIC, CONTROL_KEY.encode()) is None
    assert Channel.for_record("other", b"i1") is None
    assert Channel.for_record(SCHEDULE_TOPIC, b"\xff") is None
