"""What the instructor and the student are told when a booking is made or cancelled."""

from dataclasses import dataclass
from datetime import datetime

from booking_api.ids import derived_id_at
from slotstream_contracts.documents import BookingDocument
from slotstream_contracts.entities import Audience, NotificationKind


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
    instructor_name: str | None,
    cancelled_by: str | None = None,
) -> tuple[NotificationDraft, NotificationDraft]:
    """One message for the instructor, one for the student, in that order. Plain English
    with UTC times, for API clients; the page renders its own text from the structured
    fields of the notification, in the reader's language and time zone."""
    who = booking.student_name or "a student"
    teacher = instructor_name or "your instructor"
    when = _when(booking.slot_start)
    if kind is NotificationKind.BOOKING_CREATED:
        to_instructor = f"{who} booked your slot on {when}."
        to_student = f"You booked {teacher} on {when}."
    else:
        by = "" if cancelled_by is None else f" by {cancelled_by}"
        why = "" if booking.cancel_reason is None else f": {booking.cancel_reason}"
        to_instructor = f"The booking of your slot on {when} by {who} was cancelled{by}."
        to_student = f"Your booking with {teacher} on {when} was cancelled{by}{why}"
        to_student = to_student if why else to_student + "."
    return (
        NotificationDraft(booking.instructor_id, kind, to_instructor[:500], Audience.INSTRUCTOR),
        NotificationDraft(booking.student_id, kind, to_student[:500], Audience.STUDENT),
    )


def notification_id(booking: BookingDocument, draft: NotificationDraft) -> str:
    """The id of ``draft`` about a booking made with an ``Idempotency-Key``: every try of
    the request derives the same, so a retry writes what an earlier try did not, and
    nothing twice."""
    return derived_id_at(
        booking.created_at, "notification", booking.id, draft.kind.value, draft.audience.value
    )
