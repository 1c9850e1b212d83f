"""The booking state machine.

A slot moves ``available → booked`` when a student books it and back to ``available``
when the booking is cancelled; ``available → deleted`` is a tombstone. A booking moves
``active → cancelled`` once and never back. Every move is one compare-and-set on the
stored document (the expected state is part of the filter) and raises the version by one.
"""

from datetime import datetime
from typing import TypeGuard

from booking_api.domain.errors import BookingCancelled, Conflict, NotFound, QuotaExceeded
from booking_api.ids import derived_id
from slotstream_contracts.auth import Principal
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


def keyed_booking_id(principal: Principal, slot_id: str, idempotency_key: str) -> str:
    """The booking id of a request sent with an ``Idempotency-Key``, the same for every try
    of it: the caller (id and role, the key's scope), the key and the slot. So a retry
    after a try that failed half-way knows the slot as held by its own booking."""
    return derived_id("booking", principal.user_id, principal.role.value, idempotency_key, slot_id)


def held_by(slot: SlotDocument | None, booking_id: str) -> TypeGuard[SlotDocument]:
    return slot is not None and slot.status is SlotStatus.BOOKED and slot.booking_id == booking_id


def ensure_not_cancelled_since(booking: BookingDocument) -> None:
    """An earlier try of this booking request made ``booking``; cancelled since, it is not
    brought back (nor the slot booked again) by a late retry of that request."""
    if booking.status is BookingStatus.CANCELLED:
        raise BookingCancelled(
            f"the booking {booking.id} made by an earlier try of this request has been "
            "cancelled since; to book the slot again, send a new request",
            bookingId=booking.id,
            slotId=booking.slot_id,
        )


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
