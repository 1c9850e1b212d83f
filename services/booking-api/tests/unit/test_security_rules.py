"""Issue 10 on the API: decisions on role and id, names, quota, caching, docs."""

from collections.abc import Callable

import httpx

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


async def slot_of(client: httpx.AsyncClient, auth: AuthHeaders, future: Future, iid: str) -> str:
    """A fresh slot of instructor ``iid`` (whose profile an admin creates if missing)."""
    await client.post(
        "/api/instructors", json={"id": iid, "name": "Shared"}, headers=auth("root", "admin")
    )
    created = await client.post(
        f"/api/instructors/{iid}/slots",
        json={"start": future(days=2), "end": future(days=2, hours=1)},
        headers=auth(iid, "instructor"),
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def book(client: httpx.AsyncClient, auth: AuthHeaders, slot_id: str, sub: str) -> str:
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth(sub))
    assert booked.status_code == 201, booked.text
    return str(booked.json()["id"])


async def test_a_student_sharing_an_instructors_id_cannot_cancel_bookings_of_that_schedule(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """Item 9: instructor "twin" (created by an admin) and student "twin" are different
    people; the student may not act as the instructor."""
    slot_id = await slot_of(client, auth, future, "twin")
    booking_id = await book(client, auth, slot_id, "other")

    as_student = await client.delete(f"/api/bookings/{booking_id}", headers=auth("twin"))
    assert as_student.status_code == 403, as_student.text
    assert as_student.headers["content-type"] == "application/problem+json"
    mine = await client.get("/api/users/me/bookings", headers=auth("twin"))
    assert mine.json() == []

    theirs = await client.get("/api/users/me/bookings", headers=auth("twin", "instructor"))
    assert [b["id"] for b in theirs.json()] == [booking_id]
    as_instructor = await client.delete(
        f"/api/bookings/{booking_id}", headers=auth("twin", "instructor")
    )
    assert as_instructor.status_code == 200, as_instructor.text


async def test_an_instructor_sharing_a_students_id_cannot_cancel_that_students_booking(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    slot_id = await slot_of(client, auth, future, "i1")
    booking_id = await book(client, auth, slot_id, "twin")

    as_instructor = await client.delete(
        f"/api/bookings/{booking_id}", headers=auth("twin", "instructor")
    )
    assert as_instructor.status_code == 403, as_instructor.text
    seen = await client.get("/api/users/me/bookings", headers=auth("twin", "instructor"))
    assert seen.json() == []

    assert [
        b["id"] for b in (await client.get("/api/users/me/bookings", headers=auth("twin"))).json()
    ] == [booking_id]
    by_admin = await client.delete(f"/api/bookings/{booking_id}", headers=auth("root", "admin"))
    assert by_admin.status_code == 200, by_admin.text
