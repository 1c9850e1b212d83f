"""Issue 10 on the API: decisions on role and id, names, quota, caching, docs."""

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.service import utc_now

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


async def book(
    client: httpx.AsyncClient, auth: AuthHeaders, slot_id: str, sub: str, name: str | None = None
) -> str:
    booked = await client.post(
        "/api/bookings", json={"slotId": slot_id}, headers=auth(sub, "student", name)
    )
    assert booked.status_code == 201, booked.text
    return str(booked.json()["id"])


async def test_an_instructor_sharing_a_students_id_cannot_replay_the_students_answers(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """Item 9 for Idempotency-Key: instructor "twin" sending student "twin"'s request with
    the student's key gets what an instructor gets (403), not the student's stored 201."""
    slot_id = await slot_of(client, auth, future, "i1")
    booking = {"slotId": slot_id}
    as_student = {**auth("twin", "student", "Stu"), "Idempotency-Key": "k1"}
    as_instructor = {**auth("twin", "instructor"), "Idempotency-Key": "k1"}
    made = await client.post("/api/bookings", json=booking, headers=as_student)
    assert made.status_code == 201
    replayed = await client.post("/api/bookings", json=booking, headers=as_instructor)
    assert replayed.status_code == 403, replayed.text
    assert "idempotent-replayed" not in replayed.headers


@pytest.mark.parametrize("if_match", [None, '"999"', "not-a-tag"])
async def test_moving_someone_elses_slot_is_403_whatever_the_if_match(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, if_match: str | None
) -> None:
    """Who may move a slot is decided before which version they name: a student, or
    another instructor, gets 403, not 428 or 412 (which would tell them how to retry)."""
    slot_id = await slot_of(client, auth, future, "i1")
    extra = {} if if_match is None else {"If-Match": if_match}
    for outsider in (auth("s1"), auth("i2", "instructor")):
        moved = await client.patch(
            f"/api/slots/{slot_id}", json={"start": future(days=3)}, headers=outsider | extra
        )
        assert moved.status_code == 403, moved.text


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


BAD_NAMES = ["Ada\u202eevil", "Ada\nLovelace", "Ada\x00", "Ada\u200b", "Ada\u2028x", "\x1b[31mAda"]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_an_instructor_name_with_control_or_bidi_characters_is_refused(
    client: httpx.AsyncClient, auth: AuthHeaders, name: str
) -> None:
    """Item 8: refused (not silently changed), so what is shown is what was asked for."""
    created = await client.post(
        "/api/instructors", json={"id": "i5", "name": name}, headers=auth("root", "admin")
    )
    assert created.status_code == 422, created.text
    assert created.headers["content-type"] == "application/problem+json"
    assert "control or format character" in created.json()["detail"]
    assert (await client.get("/api/instructors")).json() == []


@pytest.mark.parametrize("reason", ["late\u202eevil", "late\x00", "\x1b[31mlate", "late\u2028x"])
async def test_a_cancel_reason_with_control_or_bidi_characters_is_refused(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, reason: str
) -> None:
    """Item 8 for the reason the student is shown: refused like a name, and the booking
    stays as it was; a reason of several lines is fine."""
    booking_id = await book(client, auth, await slot_of(client, auth, future, "i1"), "s1")
    refused = await client.request(
        "DELETE",
        f"/api/bookings/{booking_id}",
        json={"reason": reason},
        headers=auth("i1", "instructor"),
    )
    assert refused.status_code == 422, refused.text
    assert "control or format character" in refused.json()["detail"]
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert mine["status"] == "active"
    cancelled = await client.request(
        "DELETE",
        f"/api/bookings/{booking_id}",
        json={"reason": "Sorry,\nI am ill."},
        headers=auth("i1", "instructor"),
    )
    assert cancelled.status_code == 200, cancelled.text


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_token_name_with_control_or_bidi_characters_never_reaches_a_notification(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future, name: str
) -> None:
    slot_id = await slot_of(client, auth, future, "i1")
    booked = await client.post(
        "/api/bookings", json={"slotId": slot_id}, headers=auth("s1", "student", name)
    )
    assert booked.status_code == 401, booked.text
    assert "control or format character" in booked.json()["detail"]
    notes = await client.get("/api/users/me/notifications", headers=auth("i1", "instructor"))
    assert notes.json() == []


async def test_ordinary_names_in_any_script_are_kept_as_given(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    name = "José Ñúñez-O'Brien 李小龙 🎻"
    slot_id = await slot_of(client, auth, future, "i1")
    await book(client, auth, slot_id, "s1", name)
    [note] = (
        await client.get("/api/users/me/notifications", headers=auth("i1", "instructor"))
    ).json()
    assert note["message"].startswith(f"{name} booked your slot")


async def test_private_answers_are_not_stored_by_any_cache(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """Item 10: anything answered for a token (or to a private path) says no-store."""
    slot_id = await slot_of(client, auth, future, "i1")
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    answers = [
        booked,
        await client.get("/api/users/me/bookings", headers=auth("s1")),
        await client.get("/api/users/me/notifications", headers=auth("s1")),
        await client.get("/api/users/me/bookings"),  # 401 is private too
        await client.delete(f"/api/bookings/{booked.json()['id']}", headers=auth("s1")),
        await client.get("/api/instructors", headers=auth("s1")),
    ]
    for answer in answers:
        assert answer.headers.get("cache-control") == "no-store", answer.request.url
    public = await client.get("/api/instructors")
    assert public.headers.get("cache-control") != "no-store"


async def test_api_docs_can_be_turned_off(
    settings: Settings, memory_storage: MemoryStorage
) -> None:
    on = create_app(settings, storage=memory_storage)
    off = create_app(settings.model_copy(update={"docs_enabled": False}), storage=memory_storage)
    for app, status in ((on, 200), (off, 404)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://booking"
        ) as client:
            for path in ("/api/docs", "/api/openapi.json"):
                assert (await client.get(path)).status_code == status, path


def test_docs_are_on_by_default_and_off_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", "s3cret-0123456789-abcdefghijklmnopqrstuvwxyz")
    assert Settings().docs_enabled is True
    monkeypatch.setenv("BOOKING_API_DOCS_ENABLED", "false")
    assert Settings().docs_enabled is False


@contextlib.asynccontextmanager
async def api_with_quota(
    settings: Settings,
    storage: MemoryStorage,
    auth: AuthHeaders,
    limit: int,
    clock: Callable[[], datetime] = utc_now,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a booking quota of ``limit`` per student, instructor i1 created."""
    app = create_app(
        settings.model_copy(update={"max_active_bookings_per_student": limit}),
        storage=storage,
        clock=clock,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://booking"
    ) as client:
        await client.post(
            "/api/instructors", json={"name": "Ada"}, headers=auth("i1", "instructor")
        )
        yield client


async def test_a_student_holds_at_most_the_quota_of_active_bookings(
    settings: Settings, memory_storage: MemoryStorage, auth: AuthHeaders, future: Future
) -> None:
    """Item 4: one account cannot book out a schedule. 409 quota-exceeded (not 429: waiting
    does not help, cancelling does); cancelled bookings do not count."""
    async with api_with_quota(settings, memory_storage, auth, 2) as client:
        slots = []
        for hour in range(4):
            created = await client.post(
                "/api/instructors/i1/slots",
                json={"start": future(hours=hour), "end": future(hours=hour + 1)},
                headers=auth("i1", "instructor"),
            )
            slots.append(created.json()["id"])
        first = await book(client, auth, slots[0], "s1")
        await book(client, auth, slots[1], "s1")
        refused = await client.post("/api/bookings", json={"slotId": slots[2]}, headers=auth("s1"))
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert body["type"] == "urn:slotstream:problem:quota-exceeded"
        assert body["limit"] == 2
        assert "2 active bookings" in body["detail"]
        slot = await client.get("/api/instructors/i1/schedule")
        assert [s["status"] for s in slot.json()["slots"]][2] == "available"

        await book(client, auth, slots[2], "s2")  # another student is not affected
        await client.delete(f"/api/bookings/{first}", headers=auth("s1"))
        await book(client, auth, slots[3], "s1")


async def test_bookings_whose_lesson_is_over_leave_the_quota(
    settings: Settings, memory_storage: MemoryStorage, auth: AuthHeaders
) -> None:
    """The quota bounds what a student holds of the schedule: a lesson that has ended
    holds nothing, so a student with a history of lessons still books the next one (it was
    409 quota-exceeded for good after ``limit`` lessons, "cancel one first" meaning
    cancelling a lesson already given)."""
    now = [datetime.now(UTC).replace(minute=0, second=0, microsecond=0)]
    start = now[0] + timedelta(hours=1)
    async with api_with_quota(settings, memory_storage, auth, 1, lambda: now[0]) as client:
        slots = []
        for day in (0, 2):
            created = await client.post(
                "/api/instructors/i1/slots",
                json={
                    "start": (start + timedelta(days=day)).isoformat(),
                    "end": (start + timedelta(days=day, hours=1)).isoformat(),
                },
                headers=auth("i1", "instructor"),
            )
            assert created.status_code == 201, created.text
            slots.append(created.json()["id"])
        await book(client, auth, slots[0], "s1")
        now[0] = start + timedelta(minutes=30)  # the lesson is under way: it still counts
        during = await client.post("/api/bookings", json={"slotId": slots[1]}, headers=auth("s1"))
        assert during.status_code == 409, during.text
        assert during.json()["type"] == "urn:slotstream:problem:quota-exceeded"
        now[0] = start + timedelta(hours=1)  # the lesson is over
        await book(client, auth, slots[1], "s1")


def test_the_quota_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKING_API_JWT__SECRET", "s3cret-0123456789-abcdefghijklmnopqrstuvwxyz")
    assert Settings().max_active_bookings_per_student == 20
    monkeypatch.setenv("BOOKING_API_MAX_ACTIVE_BOOKINGS_PER_STUDENT", "5")
    assert Settings().max_active_bookings_per_student == 5


async def test_notifications_of_a_shared_id_stay_with_their_role(
    client: httpx.AsyncClient, auth: AuthHeaders, future: Future
) -> None:
    """Item 9 for /users/me/notifications: instructor "twin" is told of the booking on
    their slot; student "twin" is not, and cannot mark it read."""
    slot_id = await slot_of(client, auth, future, "twin")
    await book(client, auth, slot_id, "other")
    as_student = await client.get("/api/users/me/notifications", headers=auth("twin"))
    assert as_student.json() == []
    [note] = (
        await client.get("/api/users/me/notifications", headers=auth("twin", "instructor"))
    ).json()
    assert note["message"].startswith("a student booked your slot")  # never a raw id
    read = f"/api/users/me/notifications/{note['id']}/read"
    assert (await client.post(read, headers=auth("twin"))).status_code == 404
    assert (await client.post(read, headers=auth("twin", "instructor"))).status_code == 200
