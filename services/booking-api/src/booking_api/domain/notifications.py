"""What the instructor and the student are told when a booking is made or cancelled."""

from dataclasses import dataclass
from datetime import datetime

from slotstream_contracts.documents import Audience, BookingDocument
from slotstream_contracts.entities import NotificationKind


@dataclass(frozen=True, slots=True)
class NotificationDraft:
    user_id: str
    kind: NotificationKind
    message: str
    audience: Audience


def _when(start: datetime) -> str:
    return start.strftime("%Y-%m-%d %H:%M UTC")


def booking_notifications(
    booking: BookingDocument,
    kind: NotificationKind,
    student_name: str | None,
    cancelled_by: str | None = None,
) -> tuple[NotificationDraft, NotificationDraft]:
    """One message for the instructor, one for the student, in that order."""
    who = student_name or f"student {booking.student_id}"
    when = _when(booking.slot_start)
    if kind is NotificationKind.BOOKING_CREATED:
        to_instructor = f"{who} booked your slot on {when}."
        to_student = f"You booked the slot on {when} (booking {booking.id})."
    else:
        by = "" if cancelled_by is None else f" by {cancelled_by}"
        to_instructor = f"The booking of your slot on {when} by {who} was cancelled{by}."
        to_student = f"Your booking of the slot on {when} was cancelled{by}."
    return (
        NotificationDraft(booking.instructor_id, kind, to_instructor, Audience.INSTRUCTOR),
        NotificationDraft(booking.student_id, kind, to_student, Audience.STUDENT),
    )
