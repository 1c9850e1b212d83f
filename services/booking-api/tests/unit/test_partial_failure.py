"""A store write failing half-way through a booking leaves no inconsistent state behind."""

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from pymongo.errors import AutoReconnect

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.ports import Storage
from slotstream_contracts.documents import BookingDocument, NotificationDocument, SlotDocument

from .test_api_idempotency import setup_slot

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


class FlakyStorage(MemoryStorage):
    """The memory store, with the slot's claim or release, booking or notification inserts
    failing on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_bookings = 0
        self.lose_booking_replies = 0  # the insert is applied, then its reply is lost
        self.fail_booking_reads = 0
        self.fail_notifications = 0
        self.fail_claims = 0  # the slot's claim fails before it is applied
        self.lose_claim_replies = 0  # the slot is claimed, then the claim's reply is lost
        self.fail_slot_reads = 0
        self.fail_releases = 0  # the slot's release fails before it is applied
        # Armed by the next claim or booking insert (applied or not), so that the reads
        # before it (the slot's bookability, a retry's look for its booking) still work:
        self.fail_slot_reads_after_claim = 0
        self.stall_slot_read_after_claim = 0.0  # seconds the first read back waits
        self.fail_booking_reads_after_insert = 0
        self._stall_next_slot_read = 0.0
        slots, bookings, notifications = self.slots, self.bookings, self.notifications
        original_slot_book = slots.book
        original_slot_get = slots.get
        original_slot_release = slots.release
        original_booking_insert = bookings.insert
        original_booking_get = bookings.get
        original_notification_insert = notifications.insert

        async def slot_book(
            slot_id: str, booking_id: str, student_id: str, now: datetime
        ) -> SlotDocument | None:
            self.fail_slot_reads += self.fail_slot_reads_after_claim
            self._stall_next_slot_read = self.stall_slot_read_after_claim
            self.fail_slot_reads_after_claim, self.stall_slot_read_after_claim = 0, 0.0
            if self.fail_claims:
                self.fail_claims -= 1
                raise AutoReconnect("connection lost while claiming the slot")
            claimed = await original_slot_book(slot_id, booking_id, student_id, now)
            if self.lose_claim_replies:
                self.lose_claim_replies -= 1
                raise AutoReconnect("connection lost before the claim's reply")
            return claimed

        async def slot_get(slot_id: str) -> SlotDocument | None:
            if self._stall_next_slot_read:
                stall, self._stall_next_slot_read = self._stall_next_slot_read, 0.0
                await asyncio.sleep(stall)
            if self.fail_slot_reads:
                self.fail_slot_reads -= 1
                raise AutoReconnect("connection lost while reading the slot")
            return await original_slot_get(slot_id)

        async def slot_release(
            slot_id: str, booking_id: str, now: datetime, version: int | None = None
        ) -> SlotDocument | None:
            if self.fail_releases:
                self.fail_releases -= 1
                raise AutoReconnect("connection lost while releasing the slot")
            if version is None:
                return await original_slot_release(slot_id, booking_id, now)
            return await original_slot_release(slot_id, booking_id, now, version)

        async def booking_insert(booking: BookingDocument) -> None:
            self.fail_booking_reads += self.fail_booking_reads_after_insert
            self.fail_booking_reads_after_insert = 0
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
        slots.release = slot_release  # type: ignore[method-assign]
        bookings.insert = booking_insert  # type: ignore[method-assign]
        bookings.get = booking_get  # type: ignore[method-assign]
        notifications.insert = notification_insert  # type: ignore[method-assign]


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
    flaky.fail_slot_reads_after_claim = 10
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503, failed.text
    flaky.fail_slot_reads = 0
    assert (await slot_state(client))["status"] == "booked"
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []


async def booked_once(client: httpx.AsyncClient, auth: AuthHeaders, booked: httpx.Response) -> None:
    """``booking_stands``, and the student and the instructor each told of it once."""
    await booking_stands(client, auth, booked)
    for user in (auth("s1"), auth("i1", "instructor")):
        notes = (await client.get("/api/users/me/notifications", headers=user)).json()
        assert [(n["kind"], n["bookingId"]) for n in notes] == [
            ("booking.created", booked.json()["id"])
        ]


@pytest.mark.parametrize("cut", ["insert-applied", "insert-not-applied", "claim"])
async def test_the_same_key_after_a_503_finishes_the_booking(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage, cut: str
) -> None:
    """The first try claims the slot and cannot tell whether its booking was stored (or
    whether its claim was applied): 503, the slot held. The page sends the request again
    with the same key; it used to be answered 409 "already booked", by the student's own
    first try, and the slot stayed booked by a booking that might not exist."""
    slot_id = await setup_slot(client, auth, future)
    if cut == "claim":
        flaky.lose_claim_replies = 1
        flaky.fail_slot_reads_after_claim = 3  # every read back of the claim
    else:
        flaky.lose_booking_replies = int(cut == "insert-applied")
        flaky.fail_bookings = int(cut == "insert-not-applied")
        flaky.fail_booking_reads_after_insert = 3  # every read back of the insert
    headers = {**auth("s1"), "Idempotency-Key": "book-1"}
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert failed.status_code == 503, failed.text
    assert failed.json()["type"].endswith("storage-unavailable")
    retry = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    await booked_once(client, auth, retry)
    replay = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert (replay.status_code, replay.json()) == (201, retry.json())
    assert replay.headers["idempotent-replayed"] == "true"


async def test_the_same_key_after_a_request_timeout_after_the_claim_finishes_the_booking(
    settings: Settings, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The request's timeout cuts it while it reads the slot back after its claim's reply
    was lost: 503 ``request-timeout``, the slot held by the claim. The retry with the same
    key makes the booking instead of answering 409."""
    quick = settings.model_copy(update={"request_timeout_seconds": 0.1})
    transport = httpx.ASGITransport(app=create_app(quick, storage=flaky))
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        slot_id = await setup_slot(client, auth, future)
        flaky.lose_claim_replies = 1
        flaky.stall_slot_read_after_claim = 0.3
        headers = {**auth("s1"), "Idempotency-Key": "book-1"}
        cut = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
        assert cut.status_code == 503, cut.text
        assert cut.json()["type"].endswith("request-timeout")
        assert (await slot_state(client))["status"] == "booked"
        retry = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
        await booked_once(client, auth, retry)
        await asyncio.sleep(0.3)  # the cut request's read back, shielded, ends


async def test_the_same_key_never_brings_back_a_booking_cancelled_meanwhile(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, flaky: FlakyStorage
) -> None:
    """The first try stored the booking and answered 503; the student found it in their
    list and cancelled it. A late retry of the first request books nothing: 409
    ``booking-cancelled`` naming the booking, the slot stays free."""
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads_after_insert = 3
    headers = {**auth("s1"), "Idempotency-Key": "book-1"}
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert failed.status_code == 503, failed.text
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    cancelled = await client.delete(f"/api/bookings/{mine['id']}", headers=auth("s1"))
    assert cancelled.status_code == 200
    late = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert late.status_code == 409, late.text
    assert late.json()["type"] == "urn:slotstream:problem:booking-cancelled"
    assert (late.json()["bookingId"], late.json()["slotId"]) == (mine["id"], slot_id)
    assert (await slot_state(client))["status"] == "available"
    [still] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert (still["id"], still["status"]) == (mine["id"], "cancelled")
