"""Which booked slots the repair frees, and how long it must wait before it may.

A slot is booked first and its booking stored second (``service`` module doc). When the
store fails in between and cannot even be read back, the slot stays held by a booking id
that may have no booking; a cancel whose slot release failed leaves the slot held by a
cancelled booking. Either blocks the slot for good unless someone retries. The repair
frees such a slot once it has not changed for a grace period longer than any booking
request can still be running, so it never frees the slot of a booking about to be stored.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from slotstream_contracts.documents import BookingDocument, SlotDocument
from slotstream_contracts.entities import BookingStatus, SlotStatus

#: Store operations a booking request runs, one after the other, from the moment it takes
#: the time it stamps on the slot until its booking insert is applied: at most 8 (with an
#: ``Idempotency-Key``: look for the booking, read the slot, count the student's bookings,
#: claim, three read-backs of the claim, insert), each bounded by the store's operation
#: timeout; 10 leaves room for the pauses between the read-backs.
BOOKING_STORE_STEPS = 10
#: On top: event-loop lag on a busy host, and the clocks of replicas differing.
GRACE_MARGIN_SECONDS = 5.0
#: The grace when none is set, unless the minimum is longer.
DEFAULT_GRACE_SECONDS = 300.0


class RepairReason(StrEnum):
    NO_BOOKING = "no-booking"
    BOOKING_CANCELLED = "booking-cancelled"


@dataclass(frozen=True, order=True)
class SlotCursor:
    """Where a repair scan goes on: after this slot, in (start, id) order."""

    start: datetime
    slot_id: str


def minimum_grace_seconds(request_timeout_seconds: float, store_timeout_seconds: float) -> float:
    """The shortest grace that outlasts every booking request still running: a request
    with an ``Idempotency-Key`` is cut at its timeout, and the steps that follow a claim
    run to their end (each bounded by the store's timeout), so both add up."""
    return (
        request_timeout_seconds + BOOKING_STORE_STEPS * store_timeout_seconds + GRACE_MARGIN_SECONDS
    )


def why_repair(
    slot: SlotDocument, booking: BookingDocument | None, stale_before: datetime
) -> RepairReason | None:
    """Why ``slot`` (with ``booking``, the document of its booking id, None when there is
    none) is to be freed, or None when it is not: not booked, changed since
    ``stale_before``, held by an active booking, or by one cancelled since then."""
    if slot.status is not SlotStatus.BOOKED or slot.booking_id is None:
        return None
    if slot.updated_at >= stale_before:
        return None
    if booking is None:
        return RepairReason.NO_BOOKING
    if booking.id != slot.booking_id or booking.slot_id != slot.id:
        return None  # not this slot's booking: not ours to judge
    if booking.status is not BookingStatus.CANCELLED:
        return None
    # A cancel frees the slot right after it cancels the booking: a cancel that recent
    # may still be under way, and nothing to repair.
    if booking.cancelled_at is not None and booking.cancelled_at >= stale_before:
        return None
    return RepairReason.BOOKING_CANCELLED
