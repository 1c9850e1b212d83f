from datetime import UTC, datetime, timedelta

import pytest

from booking_api.domain import authz, bookings
from booking_api.domain.errors import Conflict, Forbidden, NotFound
from booking_api.domain.notifications import booking_notifications
from slotstream_contracts.auth import Principal, Role
from slotstream_contracts.documents import BookingDocument, SlotDocument
from slotstream_contracts.entities import BookingStatus, NotificationKind, SlotStatus

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def principal(sub: str, role: Role) -> Principal:
    return Principal.model_validate({"sub": sub, "role": role})


def slot(status: SlotStatus, start: datetime = NOW + timedelta(days=1)) -> SlotDocument:
    return SlotDocument(
        id="s1",
        instructor_id="i1",
        start=start,
        end=start + timedelta(hours=1),
        status=status,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


BOOKING = BookingDocument(
    id="b1",
    slot_id="s1",
    instructor_id="i1",
    student_id="st1",
    slot_start=datetime(2026, 5, 5, 9, 30, tzinfo=UTC),
    slot_end=datetime(2026, 5, 5, 10, 30, tzinfo=UTC),
    status=BookingStatus.ACTIVE,
    version=1,
    created_at=NOW,
)


def test_slot_state_machine() -> None:
    assert bookings.can_move_slot(SlotStatus.AVAILABLE, SlotStatus.BOOKED)
    assert bookings.can_move_slot(SlotStatus.BOOKED, SlotStatus.AVAILABLE)
    assert bookings.can_move_slot(SlotStatus.AVAILABLE, SlotStatus.DELETED)
    assert not bookings.can_move_slot(SlotStatus.BOOKED, SlotStatus.DELETED)
    assert not bookings.can_move_slot(SlotStatus.DELETED, SlotStatus.AVAILABLE)


def test_booking_state_machine_is_one_way() -> None:
    assert bookings.can_move_booking(BookingStatus.ACTIVE, BookingStatus.CANCELLED)
    assert not bookings.can_move_booking(BookingStatus.CANCELLED, BookingStatus.ACTIVE)


def test_bookable_only_when_available_and_in_the_future() -> None:
    assert bookings.ensure_bookable(slot(SlotStatus.AVAILABLE), "s1", NOW).id == "s1"
    with pytest.raises(Conflict, match="slot s1 is already booked"):
        bookings.ensure_bookable(slot(SlotStatus.BOOKED), "s1", NOW)
    with pytest.raises(NotFound):
        bookings.ensure_bookable(slot(SlotStatus.DELETED), "s1", NOW)
    with pytest.raises(NotFound):
        bookings.ensure_bookable(None, "s1", NOW)
    with pytest.raises(Conflict, match="already started"):
        bookings.ensure_bookable(slot(SlotStatus.AVAILABLE, NOW), "s1", NOW)


def test_lost_race_names_the_slot() -> None:
    error = bookings.lost_race(slot(SlotStatus.BOOKED), "s1")
    assert isinstance(error, Conflict)
    assert error.extra["slotId"] == "s1"
    assert isinstance(bookings.lost_race(None, "s1"), NotFound)


def test_only_the_instructor_or_an_admin_edits_a_schedule() -> None:
    authz.ensure_may_edit_schedule(principal("i1", Role.INSTRUCTOR), "i1")
    authz.ensure_may_edit_schedule(principal("root", Role.ADMIN), "i1")
    with pytest.raises(Forbidden):
        authz.ensure_may_edit_schedule(principal("i2", Role.INSTRUCTOR), "i1")
    with pytest.raises(Forbidden):
        authz.ensure_may_edit_schedule(principal("i1", Role.STUDENT), "i1")


def test_instructor_profiles_use_the_user_id() -> None:
    authz.ensure_may_create_instructor(principal("i1", Role.INSTRUCTOR), "i1")
    authz.ensure_may_create_instructor(principal("root", Role.ADMIN), "anyone")
    with pytest.raises(Forbidden):
        authz.ensure_may_create_instructor(principal("i1", Role.INSTRUCTOR), "i2")
    with pytest.raises(Forbidden):
        authz.ensure_may_create_instructor(principal("s1", Role.STUDENT), "s1")


def test_who_may_book_and_cancel() -> None:
    authz.ensure_may_book(principal("st1", Role.STUDENT))
    with pytest.raises(Forbidden):
        authz.ensure_may_book(principal("i1", Role.INSTRUCTOR))
    authz.ensure_may_cancel(principal("st1", Role.STUDENT), BOOKING)
    authz.ensure_may_cancel(principal("i1", Role.INSTRUCTOR), BOOKING)
    authz.ensure_may_cancel(principal("root", Role.ADMIN), BOOKING)
    with pytest.raises(Forbidden):
        authz.ensure_may_cancel(principal("st2", Role.STUDENT), BOOKING)
    with pytest.raises(Forbidden):
        authz.ensure_may_cancel(principal("i2", Role.INSTRUCTOR), BOOKING)


def test_notifications_go_to_instructor_then_student() -> None:
    """They name the people and the time, never a raw id (issue 13: the student's message
    read "(booking 6b0e38e9…)")."""
    booked = BOOKING.model_copy(update={"student_name": "Grace"})
    to_instructor, to_student = booking_notifications(
        booked, NotificationKind.BOOKING_CREATED, "Ada Lovelace"
    )
    assert to_instructor.user_id == "i1"
    assert to_instructor.message == "Grace booked your slot on 2026-05-05 09:30 UTC."
    assert to_student.user_id == "st1"
    assert to_student.message == "You booked Ada Lovelace on 2026-05-05 09:30 UTC."
    cancelled = booking_notifications(BOOKING, NotificationKind.BOOKING_CANCELLED, None, "Ada")
    assert cancelled[0].message.endswith("by a student was cancelled by Ada.")
    assert (
        cancelled[1].message
        == "Your booking with your instructor on 2026-05-05 09:30 UTC was cancelled by Ada."
    )
    for draft in (*cancelled, to_student, to_instructor):
        assert "b1" not in draft.message
        assert "st1" not in draft.message


def test_a_cancellation_reason_reaches_the_student() -> None:
    gone = BOOKING.model_copy(update={"cancel_reason": "I am ill, sorry"})
    _, to_student = booking_notifications(
        gone, NotificationKind.BOOKING_CANCELLED, "Ada Lovelace", "Ada Lovelace"
    )
    assert to_student.message == (
        "Your booking with Ada Lovelace on 2026-05-05 09:30 UTC was cancelled by "
        "Ada Lovelace: I am ill, sorry"
    )
