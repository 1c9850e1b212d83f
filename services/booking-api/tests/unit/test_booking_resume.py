"""A booking sent again with the same Idempotency-Key finishes what an earlier try started.

The booking id of a request with a key is derived from the caller, the key and the slot,
so a retry recognises the slot as held by its own booking (``BookingService.book``). The
API drops a key's record after a 5xx; these tests call the service directly, as the
retry does then, with the memory store failing on demand.
"""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect

from booking_api.domain.errors import Conflict
from booking_api.service import BookingService
from slotstream_contracts.auth import Principal, Role
from slotstream_contracts.documents import BookingDocument, NotificationDocument, SlotDocument
from slotstream_contracts.entities import Audience, BookingStatus, SlotStatus

from .test_partial_failure import FlakyStorage

ADA = Principal(sub="i1", role=Role.INSTRUCTOR, name="Ada")
GRACE = Principal(sub="s1", role=Role.STUDENT, name="Grace")
ALAN = Principal(sub="s2", role=Role.STUDENT, name="Alan")
LIMIT = 20


pytestmark = pytest.mark.usefixtures("no_read_back_pauses")


@pytest.fixture
def service(flaky: FlakyStorage) -> BookingService:
    return BookingService(flaky)


@pytest.fixture
async def slot_id(service: BookingService) -> str:
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slot = await service.create_slot(ADA, "i1", start, start + timedelta(hours=1))
    return slot.id


async def slot(flaky: FlakyStorage, slot_id: str) -> SlotDocument:
    found = await flaky.slots.get(slot_id)
    assert found is not None
    return found


async def bookings_of_grace(flaky: FlakyStorage) -> list[BookingDocument]:
    return await flaky.bookings.list_for_student("s1", 10)


async def notes(flaky: FlakyStorage) -> list[NotificationDocument]:
    """Every notification of Grace and of Ada."""
    now = datetime.now(UTC)
    student = await flaky.notifications.list_for_user(
        "s1", 50, False, audience=Audience.STUDENT, now=now
    )
    teacher = await flaky.notifications.list_for_user(
        "i1", 50, False, audience=Audience.INSTRUCTOR, now=now
    )
    return student + teacher


async def told_once(flaky: FlakyStorage, booking: BookingDocument) -> None:
    """Grace and Ada each told of ``booking`` once, and of nothing else."""
    assert sorted((n.user_id, n.kind.value, n.booking_id) for n in await notes(flaky)) == [
        ("i1", "booking.created", booking.id),
        ("s1", "booking.created", booking.id),
    ]


async def made(flaky: FlakyStorage, slot_id: str, booking: BookingDocument) -> None:
    """``booking`` is Grace's one booking, active, holding the slot; both were told once."""
    assert await bookings_of_grace(flaky) == [booking]
    assert booking.status is BookingStatus.ACTIVE
    held = await slot(flaky, slot_id)
    assert (held.status, held.booking_id) == (SlotStatus.BOOKED, booking.id)
    await told_once(flaky, booking)


async def test_a_retry_answers_the_booking_an_unresolved_try_stored(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    """Stored, but the first try could not tell: the retry answers that booking (the same
    document), and the notifications the first try never sent are sent now."""
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads_after_insert = 3
    with pytest.raises(AutoReconnect):
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    [stored] = await bookings_of_grace(flaky)
    assert await notes(flaky) == []
    booking = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert booking == stored
    await made(flaky, slot_id, booking)


async def test_a_retry_writes_the_booking_an_unresolved_try_did_not_store(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    flaky.fail_bookings = 1
    flaky.fail_booking_reads_after_insert = 3
    with pytest.raises(AutoReconnect):
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    held = await slot(flaky, slot_id)
    assert held.status is SlotStatus.BOOKED
    assert await bookings_of_grace(flaky) == []
    booking = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert booking.id == held.booking_id
    await made(flaky, slot_id, booking)


async def test_a_retry_after_a_successful_try_answers_it_and_tells_nobody_twice(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    """The first try succeeded but its answer was never kept (its idempotency record was
    lost): the retry answers the same booking and writes no second notification."""
    first = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    again = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert again == first
    await made(flaky, slot_id, first)


async def test_a_retry_sends_a_notification_the_first_try_lost(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    flaky.fail_notifications = 1  # the instructor's (written first) is lost
    first = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert len(await notes(flaky)) == 1
    assert await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1") == first
    await made(flaky, slot_id, first)


async def test_two_concurrent_tries_with_one_key_make_one_booking(
    flaky: FlakyStorage, slot_id: str
) -> None:
    """The idempotency record answers a second try 409 while the first runs; should both
    run anyway (a record taken over from a slow process), they make one booking, which
    both answer, and one notification each. A clock that moves on at every reading gives
    each try its own creation time, so the second insert under the id is refused and the
    loser answers the winner's booking, not its own."""
    ticks = itertools.count()
    start = datetime.now(UTC)
    service = BookingService(flaky, clock=lambda: start + timedelta(milliseconds=next(ticks)))
    first, second = await asyncio.gather(
        service.book(GRACE, slot_id, LIMIT, idempotency_key="k1"),
        service.book(GRACE, slot_id, LIMIT, idempotency_key="k1"),
    )
    assert first == second
    await made(flaky, slot_id, first)


async def test_a_retry_after_the_compensation_claims_again_with_the_same_booking_id(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    """The first try knew its booking was not stored and freed the slot (compensation):
    the retry claims it again under the same booking id, which no document has yet."""
    claims: list[str | None] = []
    book = flaky.slots.book

    async def recorded(
        slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument | None:
        claims.append(booking_id)
        return await book(slot_id, booking_id, student_id, now)

    flaky.slots.book = recorded  # type: ignore[method-assign]
    flaky.fail_bookings = 1
    with pytest.raises(AutoReconnect):
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert (await slot(flaky, slot_id)).status is SlotStatus.AVAILABLE
    assert claims[0] is not None
    assert await flaky.bookings.get(claims[0]) is None
    booking = await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert claims == [booking.id, booking.id]
    await made(flaky, slot_id, booking)


async def test_a_retry_never_brings_back_a_booking_cancelled_meanwhile(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    """The first try stored the booking but answered 503; Grace saw it in her list and
    cancelled it. The retry must not book the slot again under her key: 409
    ``booking-cancelled``, naming the booking; the slot stays free."""
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads_after_insert = 3
    with pytest.raises(AutoReconnect):
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    [stored] = await bookings_of_grace(flaky)
    await service.cancel(GRACE, stored.id)
    with pytest.raises(Conflict) as refused:
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    assert refused.value.kind == "booking-cancelled"
    assert refused.value.extra == {"bookingId": stored.id, "slotId": slot_id}
    assert [b.status for b in await bookings_of_grace(flaky)] == [BookingStatus.CANCELLED]
    assert (await slot(flaky, slot_id)).status is SlotStatus.AVAILABLE


async def test_a_slot_held_by_another_booking_is_still_taken(
    service: BookingService, flaky: FlakyStorage, slot_id: str
) -> None:
    """Another key of the same student, or another student with the same key: another
    booking id, so 409 as before; without a key nothing is resumed either."""
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads_after_insert = 3
    with pytest.raises(AutoReconnect):
        await service.book(GRACE, slot_id, LIMIT, idempotency_key="k1")
    for who, key in ((GRACE, "k2"), (ALAN, "k1"), (GRACE, None)):
        with pytest.raises(Conflict, match="already booked"):
            await service.book(who, slot_id, LIMIT, idempotency_key=key)
    assert len(await bookings_of_grace(flaky)) == 1
