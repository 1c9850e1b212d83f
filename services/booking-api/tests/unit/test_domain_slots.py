from datetime import UTC, datetime, timedelta, timezone

import pytest

from booking_api.domain import slots
from booking_api.domain.errors import Conflict, InvalidRequest
from slotstream_contracts.documents import SlotDocument
from slotstream_contracts.entities import SlotStatus

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
BERLIN = timezone(timedelta(hours=2))


def slot(start: datetime, end: datetime, status: SlotStatus = SlotStatus.AVAILABLE) -> SlotDocument:
    return SlotDocument(
        id="s1",
        instructor_id="i1",
        start=start,
        end=end,
        status=status,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


def test_window_is_stored_in_utc_whatever_offset_was_given() -> None:
    start = datetime(2026, 5, 5, 10, 0, tzinfo=BERLIN)
    window = slots.validate_slot_window(start, start + timedelta(hours=1), NOW)
    assert window.start == datetime(2026, 5, 5, 8, 0, tzinfo=UTC)
    assert window.start.tzinfo is UTC


def test_window_is_truncated_to_milliseconds_like_bson() -> None:
    start = datetime(2026, 5, 5, 10, 0, 0, 123456, tzinfo=UTC)
    window = slots.validate_slot_window(start, start + timedelta(hours=1), NOW)
    assert window.start.microsecond == 123000


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (NOW + timedelta(hours=2), NOW + timedelta(hours=1), "start must be before end"),
        (NOW + timedelta(hours=1), NOW + timedelta(hours=1), "start must be before end"),
        (NOW + timedelta(hours=1), NOW + timedelta(hours=1, minutes=4), "at least 5 minutes"),
        (NOW + timedelta(hours=1), NOW + timedelta(hours=9, seconds=1), "at most 480 minutes"),
        (NOW - timedelta(minutes=1), NOW + timedelta(hours=1), "in the past"),
        (NOW + timedelta(days=181), NOW + timedelta(days=181, hours=1), "180 days"),
    ],
)
def test_window_rules(start: datetime, end: datetime, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        slots.validate_slot_window(start, end, NOW)


def test_window_bounds_are_inclusive() -> None:
    start = NOW + timedelta(days=180)
    assert slots.validate_slot_window(start, start + timedelta(minutes=5), NOW)
    assert slots.validate_slot_window(NOW, NOW + timedelta(hours=8), NOW)


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 5, 5, 10, 0)
    with pytest.raises(InvalidRequest, match="explicit UTC offset"):
        slots.validate_slot_window(naive, naive + timedelta(hours=1), NOW)


def test_overlap_names_the_conflicting_slot() -> None:
    existing = slot(NOW + timedelta(hours=1), NOW + timedelta(hours=2))
    window = slots.SlotWindow(NOW + timedelta(hours=1, minutes=30), NOW + timedelta(hours=3))
    with pytest.raises(Conflict, match="overlaps slot s1") as caught:
        slots.ensure_no_overlap(window, [existing])
    assert caught.value.extra == {
        "slotId": "s1",
        "slotStart": existing.start,
        "slotEnd": existing.end,
    }


def test_touching_slots_do_not_overlap_and_tombstones_are_ignored() -> None:
    existing = slot(NOW + timedelta(hours=1), NOW + timedelta(hours=2))
    deleted = slot(NOW + timedelta(hours=2), NOW + timedelta(hours=3), SlotStatus.DELETED)
    window = slots.SlotWindow(NOW + timedelta(hours=2), NOW + timedelta(hours=3))
    slots.ensure_no_overlap(window, [existing, deleted])


def test_booked_slot_cannot_be_deleted() -> None:
    booked = slot(NOW, NOW + timedelta(hours=1), SlotStatus.BOOKED)
    with pytest.raises(Conflict, match="cancel booking"):
        slots.ensure_deletable(booked)


def test_schedule_window_defaults_and_bounds() -> None:
    assert slots.schedule_window(None, None, NOW) == (
        NOW - timedelta(days=1),
        NOW + timedelta(days=28),
    )
    start = NOW + timedelta(days=3)
    assert slots.schedule_window(start, None, NOW) == (start, start + timedelta(days=29))
    assert slots.schedule_window(None, start, NOW) == (start - timedelta(days=29), start)
    with pytest.raises(InvalidRequest, match="62 days"):
        slots.schedule_window(NOW, NOW + timedelta(days=63), NOW)
    with pytest.raises(InvalidRequest, match="from must be before to"):
        slots.schedule_window(NOW, NOW, NOW)
