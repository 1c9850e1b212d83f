"""Who may do what. An instructor's user id (the token's ``sub``) is their instructor id.

Every decision weighs the role as well as the id: a student and an instructor may have the
same id (an admin chooses instructor ids), and they are still two different people."""

from booking_api.domain.errors import Forbidden
from slotstream_contracts.auth import Principal, Role
from slotstream_contracts.documents import BookingDocument
from slotstream_contracts.entities import Audience


def ensure_may_create_instructor(principal: Principal, instructor_id: str) -> None:
    """Instructors create their own profile (id = their user id); admins create any."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is not Role.INSTRUCTOR:
        raise Forbidden("only instructors and admins create instructor profiles")
    if instructor_id != principal.user_id:
        raise Forbidden("an instructor's id is their user id; it cannot be chosen")


def ensure_may_edit_schedule(principal: Principal, instructor_id: str) -> None:
    """Only the instructor (or an admin) adds or withdraws their slots."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is not Role.INSTRUCTOR or principal.user_id != instructor_id:
        raise Forbidden(f"only instructor {instructor_id} or an admin edits this schedule")


def ensure_may_see_bookings_of(principal: Principal, instructor_id: str) -> None:
    """Who booked an instructor's slots is for that instructor (and admins) only."""
    if principal.role is Role.ADMIN:
        return
    if principal.role is not Role.INSTRUCTOR or principal.user_id != instructor_id:
        raise Forbidden(f"only instructor {instructor_id} or an admin sees these bookings")


def ensure_may_book(principal: Principal) -> None:
    """Students book for themselves; admins may book too (as themselves), instructors not."""
    if principal.role is Role.INSTRUCTOR:
        raise Forbidden("instructors cannot book slots; use a student account")


def is_student_of(principal: Principal, booking: BookingDocument) -> bool:
    """The caller made the booking: a student (or an admin, who books as themselves)."""
    return principal.role is not Role.INSTRUCTOR and principal.user_id == booking.student_id


def is_instructor_of(principal: Principal, booking: BookingDocument) -> bool:
    return principal.role is Role.INSTRUCTOR and principal.user_id == booking.instructor_id


def ensure_may_cancel(principal: Principal, booking: BookingDocument) -> None:
    """The booking's student, the slot's instructor or an admin cancels a booking."""
    if may_see_booking(principal, booking):
        return
    raise Forbidden(f"only the student or the instructor of booking {booking.id} cancels it")


def may_see_booking(principal: Principal, booking: BookingDocument) -> bool:
    return (
        principal.role is Role.ADMIN
        or is_student_of(principal, booking)
        or is_instructor_of(principal, booking)
    )


def audience_of(principal: Principal) -> Audience:
    """Which of the user's notifications the caller reads: an instructor those about their
    slots, anyone else (students; admins, who book as themselves) those about their own
    bookings."""
    return Audience.INSTRUCTOR if principal.role is Role.INSTRUCTOR else Audience.STUDENT
