from datetime import UTC, datetime, timedelta

import pytest

from booking_api.ports import DuplicateKey, Storage
from slotstream_contracts.documents import BookingDocument
from slotstream_contracts.entities import BookingStatus

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def booking(
    booking_id: str, slot_id: str, student_id: str = "st1", minute: int = 0
) -> BookingDocument:
    return BookingDocument(
        id=booking_id,
        slot_id=slot_id,
        instructor_id="i1",
        student_id=student_id,
        slot_start=NOW + timedelta(days=1),
        slot_end=NOW + timedelta(days=1, hours=1),
        status=BookingStatus.ACTIVE,
        version=1,
        created_at=NOW + timedelta(minutes=minute),
    )


async def test_insert_get_and_one_active_booking_per_slot(storage: Storage) -> None:
    await storage.bookings.insert(booking("b1", "s1"))
    assert await storage.bookings.get("b1") == booking("b1", "s1")
    with pytest.raises(DuplicateKey):
        await storage.bookings.insert(booking("b1", "s9"))
    with pytest.raises(DuplicateKey):
        await storage.bookings.insert(booking("b2", "s1", student_id="st2"))
    await storage.bookings.cancel("b1", NOW)
    await storage.bookings.insert(booking("b3", "s1", student_id="st2"))


async def test_cancel_is_compare_and_set(storage: Storage) -> None:
    await storage.bookings.insert(booking("b1", "s1"))
    cancelled = await storage.bookings.cancel("b1", NOW + timedelta(hours=1))
    assert cancelled is not None
    assert cancelled.status is BookingStatus.CANCELLED
    assert cancelled.cancelled_at == NOW + timedelta(hours=1)
    assert cancelled.version == 2
    assert cancelled.cancel_reason is None
    assert await storage.bookings.cancel("b1", NOW) is None
    assert await storage.bookings.cancel("missing", NOW) is None


async def test_cancel_keeps_the_reason_and_the_student_name(storage: Storage) -> None:
    named = booking("b1", "s1").model_copy(update={"student_name": "Grace Hopper"})
    await storage.bookings.insert(named)
    cancelled = await storage.bookings.cancel("b1", NOW, "I am ill, sorry")
    assert cancelled is not None
    assert cancelled.cancel_reason == "I am ill, sorry"
    assert cancelled.student_name == "Grace Hopper"
    assert await storage.bookings.get("b1") == cancelled


async def test_listing_for_student_and_instructor_newest_first(storage: Storage) -> None:
    await storage.bookings.insert(booking("b1", "s1", minute=1))
    await storage.bookings.insert(booking("b2", "s2", minute=3))
    await storage.bookings.insert(booking("b3", "s3", student_id="st2", minute=2))
    assert [b.id for b in await storage.bookings.list_for_student("st1", 10)] == ["b2", "b1"]
    assert [b.id for b in await storage.bookings.list_for_instructor("i1", 10)] == [
        "b2",
        "b3",
        "b1",
    ]
    assert [b.id for b in await storage.bookings.list_for_instructor("i1", 1)] == ["b2"]
    assert await storage.bookings.list_for_student("nobody", 10) == []
    # A student and an instructor may share an id: each list is one role's.
    assert await storage.bookings.list_for_student("i1", 10) == []
    assert await storage.bookings.list_for_instructor("st1", 10) == []


async def test_counting_a_students_active_bookings_up_to_a_limit(storage: Storage) -> None:
    for n in range(4):
        await storage.bookings.insert(booking(f"b{n}", f"s{n}"))
    await storage.bookings.insert(booking("other", "s9", student_id="st2"))
    await storage.bookings.cancel("b0", NOW)
    assert await storage.bookings.count_active_for_student("st1", 10, NOW) == 3
    assert await storage.bookings.count_active_for_student("st1", 2, NOW) == 2
    assert await storage.bookings.count_active_for_student("i1", 10, NOW) == 0
    assert await storage.bookings.count_active_for_student("nobody", 10, NOW) == 0


async def test_active_bookings_of_lessons_that_are_over_are_not_counted(
    storage: Storage,
) -> None:
    """The quota counts what a student holds of the schedule: a booking whose slot has
    ended (``slotEnd`` at or before ``now``) holds nothing."""
    await storage.bookings.insert(booking("past", "s1"))
    await storage.bookings.insert(
        booking("later", "s2").model_copy(
            update={
                "slot_start": NOW + timedelta(days=2),
                "slot_end": NOW + timedelta(days=2, hours=1),
            }
        )
    )
    lesson_end = NOW + timedelta(days=1, hours=1)
    count = storage.bookings.count_active_for_student
    assert await count("st1", 10, lesson_end - timedelta(milliseconds=1)) == 2
    assert await count("st1", 10, lesson_end) == 1
    assert await count("st1", 10, NOW + timedelta(days=3)) == 0


async def test_insert_is_idempotent_by_booking_id(storage: Storage) -> None:
    """A retried insert whose first attempt was applied (its reply lost) succeeds and
    stores the booking once; another document under the same id is still refused."""
    await storage.bookings.insert(booking("b1", "s1"))
    await storage.bookings.insert(booking("b1", "s1"))
    assert [b.id for b in await storage.bookings.list_for_student("st1", 10)] == ["b1"]
    with pytest.raises(DuplicateKey):
        await storage.bookings.insert(booking("b1", "s1", student_id="st2"))
