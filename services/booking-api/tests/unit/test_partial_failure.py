"""A store write failing half-way through a booking leaves no inconsistent state behind."""

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect

from booking_api.adapters.memory import MemoryStorage
from booking_api.ports import Storage
from slotstream_contracts.documents import BookingDocument, NotificationDocument, SlotDocument

from .test_api_idempotency import setup_slot

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


class FlakyStorage(MemoryStorage):
    """The memory store, with the slot's claim, booking or notification inserts failing
    on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_bookings = 0
        self.lose_booking_replies = 0  # the insert is applied, then its reply is lost
        self.fail_booking_reads = 0
        self.fail_notifications = 0
        self.fail_claims = 0  # the slot's claim fails before it is applied
        self.lose_claim_replies = 0  # the slot is claimed, then the claim's reply is lost
        self.fail_slot_reads = 0
        slots, bookings, notifications = self.slots, self.bookings, self.notifications
        original_slot_book = slots.book
        original_slot_get = slots.get
        original_booking_insert = bookings.insert
        original_booking_get = bookings.get
        original_notification_insert = notifications.insert

        async def slot_book(
            slot_id: str, booking_id: str, student_id: str, now: datetime
        ) -> SlotDocument | None:
            if self.fail_claims:
                self.fail_claims -= 1
                raise AutoReconnect("connection lost while claiming the slot")
            claimed = await original_slot_book(slot_id, booking_id, student_id, now)
            if self.lose_claim_replies:
                self.lose_claim_replies -= 1
                raise AutoReconnect("connection lost before the claim's reply")
            return claimed

        async def slot_get(slot_id: str) -> SlotDocument | None:
            if self.fail_slot_reads:
                self.fail_slot_reads -= 1
                raise AutoReconnect("connection lost while reading the slot")
            return await original_slot_get(slot_id)

        async def booking_insert(booking: BookingDocument) -> None:
            if self.fail_bookings:
                self.fail_bookings -= 1
                raise AutoReconnect("connection lost while inserting the booking")
            await original_booking_insert(booking)
            if self.lose_booking_replies:
                self.lose_booking_replies -= 1
                raise AutoReconnect("connection lost before the insert's reply")

        async def booking_get(booking_id: str) -> BookingDocument | None:
            if self.fail_booking_reads:
                self.fail_booking_reads -= 1
                raise AutoReconnect("connection lost while reading the booking")
            return await original_booking_get(booking_id)

        async def notification_insert(notification: NotificationDocument) -> None:
            if self.fail_notifications:
                self.fail_notifications -= 1
                raise AutoReconnect("connection lost while inserting a notification")
            await original_notification_insert(notification)

        slots.book = slot_book  # type: ignore[method-assign]
        slots.get = slot_get  # type: ignore[method-assign]
        bookings.insert = booking_insert  # type: ignore[method-assign]
        bookings.get = booking_get  # type: ignore[method-assign]
        notifications.insert = notification_insert  # type: ignore[method-assign]


@pytest.fixture
def flaky() -> FlakyStorage:
    return FlakyStorage()


@pytest.fixture
def storage(flaky: FlakyStorage) -> Storage:
    return flaky


async def slot_state(client: httpx.AsyncClient) -> dict[str, Any]:
    [slot] = (await client.get("/api/instructors/i1/schedule")).json()["slots"]
    state: dict[str, Any] = slot
    return state


async def test_failed_booking_insert_frees_the_slot_again(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    await client.post("/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor"))
    slot = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(), "end": future(hours=1)},
        headers=auth("i1", "instructor"),
    )
    flaky.fail_bookings = 1
    failed = await client.post(
        "/api/bookings", json={"slotId": slot.json()["id"]}, headers=auth("s1")
    )
    assert failed.status_code == 503
    state = await slot_state(client)
    assert state["status"] == "available"
    assert state["version"] == 3  # booked (2), then released by the compensation (3)
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []
    retry = await client.post(
        "/api/bookings", json={"slotId": slot.json()["id"]}, headers=auth("s1")
    )
    assert retry.status_code == 201


async def test_lost_notification_does_not_undo_the_booking(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    await client.post("/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor"))
    slot = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(), "end": future(hours=1)},
        headers=auth("i1", "instructor"),
    )
    flaky.fail_notifications = 1
    booked = await client.post(
        "/api/bookings", json={"slotId": slot.json()["id"]}, headers=auth("s1")
    )
    assert booked.status_code == 201
    assert (await slot_state(client))["status"] == "booked"
    instructor_notes = await client.get(
        "/api/users/me/notifications", headers=auth("i1", "instructor")
    )
    student_notes = await client.get("/api/users/me/notifications", headers=auth("s1"))
    assert len(instructor_notes.json()) + len(student_notes.json()) == 1


async def booking_stands(
    client: httpx.AsyncClient, auth: AuthHeaders, booked: httpx.Response
) -> None:
    """Answered 201, the slot held by that booking, and the booking s1's active one."""
    assert booked.status_code == 201, booked.text
    state = await slot_state(client)
    assert (state["status"], state["bookingId"]) == ("booked", booked.json()["id"])
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert (mine["id"], mine["status"]) == (booked.json()["id"], "active")


async def test_insert_applied_but_reply_lost_keeps_the_booking_and_the_slot(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The ambiguous failure: the booking is stored, only the reply is lost. Reading it
    back shows it exists, so the slot is not freed under an active booking."""
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_booking_replies = 1
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    await booking_stands(client, auth, booked)
    taken = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s2"))
    assert taken.status_code == 409


async def test_an_unresolved_insert_leaves_the_slot_held_rather_than_free(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The insert applied, its reply lost, and the store cannot be read back either: the
    slot is not released (it may have an active booking); the caller gets the error."""
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads = 10
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503
    flaky.fail_booking_reads = 0
    assert (await slot_state(client))["status"] == "booked"
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert mine["status"] == "active"


async def test_a_claim_applied_but_its_reply_lost_still_makes_the_booking(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The slot's compare-and-set is applied, only its reply is lost: reading the slot back
    shows it is held for this booking, so the booking is made (201). It used to answer
    503 and leave the slot booked by a booking that does not exist: the student's retry
    got 409 "already booked", and nobody could ever book or withdraw the slot."""
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_claim_replies = 1
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    await booking_stands(client, auth, booked)
    notes = await client.get("/api/users/me/notifications", headers=auth("s1"))
    assert [n["kind"] for n in notes.json()] == ["booking.created"]


async def test_a_claim_that_failed_before_it_was_applied_books_nothing(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The read-back after a failed claim finds the slot free (or someone else's): the
    caller gets the error, nothing is stored, and a retry books normally."""
    slot_id = await setup_slot(client, auth, future)
    flaky.fail_claims = 1
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503
    assert (await slot_state(client))["status"] == "available"
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []
    retry = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert retry.status_code == 201, retry.text


async def test_an_unresolved_claim_answers_the_error(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The claim's reply is lost and the slot cannot be read back either: the caller gets
    the error (503, retry later), not a booking the service cannot vouch for."""
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_claim_replies = 1
    flaky.fail_slot_reads = 10
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503, failed.text
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []
