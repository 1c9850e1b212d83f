"""The booking state machine.

A slot moves ``available → booked`` when a student books it and back to ``available``
when the booking is cancelled; ``available → deleted`` is a tombstone. A booking moves
``active → cancelled`` once and never back. Every move is one compare-and-set on the
stored document (the expected state is part of the filter) and raises the version by one.
"""

from datetime import datetime

from booking_api.domain.errors import Conflict, NotFound, QuotaExceeded
from slotstream_contracts.documents import BookingDocument, SlotDocument
from slotstream_contracts.entities import BookingStatus, SlotStatus

SLOT_TRANSITIONS: dict[SlotStatus, frozenset[SlotStatus]] = {
    SlotStatus.AVAILABLE: frozenset({SlotStatus.BOOKED, SlotStatus.DELETED}),
    SlotStatus.BOOKED: frozenset({SlotStatus.AVAILABLE}),
    SlotStatus.DELETED: frozenset(),
}
BOOKING_TRANSITIONS: dict[BookingStatus, frozenset[BookingStatus]] = {
    BookingStatus.ACTIVE: frozenset({BookingStatus.CANCELLED}),
    BookingStatus.CANCELLED: frozenset(),
}


def can_move_slot(current: SlotStatus, target: SlotStatus) -> bool:
    return target in SLOT_TRANSITIONS[current]


def can_move_booking(current: BookingStatus, target: BookingStatus) -> bool:
    return target in BOOKING_TRANSITIONS[current]


def ensure_bookable(slot: SlotDocument | None, slot_id: str, now: datetime) -> SlotDocument:
    """Why a slot cannot be booked, as the error the caller sees; the slot when it can."""
    if slot is None or slot.status is SlotStatus.DELETED:
        raise NotFound(f"slot {slot_id} does not exist", slotId=slot_id)
    if slot.status is SlotStatus.BOOKED:
        raise Conflict(f"slot {slot_id} is already booked", slotId=slot_id)
    if slot.start <= now:
        raise Conflict(f"slot {slot_id} has already started", slotId=slot_id)
    return slot


def lost_race(slot: SlotDocument | None, slot_id: str) -> Conflict | NotFound:
    """The error for a conditional update that matched nothing: someone else moved first."""
    if slot is None or slot.status is SlotStatus.DELETED:
        return NotFound(f"slot {slot_id} does not exist", slotId=slot_id)
    return Conflict(f"slot {slot_id} was just booked by someone else", slotId=slot_id)


def ensure_active(booking: BookingDocument) -> None:
    if not can_move_booking(booking.status, BookingStatus.CANCELLED):
        raise Conflict(f"booking {booking.id} is already {booking.status.value}")


def ensure_within_quota(active: int, limit: int) -> None:
    """A student holds at most ``limit`` active bookings of lessons not over yet, so one
    account cannot book out a schedule (past lessons do not count: they hold nothing of
    it, and a student's history must not lock them out). Checked before the slot is
    taken; concurrent requests of one student may overshoot by their number (the edge
    limits the rate of booking requests per client)."""
    if active >= limit:
        raise QuotaExceeded(
            f"you already hold {active} active bookings, the most allowed; cancel one first",
            limit=limit,
        )
