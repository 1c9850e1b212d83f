"""Test and benchmark helpers: events shaped exactly like the change-publisher's, and a
record double for the hub."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from slotstream_contracts.entities import (
    Audience,
    BookingData,
    BookingStatus,
    NotificationData,
    NotificationKind,
    ScheduleSnapshot,
    SlotData,
    SlotStatus,
)
from slotstream_contracts.events import CloudEvent, EventType, ResyncData
from slotstream_contracts.topics import CONTROL_KEY, SCHEDULE_TOPIC

BASE_TIME = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class FakeRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    ce_type: bytes | None = None
    ce_id: bytes | None = None


def slot(
    instructor_id: str, slot_id: str, version: int, status: SlotStatus = SlotStatus.AVAILABLE
) -> SlotData:
    start = BASE_TIME + timedelta(hours=sum(slot_id.encode()) % 48)
    return SlotData(
        id=slot_id,
        instructor_id=instructor_id,
        start=start,
        end=start + timedelta(hours=1),
        status=status,
        booking_id=None,
        version=version,
        updated_at=BASE_TIME,
    )


def slot_event(
    instructor_id: str,
    slot_id: str,
    version: int,
    event_id: str | None = None,
    status: SlotStatus = SlotStatus.AVAILABLE,
) -> CloudEvent:
    return CloudEvent(
        id=event_id or f"{slot_id}-v{version}",
        type=EventType.SLOT_CREATED if version == 1 else EventType.SLOT_UPDATED,
        subject=f"slots/{slot_id}",
        time=BASE_TIME,
        instructorid=instructor_id,
        version=version,
        data=slot(instructor_id, slot_id, version, status),
    )


def booking_event(
    instructor_id: str,
    booking_id: str,
    slot_id: str,
    student_id: str,
    audience: Audience | None = None,
) -> CloudEvent:
    """``audience``: the copy for the instructor or for the student (keyed by that user);
    None: a booking as written before events named their audience."""
    return CloudEvent(
        id=f"{booking_id}-v1",
        type=EventType.BOOKING_CREATED,
        subject=f"bookings/{booking_id}",
        time=BASE_TIME,
        instructorid=instructor_id,
        version=1,
        data=BookingData(
            id=booking_id,
            slot_id=slot_id,
            instructor_id=instructor_id,
            student_id=student_id,
            slot_start=BASE_TIME,
            slot_end=BASE_TIME + timedelta(hours=1),
            status=BookingStatus.ACTIVE,
            version=1,
            created_at=BASE_TIME,
        ),
        audience=audience,
    )


def notification_event(
    user_id: str, notification_id: str, message: str, audience: Audience | None = None
) -> CloudEvent:
    return CloudEvent(
        id=f"{notification_id}-v1",
        type=EventType.NOTIFICATION_CREATED,
        subject=f"notifications/{notification_id}",
        time=BASE_TIME,
        userid=user_id,
        version=1,
        data=NotificationData(
            id=notification_id,
            user_id=user_id,
            kind=NotificationKind.BOOKING_CREATED,
            message=message,
            booking_id="b1",
            slot_id="s1",
            version=1,
            created_at=BASE_TIME,
        ),
        audience=audience,
    )


def resync_event(event_id: str, topic: str = SCHEDULE_TOPIC) -> CloudEvent:
    return CloudEvent(
        id=event_id,
        type=EventType.STREAM_RESYNC,
        subject="stream",
        time=BASE_TIME,
        data=ResyncData(reason="publisher restarted from a snapshot", topic=topic),
    )


def header_values(
    headers: Iterable[tuple[str, bytes | None]],
) -> tuple[bytes | None, bytes | None]:
    """``(ce_type, ce_id)`` from a record's whole header list as a Kafka client gives it:
    the last value of each name, None where there is none (what the hub reads; written
    apart from the decoders, which the tests check against it)."""
    found = dict(headers)
    return found.get("ce_type"), found.get("ce_id")


def record_of(event: CloudEvent, offset: int) -> FakeRecord:
    key = CONTROL_KEY if event.type is EventType.STREAM_RESYNC else event.routing_key
    return FakeRecord(offset, key.encode(), event.to_json(), *header_values(event.headers()))


def snapshot(instructor_id: str, slots: list[SlotData]) -> ScheduleSnapshot:
    return ScheduleSnapshot(
        instructor_id=instructor_id,
        range_start=BASE_TIME - timedelta(days=1),
        range_end=BASE_TIME + timedelta(days=28),
        slots=tuple(slots),
        version=max((s.version for s in slots), default=0),
        generated_at=BASE_TIME,
    )
