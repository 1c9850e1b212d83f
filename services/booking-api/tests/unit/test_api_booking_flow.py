"""The API end to end on the memory backend: every route's success path and its errors."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from slotstream_contracts.documents import SLOTS, SlotDocument

from .test_api_idempotency import setup_slot

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]
PROBLEM = "application/problem+json"


async def make_instructor(client: httpx.AsyncClient, auth: AuthHeaders, iid: str = "i1") -> None:
    response = await client.post(
        "/api/instructors",
        json={"name": "Ada", "timezone": "Europe/Berlin"},
        headers=auth(iid, "instructor", "Ada"),
    )
    assert response.status_code == 201, response.text


async def make_slot(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, hours: float = 0, iid: str = "i1"
) -> dict[str, object]:
    response = await client.post(
        f"/api/instructors/{iid}/slots",
        json={"start": future(hours=hours), "end": future(hours=hours + 1)},
        headers=auth(iid, "instructor"),
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_instructors_are_created_and_listed(
    client: httpx.AsyncClient, auth: AuthHeaders
) -> None:
    await make_instructor(client, auth)
    listed = await client.get("/api/instructors")
    assert listed.status_code == 200
    [only] = listed.json()
    assert only["id"] == "i1"
    assert only["name"] == "Ada"
    assert only["timezone"] == "Europe/Berlin"
    assert "createdAt" in only
    again = await client.post(
        "/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor")
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM


async def test_admin_chooses_ids_instructors_cannot(
    client: httpx.AsyncClient, auth: AuthHeaders
) -> None:
    by_admin = await client.post(
        "/api/instructors", json={"id": "i9", "name": "Bob"}, headers=auth("root", "admin")
    )
    assert by_admin.status_code == 201
    assert by_admin.json()["id"] == "i9"
    unnamed = await client.post(
        "/api/instructors", json={"name": "Cy"}, headers=auth("root", "admin")
    )
    assert unnamed.status_code == 201
    assert unnamed.json()["id"] not in ("root", "i9")
    other = await client.post(
        "/api/instructors", json={"id": "i8", "name": "Eve"}, headers=auth("i7", "instructor")
    )
    assert other.status_code == 403
    student = await client.post(
        "/api/instructors", json={"name": "Sam"}, headers=auth("s1", "student")
    )
    assert student.status_code == 403
    assert student.json()["detail"] == "only instructors and admins create instructor profiles"


async def test_slot_offsets_are_stored_in_utc_and_shown_in_the_schedule(
    client: httpx.AsyncClient, auth: AuthHeaders
) -> None:
    await make_instructor(client, auth)
    response = await client.post(
        "/api/instructors/i1/slots",
        json={"start": "2099-01-01T10:00:00+02:00", "end": "2099-01-01T11:00:00+02:00"},
        headers=auth("i1", "instructor"),
    )
    assert response.status_code == 422
    assert "180 days" in response.json()["detail"]
    from datetime import UTC, datetime, timedelta, timezone

    start = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    local = start.astimezone(timezone(timedelta(hours=2)))
    created = await client.post(
        "/api/instructors/i1/slots",
        json={"start": local.isoformat(), "end": (local + timedelta(hours=1)).isoformat()},
        headers=auth("i1", "instructor"),
    )
    assert created.status_code == 201
    slot = created.json()
    assert datetime.fromisoformat(slot["start"]) == start
    assert slot["start"].endswith("Z") or slot["start"].endswith("+00:00")
    assert (slot["status"], slot["version"], slot["instructorId"]) == ("available", 1, "i1")
    schedule = await client.get("/api/instructors/i1/schedule")
    assert schedule.status_code == 200
    body = schedule.json()
    assert [s["id"] for s in body["slots"]] == [slot["id"]]
    assert body["version"] == 1
    assert body["instructorId"] == "i1"
    assert {"from", "to", "generatedAt"} <= body.keys()


async def test_slot_errors(client: httpx.AsyncClient, auth: AuthHeaders, future: Future) -> None:
    await make_instructor(client, auth)
    first = await make_slot(client, auth, future)
    overlap = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(minutes=30), "end": future(minutes=90)},
        headers=auth("i1", "instructor"),
    )
    assert overlap.status_code == 409
    assert overlap.json()["slotId"] == first["id"]
    assert f"overlaps slot {first['id']}" in overlap.json()["detail"]
    not_mine = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(hours=3), "end": future(hours=4)},
        headers=auth("i2", "instructor"),
    )
    assert not_mine.status_code == 403
    unknown = await client.post(
        "/api/instructors/nobody/slots",
        json={"start": future(hours=3), "end": future(hours=4)},
        headers=auth("root", "admin"),
    )
    assert unknown.status_code == 404
    naive = await client.post(
        "/api/instructors/i1/slots",
        json={"start": "2030-01-01T10:00:00", "end": "2030-01-01T11:00:00"},
        headers=auth("i1", "instructor"),
    )
    assert naive.status_code == 422
    assert naive.headers["content-type"] == PROBLEM
    assert "timezone" in naive.json()["detail"]
    backwards = await client.post(
        "/api/instructors/i1/slots",
        json={"start": future(hours=5), "end": future(hours=4)},
        headers=auth("i1", "instructor"),
    )
    assert backwards.json()["detail"] == "start must be before end"


async def test_booking_then_cancel_frees_the_slot_and_notifies_both(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, memory_storage: MemoryStorage
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    booked = await client.post(
        "/api/bookings", json={"slotId": slot["id"]}, headers=auth("s1", "student", "Grace")
    )
    assert booked.status_code == 201
    booking = booked.json()
    assert (booking["status"], booking["studentId"], booking["slotId"]) == (
        "active",
        "s1",
        slot["id"],
    )
    schedule = (await client.get("/api/instructors/i1/schedule")).json()
    [state] = schedule["slots"]
    assert (state["status"], state["bookingId"], state["version"]) == (
        "booked",
        booking["id"],
        2,
    )
    assert "studentId" not in state
    taken = await client.post(
        "/api/bookings", json={"slotId": slot["id"]}, headers=auth("s2", "student")
    )
    assert taken.status_code == 409
    assert taken.json()["slotId"] == slot["id"]
    assert taken.json()["detail"] == f"slot {slot['id']} is already booked"

    mine = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert [b["id"] for b in mine] == [booking["id"]]
    theirs = (await client.get("/api/users/me/bookings", headers=auth("i1", "instructor"))).json()
    assert [b["id"] for b in theirs] == [booking["id"]]
    notes = await client.get("/api/users/me/notifications", headers=auth("i1", "instructor"))
    assert [n["message"] for n in notes.json()] == [
        f"Grace booked your slot on {future()[:10]} {future()[11:16]} UTC."
    ]

    forbidden = await client.delete(f"/api/bookings/{booking['id']}", headers=auth("s2"))
    assert forbidden.status_code == 403
    cancelled = await client.delete(f"/api/bookings/{booking['id']}", headers=auth("s1"))
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["version"]) == ("cancelled", 2)
    again = await client.delete(f"/api/bookings/{booking['id']}", headers=auth("s1"))
    assert again.status_code == 200
    assert again.json() == cancelled.json()
    [freed] = (await client.get("/api/instructors/i1/schedule")).json()["slots"]
    assert (freed["status"], freed["version"]) == ("available", 3)
    assert "bookingId" not in freed or freed["bookingId"] is None
    student_notes = (await client.get("/api/users/me/notifications", headers=auth("s1"))).json()
    assert [n["kind"] for n in student_notes] == ["booking.cancelled", "booking.created"]
    rebooked = await client.post(
        "/api/bookings", json={"slotId": slot["id"]}, headers=auth("s2", "student")
    )
    assert rebooked.status_code == 201
    collections = {e.ns.coll for e in memory_storage.changelog.read_after(None)}
    assert collections == {"instructors", "slots", "bookings", "notifications"}


async def test_a_student_who_cancels_is_named_to_the_instructor(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """The instructor learns who cancelled as they learned who booked: by name, not id."""
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    grace = auth("s1", "student", "Grace")
    booked = await client.post("/api/bookings", json={"slotId": slot["id"]}, headers=grace)
    assert booked.status_code == 201
    cancelled = await client.delete(f"/api/bookings/{booked.json()['id']}", headers=grace)
    assert cancelled.status_code == 200
    notes = await client.get("/api/users/me/notifications", headers=auth("i1", "instructor"))
    assert notes.json()[0]["message"] == (
        f"The booking of your slot on {future()[:10]} {future()[11:16]} UTC by Grace was cancelled."
    )


async def test_booking_errors(client: httpx.AsyncClient, auth: AuthHeaders, future: Future) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    missing = await client.post("/api/bookings", json={"slotId": "nope"}, headers=auth("s1"))
    assert missing.status_code == 404
    assert missing.json()["detail"] == "slot nope does not exist"
    by_instructor = await client.post(
        "/api/bookings", json={"slotId": slot["id"]}, headers=auth("i1", "instructor")
    )
    assert by_instructor.status_code == 403
    no_booking = await client.delete("/api/bookings/nope", headers=auth("s1"))
    assert no_booking.status_code == 404


async def test_deleting_a_slot_leaves_a_tombstone(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    free = await make_slot(client, auth, future)
    taken = await make_slot(client, auth, future, hours=2)
    await client.post("/api/bookings", json={"slotId": taken["id"]}, headers=auth("s1"))
    refused = await client.delete(f"/api/slots/{taken['id']}", headers=auth("i1", "instructor"))
    assert refused.status_code == 409
    assert "cancel booking" in refused.json()["detail"]
    not_mine = await client.delete(f"/api/slots/{free['id']}", headers=auth("i2", "instructor"))
    assert not_mine.status_code == 403
    deleted = await client.delete(f"/api/slots/{free['id']}", headers=auth("i1", "instructor"))
    assert deleted.status_code == 200
    assert (deleted.json()["status"], deleted.json()["version"]) == ("deleted", 2)
    repeated = await client.delete(f"/api/slots/{free['id']}", headers=auth("i1", "instructor"))
    assert repeated.json() == deleted.json()
    schedule = (await client.get("/api/instructors/i1/schedule")).json()
    assert [s["id"] for s in schedule["slots"]] == [taken["id"]]
    gone = await client.post("/api/bookings", json={"slotId": free["id"]}, headers=auth("s2"))
    assert gone.status_code == 404
    assert (
        await client.delete("/api/slots/nope", headers=auth("root", "admin"))
    ).status_code == 404
    # The freed time can hold a new slot.
    await make_slot(client, auth, future)


async def test_notifications_are_private_and_marked_read(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    await client.post("/api/bookings", json={"slotId": slot["id"]}, headers=auth("s1"))
    [note] = (await client.get("/api/users/me/notifications", headers=auth("s1"))).json()
    assert note["read"] is False
    other = await client.post(f"/api/users/me/notifications/{note['id']}/read", headers=auth("s2"))
    assert other.status_code == 404
    read = await client.post(f"/api/users/me/notifications/{note['id']}/read", headers=auth("s1"))
    assert read.status_code == 200
    assert (read.json()["read"], read.json()["version"]) == (True, 2)
    unread = await client.get("/api/users/me/notifications?unread=true", headers=auth("s1"))
    assert unread.json() == []


async def test_notifications_are_kept_for_the_retention_period(
    settings: Settings, auth: AuthHeaders, future: Future
) -> None:
    """``BOOKING_API_NOTIFICATION_RETENTION_DAYS`` reaches the store the settings open."""
    now = [datetime.now(UTC)]
    kept_a_day = settings.model_copy(update={"notification_retention_days": 1})
    app = create_app(kept_a_day, clock=lambda: now[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        await make_instructor(client, auth)
        slot = await make_slot(client, auth, future)
        await client.post("/api/bookings", json={"slotId": slot["id"]}, headers=auth("s1"))
        now[0] += timedelta(hours=23)
        assert (
            len((await client.get("/api/users/me/notifications", headers=auth("s1"))).json()) == 1
        )
        now[0] += timedelta(hours=1, seconds=1)
        assert (await client.get("/api/users/me/notifications", headers=auth("s1"))).json() == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"from": "2030-01-01T00:00:00"}, "explicit UTC offset"),
        ({"from": "2030-01-01T00:00:00Z", "to": "2030-03-15T00:00:00Z"}, "62 days"),
        ({"from": "not-a-date"}, "query.from"),
    ],
)
async def test_schedule_window_errors(
    client: httpx.AsyncClient, auth: AuthHeaders, params: dict[str, str], detail: str
) -> None:
    await make_instructor(client, auth)
    response = await client.get("/api/instructors/i1/schedule", params=params)
    assert response.status_code == 422
    assert detail in response.json()["detail"]


async def test_schedule_of_unknown_instructor_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/instructors/nobody/schedule")
    assert response.status_code == 404
    assert response.json()["detail"] == "instructor nobody does not exist"


# Instructors editing their schedule: moving a slot (PATCH with If-Match), creating a
# batch all or nothing, cancelling a booking with a reason for the student.


def if_match(auth: AuthHeaders, version: object, iid: str = "i1") -> dict[str, str]:
    return auth(iid, "instructor") | {"If-Match": f'"{version}"'}


async def test_a_free_slot_moves_keeping_its_length(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, memory_storage: MemoryStorage
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    moved = await client.patch(
        f"/api/slots/{slot['id']}", json={"start": future(hours=3)}, headers=if_match(auth, 1)
    )
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["version"] == 2
    assert moved.headers["etag"] == '"2"'
    assert body["start"].startswith(future(hours=3)[:16])
    assert body["end"].startswith(future(hours=4)[:16])
    # The schedule shows it at its new time and the change feed has the update.
    schedule = (await client.get("/api/instructors/i1/schedule")).json()
    assert [(s["id"], s["version"]) for s in schedule["slots"]] == [(slot["id"], 2)]
    changes = [c for c in memory_storage.changelog.read_after(None) if c.ns.coll == SLOTS]
    assert changes[-1].operation_type.value == "update"
    # A new end alone changes the length.
    longer = await client.patch(
        f"/api/slots/{slot['id']}", json={"end": future(hours=5)}, headers=if_match(auth, 2)
    )
    assert longer.status_code == 200, longer.text
    assert longer.json()["end"].startswith(future(hours=5)[:16])


async def test_a_move_needs_the_current_version(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    path = f"/api/slots/{slot['id']}"
    missing = await client.patch(
        path, json={"start": future(hours=3)}, headers=auth("i1", "instructor")
    )
    assert missing.status_code == 428
    assert missing.headers["content-type"] == PROBLEM
    assert "If-Match" in missing.json()["detail"]
    stale = await client.patch(path, json={"start": future(hours=3)}, headers=if_match(auth, 7))
    assert stale.status_code == 412
    assert stale.headers["content-type"] == PROBLEM
    assert stale.json()["version"] == 1
    nonsense = await client.patch(
        path, json={"start": future(hours=3)}, headers=auth("i1", "instructor") | {"If-Match": "x"}
    )
    assert nonsense.status_code == 412
    anything = await client.patch(
        path, json={"start": future(hours=3)}, headers=auth("i1", "instructor") | {"If-Match": "*"}
    )
    assert anything.status_code == 200


async def test_a_move_follows_the_rules_of_creation(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    other = await make_slot(client, auth, future, hours=4)
    path = f"/api/slots/{slot['id']}"
    overlap = await client.patch(
        path, json={"start": future(hours=4, minutes=30)}, headers=if_match(auth, 1)
    )
    assert overlap.status_code == 409
    assert overlap.json()["slotId"] == other["id"]
    past = await client.patch(path, json={"start": future(days=-2)}, headers=if_match(auth, 1))
    assert past.status_code == 422
    empty = await client.patch(path, json={}, headers=if_match(auth, 1))
    assert empty.status_code == 422
    backwards = await client.patch(path, json={"end": future(hours=-1)}, headers=if_match(auth, 1))
    assert backwards.status_code == 422
    # Moving onto part of its own old window is fine.
    nudged = await client.patch(path, json={"start": future(minutes=30)}, headers=if_match(auth, 1))
    assert nudged.status_code == 200, nudged.text


async def test_only_the_owner_moves_only_a_free_slot(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    path = f"/api/slots/{slot['id']}"
    body = {"start": future(hours=3)}
    stranger = await client.patch(path, json=body, headers=if_match(auth, 1, iid="i2"))
    assert stranger.status_code == 403
    student = await client.patch(path, json=body, headers=auth("s1") | {"If-Match": '"1"'})
    assert student.status_code == 403
    anonymous = await client.patch(path, json=body, headers={"If-Match": '"1"'})
    assert anonymous.status_code == 401
    booked = await client.post("/api/bookings", json={"slotId": slot["id"]}, headers=auth("s1"))
    assert booked.status_code == 201
    refused = await client.patch(path, json=body, headers=if_match(auth, 2))
    assert refused.status_code == 409
    assert "booked" in refused.json()["detail"]
    unknown = await client.patch("/api/slots/nope", json=body, headers=if_match(auth, 1))
    assert unknown.status_code == 404
    admin = auth("root", "admin") | {"If-Match": '"1"'}
    other = await make_slot(client, auth, future, hours=6)
    by_admin = await client.patch(f"/api/slots/{other['id']}", json=body, headers=admin)
    assert by_admin.status_code == 200, by_admin.text
    await client.delete(f"/api/slots/{other['id']}", headers=auth("i1", "instructor"))
    withdrawn = await client.patch(
        f"/api/slots/{other['id']}", json=body, headers=if_match(auth, 3)
    )
    assert withdrawn.status_code == 404


async def test_a_batch_is_created_all_or_nothing(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    week = [
        {"start": future(days=d, hours=h), "end": future(days=d, hours=h + 1)}
        for d in (1, 2, 3)
        for h in (0, 2)
    ]
    created = await client.post(
        "/api/instructors/i1/slots:batch", json={"slots": week}, headers=auth("i1", "instructor")
    )
    assert created.status_code == 201, created.text
    slots = created.json()
    assert len(slots) == 6
    assert all(s["version"] == 1 and s["status"] == "available" for s in slots)
    assert [s["start"] for s in slots] == sorted(s["start"] for s in slots)
    # One of the next batch overlaps a live slot: nothing of it is stored.
    clash = [
        {"start": future(days=5), "end": future(days=5, hours=1)},
        {"start": future(days=1, minutes=30), "end": future(days=1, hours=1, minutes=30)},
    ]
    refused = await client.post(
        "/api/instructors/i1/slots:batch", json={"slots": clash}, headers=auth("i1", "instructor")
    )
    assert refused.status_code == 409
    assert refused.json()["slotId"] == slots[0]["id"]
    schedule = (await client.get("/api/instructors/i1/schedule")).json()
    assert len(schedule["slots"]) == 6


async def test_an_overlap_names_the_slot_in_the_way_with_its_times(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """A 409 for an overlap (add, batch, move) carries the other slot's ``slotId``,
    ``slotStart`` and ``slotEnd`` as members of its own: a client words it in its viewer's
    time zone even when it does not hold that slot (weeks ahead of what it loaded), rather
    than show ``detail``'s UTC times, which stays as it was."""
    await make_instructor(client, auth)
    in_the_way = await make_slot(client, auth, future, hours=24 * 60)
    mover = await make_slot(client, auth, future)
    instructor = auth("i1", "instructor")
    onto = {"start": future(days=61, minutes=30), "end": future(days=61, minutes=90)}
    added = await client.post("/api/instructors/i1/slots", json=onto, headers=instructor)
    batch = await client.post(
        "/api/instructors/i1/slots:batch", json={"slots": [onto]}, headers=instructor
    )
    moved = await client.patch(
        f"/api/slots/{mover['id']}", json={"start": onto["start"]}, headers=if_match(auth, 1)
    )
    for refused in (added, batch, moved):
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["type"] == "urn:slotstream:problem:conflict"
        assert body["slotId"] == in_the_way["id"]
        named = (datetime.fromisoformat(body["slotStart"]), datetime.fromisoformat(body["slotEnd"]))
        shown = (
            datetime.fromisoformat(str(in_the_way["start"])),
            datetime.fromisoformat(str(in_the_way["end"])),
        )
        assert named == shown
        assert f"overlaps slot {in_the_way['id']} (" in body["detail"]


async def test_a_batch_is_checked_within_itself_and_bounded(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    overlapping = [
        {"start": future(hours=1), "end": future(hours=2)},
        {"start": future(hours=1, minutes=30), "end": future(hours=3)},
    ]
    path = "/api/instructors/i1/slots:batch"
    within = await client.post(path, json={"slots": overlapping}, headers=auth("i1", "instructor"))
    assert within.status_code == 422
    assert "overlap" in within.json()["detail"]
    too_many = [
        {"start": future(minutes=10 * i), "end": future(minutes=10 * i + 5)} for i in range(201)
    ]
    big = await client.post(path, json={"slots": too_many}, headers=auth("i1", "instructor"))
    assert big.status_code == 422
    empty = await client.post(path, json={"slots": []}, headers=auth("i1", "instructor"))
    assert empty.status_code == 422
    stranger = await client.post(
        path, json={"slots": overlapping[:1]}, headers=auth("i2", "instructor")
    )
    assert stranger.status_code == 403
    unknown = await client.post(
        "/api/instructors/i9/slots:batch",
        json={"slots": overlapping[:1]},
        headers=auth("root", "admin"),
    )
    assert unknown.status_code == 404
    assert (await client.get("/api/instructors/i1/schedule")).json()["slots"] == []


async def test_a_cancellation_reason_reaches_the_student(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    slot = await make_slot(client, auth, future)
    booked = await client.post(
        "/api/bookings", json={"slotId": slot["id"]}, headers=auth("s1", name="Grace Hopper")
    )
    assert booked.status_code == 201
    booking = booked.json()
    assert booking["studentName"] == "Grace Hopper"
    cancelled = await client.request(
        "DELETE",
        f"/api/bookings/{booking['id']}",
        json={"reason": "I am ill, sorry"},
        headers=auth("i1", "instructor", "Ada"),
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancelReason"] == "I am ill, sorry"
    notes = (await client.get("/api/users/me/notifications", headers=auth("s1"))).json()
    newest = notes[0]
    assert newest["kind"] == "booking.cancelled"
    assert newest["reason"] == "I am ill, sorry"
    assert newest["instructorName"] == "Ada"
    assert newest["cancelledBy"] == "Ada"
    assert newest["slotStart"] == slot["start"]
    assert "I am ill, sorry" in newest["message"]
    created = notes[1]
    assert created["message"].startswith("You booked Ada on ")
    assert booking["id"] not in created["message"]
    to_instructor = (
        await client.get("/api/users/me/notifications", headers=auth("i1", "instructor"))
    ).json()
    assert to_instructor[-1]["studentName"] == "Grace Hopper"
    assert to_instructor[-1]["message"].startswith("Grace Hopper booked your slot on ")


async def test_an_instructor_lists_who_booked_their_slots(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    await make_instructor(client, auth)
    await make_instructor(client, auth, "i2")
    slot = await make_slot(client, auth, future)
    other = await make_slot(client, auth, future, iid="i2")
    for slot_id in (slot["id"], other["id"]):
        booked = await client.post(
            "/api/bookings", json={"slotId": slot_id}, headers=auth("s1", name="Grace Hopper")
        )
        assert booked.status_code == 201
    listed = await client.get("/api/instructors/i1/bookings", headers=auth("i1", "instructor"))
    assert listed.status_code == 200
    [only] = listed.json()
    assert (only["slotId"], only["studentName"]) == (slot["id"], "Grace Hopper")
    by_admin = await client.get("/api/instructors/i2/bookings", headers=auth("root", "admin"))
    assert [b["slotId"] for b in by_admin.json()] == [other["id"]]
    for headers in (auth("i2", "instructor"), auth("s1")):
        refused = await client.get("/api/instructors/i1/bookings", headers=headers)
        assert refused.status_code == 403
    assert (await client.get("/api/instructors/i1/bookings")).status_code == 401
    unknown = await client.get("/api/instructors/nope/bookings", headers=auth("root", "admin"))
    assert unknown.status_code == 404


async def test_a_slot_moved_while_it_is_booked_gives_the_booking_its_new_time(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, memory_storage: MemoryStorage
) -> None:
    """The instructor moves the free slot between the booking's read of it and its claim:
    the booking (and the student's notification) must carry the time the slot is booked
    at, or the student turns up on the wrong day."""
    slot_id = await setup_slot(client, auth, future)
    slots = memory_storage.slots
    claim = slots.book

    async def moved_first(
        slot_id: str, booking_id: str, student_id: str, now: datetime
    ) -> SlotDocument | None:
        slot = await slots.get(slot_id)
        assert slot is not None
        later = timedelta(days=1)
        await slots.move_unless_overlapping(
            slot_id, slot.version, slot.start + later, slot.end + later, now
        )
        return await claim(slot_id, booking_id, student_id, now)

    slots.book = moved_first  # type: ignore[method-assign]
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert booked.status_code == 201, booked.text
    [slot] = (await client.get("/api/instructors/i1/schedule")).json()["slots"]
    assert slot["status"] == "booked"
    assert (booked.json()["slotStart"], booked.json()["slotEnd"]) == (slot["start"], slot["end"])
    [note] = (await client.get("/api/users/me/notifications", headers=auth("s1"))).json()
    assert note["slotStart"] == slot["start"]
