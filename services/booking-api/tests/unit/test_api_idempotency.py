"""``Idempotency-Key``: a retried POST gets the first answer and changes nothing."""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from booking_api.adapters.memory import IDEMPOTENCY, MemoryStorage
from booking_api.api.idempotency import fingerprint, record_id
from booking_api.api.schemas import BookingCreate
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.ports import IdempotencyRecord
from slotstream_contracts.auth import JwtSettings
from slotstream_contracts.documents import BookingDocument, NotificationDocument

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


async def setup_slot(client: httpx.AsyncClient, auth: AuthHeaders, future: Future) -> str:
    await client.post("/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor"))
    response = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(), "end": future(hours=1)},
        headers=auth("i1", "instructor"),
    )
    slot_id: str = response.json()["id"]
    return slot_id


async def test_retry_replays_the_first_response_and_changes_nothing(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, memory_storage: MemoryStorage
) -> None:
    slot_id = await setup_slot(client, auth, future)
    headers = {**auth("s1"), "Idempotency-Key": "book-1"}
    first = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert first.status_code == 201
    changes = len(memory_storage.changelog.read_after(None))
    retry = await client.post(
        "/api/bookings",
        content=f'{{ "slotId" : "{slot_id}" }}',
        headers={**headers, "content-type": "application/json"},
    )
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert len(memory_storage.changelog.read_after(None)) == changes
    bookings = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert len(bookings) == 1


async def test_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    slot_id = await setup_slot(client, auth, future)
    headers = {**auth("s1"), "Idempotency-Key": "book-1"}
    await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    other = await client.post("/api/bookings", json={"slotId": "other"}, headers=headers)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert "different request" in other.json()["detail"]


async def test_keys_are_scoped_per_user(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    slot_id = await setup_slot(client, auth, future)
    first = await client.post(
        "/api/bookings", json={"slotId": slot_id}, headers={**auth("s1"), "Idempotency-Key": "k"}
    )
    second = await client.post(
        "/api/bookings", json={"slotId": slot_id}, headers={**auth("s2"), "Idempotency-Key": "k"}
    )
    assert first.status_code == 201
    assert second.status_code == 409
    assert "idempotent-replayed" not in second.headers


async def test_a_refusal_is_replayed_too(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    slot_id = await setup_slot(client, auth, future)
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    headers = {**auth("s2"), "Idempotency-Key": "k"}
    refused = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    # The slot is free again, but the retry still gets the first answer.
    freed = await client.delete(f"/api/bookings/{booked.json()['id']}", headers=auth("s1"))
    assert freed.status_code == 200
    again = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert (refused.status_code, again.status_code) == (409, 409)
    assert again.json() == refused.json()
    assert again.headers["content-type"] == "application/problem+json"


async def test_slot_and_instructor_posts_are_idempotent(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    headers = {**auth("i1", "instructor"), "Idempotency-Key": "create-me"}
    first = await client.post("/api/instructors", json={"name": "Ada"}, headers=headers)
    again = await client.post("/api/instructors", json={"name": "Ada"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    body = {"start": future(), "end": future(hours=1)}
    slot_headers = {**auth("i1", "instructor"), "Idempotency-Key": "slot-1"}
    one = await client.post("/api/instructors/i1/slots", json=body, headers=slot_headers)
    two = await client.post("/api/instructors/i1/slots", json=body, headers=slot_headers)
    assert one.json() == two.json()
    schedule = (await client.get("/api/instructors/i1/schedule")).json()
    assert len(schedule["slots"]) == 1


async def test_invalid_keys_are_refused(client: httpx.AsyncClient, auth: AuthHeaders) -> None:
    response = await client.post(
        "/api/bookings",
        json={"slotId": "s1"},
        headers={**auth("s1"), "Idempotency-Key": "k" * 256},
    )
    assert response.status_code == 422
    assert "header.Idempotency-Key" in response.json()["detail"]


async def test_a_pending_record_left_by_a_crash_is_taken_over_after_the_request_timeout(
    client: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    memory_storage: MemoryStorage,
    settings: Settings,
) -> None:
    """A process that died mid-request leaves its record pending. Younger than the request
    timeout it may still be running (409); older, no live request can hold it: the retry
    runs (it used to get 409 until the record expired, 24 h later)."""
    slot_id = await setup_slot(client, auth, future)
    now = datetime.now(UTC)
    body = BookingCreate.model_validate({"slotId": slot_id})
    crashed = IdempotencyRecord(
        id=record_id("s1", "student", "book-1"),
        user_id="s1",
        fingerprint=fingerprint("POST", "/api/bookings", body),
        state="pending",
        created_at=now - timedelta(seconds=settings.request_timeout_seconds + 1),
        expires_at=now + timedelta(hours=23),
    )
    running = crashed.model_copy(
        update={
            "id": record_id("s1", "student", "book-2"),
            "created_at": now - timedelta(seconds=1),
        }
    )
    for record in (crashed, running):
        await memory_storage.idempotency.reserve(record, now, stale_before=now, max_per_user=10)
    headers = {**auth("s1"), "Idempotency-Key": "book-2"}
    busy = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert busy.status_code == 409
    assert busy.json()["type"].endswith("idempotency-in-progress")
    headers = {**auth("s1"), "Idempotency-Key": "book-1"}
    taken_over = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert taken_over.status_code == 201, taken_over.text
    replay = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
    assert replay.status_code == 201
    assert replay.json() == taken_over.json()


async def test_each_user_holds_at_most_the_configured_number_of_keys(
    jwt_settings: JwtSettings, auth: AuthHeaders, memory_storage: MemoryStorage
) -> None:
    settings = Settings(storage="memory", jwt=jwt_settings, idempotency_max_keys_per_user=3)
    app = create_app(settings, storage=memory_storage)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        answers = [
            await client.post(
                "/api/instructors",
                json={"name": "Ada"},
                headers={**auth("i1", "instructor"), "Idempotency-Key": f"k{n}"},
            )
            for n in range(4)
        ]
        assert [a.status_code for a in answers] == [201, 409, 409, 429]
        refused = answers[-1]
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= settings.idempotency_ttl_seconds
        assert "Idempotency-Key" in refused.json()["detail"]
        # A replay of a key already held is still answered; another user is not affected.
        replay = await client.post(
            "/api/instructors",
            json={"name": "Ada"},
            headers={**auth("i1", "instructor"), "Idempotency-Key": "k0"},
        )
        assert replay.headers["idempotent-replayed"] == "true"
        other = await client.post(
            "/api/instructors",
            json={"name": "Bob"},
            headers={**auth("i2", "instructor"), "Idempotency-Key": "k0"},
        )
        assert other.status_code == 201


async def test_the_memory_store_sweeps_expired_records() -> None:
    """Keys that are never used again must not pile up for ever: memory stays bounded."""
    storage = MemoryStorage()
    start = datetime(2026, 5, 4, tzinfo=UTC)
    for n in range(5_000):
        now = start + timedelta(seconds=n)
        record = IdempotencyRecord(
            id=f"r{n}",
            user_id=f"u{n % 50}",
            fingerprint="f",
            state="pending",
            created_at=now,
            expires_at=now + timedelta(seconds=100),
        )
        await storage.idempotency.reserve(record, now, stale_before=now, max_per_user=1_000)
        assert len(storage.collections[IDEMPOTENCY]) <= 101


@pytest.mark.parametrize("slow", ["notification", "booking-reply"])
async def test_a_booking_committed_before_the_request_timeout_is_answered_as_made(
    settings: Settings,
    auth: AuthHeaders,
    future: Future,
    memory_storage: MemoryStorage,
    slow: str,
) -> None:
    """The timeout fires once the booking is stored (while its notifications are written,
    or before the insert's reply): the answer is 201, not 503 "retry", whose retry would be
    refused as a double booking of the student's own slot; the notifications are written."""
    quick = settings.model_copy(update={"request_timeout_seconds": 0.2})
    app = create_app(quick, storage=memory_storage)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        slot_id = await setup_slot(client, auth, future)
        insert_note = memory_storage.notifications.insert
        insert_booking = memory_storage.bookings.insert

        async def slow_note(note: NotificationDocument) -> None:
            await asyncio.sleep(0.5)
            await insert_note(note)

        async def slow_reply(booking: BookingDocument) -> None:
            await insert_booking(booking)
            await asyncio.sleep(0.5)

        if slow == "notification":
            memory_storage.notifications.insert = slow_note  # type: ignore[method-assign,assignment]
        else:
            memory_storage.bookings.insert = slow_reply  # type: ignore[method-assign]
        headers = {**auth("s1"), "Idempotency-Key": "book-slow"}
        first = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
        assert first.status_code == 201, first.text
        retry = await client.post("/api/bookings", json={"slotId": slot_id}, headers=headers)
        assert (retry.status_code, retry.json()) == (201, first.json())
        notes = await client.get("/api/users/me/notifications", headers=auth("s1"))
        assert [note["bookingId"] for note in notes.json()] == [first.json()["id"]]
