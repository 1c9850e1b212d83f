"""``Idempotency-Key``: a retried POST gets the first answer and changes nothing."""

from collections.abc import Callable

import httpx

from booking_api.adapters.memory import MemoryStorage

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
