"""Which booked slots the repair frees (``domain.repair.why_repair``)."""

from datetime import UTC, datetime, timedelta

import pytest

from booking_api.domain.repair import RepairReason, why_repair
from slotstream_contracts.documents import BookingDocument, SlotDocument
from slotstream_contracts.entities import BookingStatus, SlotStatus

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
STALE_BEFORE = NOW - timedelta(minutes=5)


def slot(updated_at: datetime, status: SlotStatus = SlotStatus.BOOKED) -> SlotDocument:
    booked = status is SlotStatus.BOOKED
    return SlotDocument(
        id="slot-1",
        instructor_id="i1",
        start=NOW + timedelta(days=1),
        end=NOW + timedelta(days=1, hours=1),
        status=status,
        booking_id="b1" if booked else None,
        student_id="s1" if booked else None,
        version=2,
        created_at=NOW - timedelta(days=1),
        updated_at=updated_at,
    )


def booking(status: BookingStatus, slot_id: str = "slot-1") -> BookingDocument:
    return BookingDocument(
        id="b1",
        slot_id=slot_id,
        instructor_id="i1",
        student_id="s1",
        slot_start=NOW + timedelta(days=1),
        slot_end=NOW + timedelta(days=1, hours=1),
        status=status,
        version=1,
        created_at=NOW - timedelta(hours=1),
    )


OLD = STALE_BEFORE - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("the_slot", "the_booking", "why"),
    [
        (slot(OLD), None, RepairReason.NO_BOOKING),
        (slot(OLD), booking(BookingStatus.CANCELLED), RepairReason.BOOKING_CANCELLED),
        (slot(OLD), booking(BookingStatus.ACTIVE), None),
        (slot(STALE_BEFORE), None, None),  # changed within the grace: maybe in flight
        (slot(OLD, SlotStatus.AVAILABLE), None, None),
        (slot(OLD), booking(BookingStatus.CANCELLED, slot_id="slot-2"), None),
    ],
    ids=["no-booking", "cancelled", "active", "recent", "not-booked", "other-slots-booking"],
)
def test_why_a_slot_is_freed(
    the_slot: SlotDocument, the_booking: BookingDocument | None, why: RepairReason | None
) -> None:
    assert why_repair(the_slot, the_booking, STALE_BEFORE) is why
