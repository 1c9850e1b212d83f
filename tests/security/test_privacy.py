"""Issue 10, item 1: no public frame or snapshot says who booked a slot.

Black box, through the edge of the demo stack on 127.0.0.1: a student books; an anonymous
schedule stream (live frames, a resume from the beginning of the history, and the
snapshot, as served on connect and by the API) never contains the student's id or name,
while the private channels of the student and of the instructor get the booking event.
Private streams authenticate with an ``Authorization: Bearer`` header (never a token in the
URL).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from scripts.devstack import DemoUser, DevStack
from tests.integration.test_click_to_stream import SseReader

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
#: How long an anonymous stream is watched after the booking for a leaking frame.
QUIET = 1.5


class Stream(SseReader):
    """``SseReader`` with request headers, that also keeps a refusal's status and body."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        super().__init__(client, url)
        self.headers = headers
        self.status: int | None = None
        self.body = b""

    async def _run(self) -> None:
        async with aconnect_sse(self.client, "GET", self.url, headers=self.headers) as source:
            self.status = source.response.status_code
            if self.status != 200:
                self.body = await source.response.aread()
                self._arrived.set()
                return
            async for frame in source.aiter_sse():
                self.frames.append(frame)
                self._arrived.set()

    async def started(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.status is None:
                self._arrived.clear()
                await self._arrived.wait()

    def text(self) -> str:
        """Everything received (each frame's event, id and data)."""
        return "\n".join(f"{f.event} {f.id} {f.data}" for f in self.frames)


def bearer(user: DemoUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.token}"}


def leaks(text: str, student: DemoUser) -> bool:
    return student.id in text or student.name in text


async def free_slot(api: httpx.AsyncClient, instructor_id: str) -> str:
    response = await api.get(f"/api/instructors/{instructor_id}/schedule")
    response.raise_for_status()
    free = [s for s in response.json()["slots"] if s["status"] == "available"]
    assert free, f"the seed left no available slot for {instructor_id}"
    return str(free[len(free) // 2]["id"])


def from_the_beginning(last_event_id: str) -> str:
    """The same stream position with every offset before the first record."""
    return ".".join(part.split(":")[0] + ":-1" for part in last_event_id.split("."))


async def test_nobody_learns_from_a_public_channel_who_booked(stack: DevStack) -> None:
    student = stack.user("student", 1)
    instructor = stack.user("instructor", 1)
    public = f"{stack.base_url}/api/book-now/schedule-updates?instructorId={instructor.id}"
    private = f"{stack.base_url}/v1/events?channel=users/{{}}/notifications"
    async with (
        httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT) as api,
        httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as sse,
    ):
        slot_id = await free_slot(api, instructor.id)
        async with (
            Stream(sse, public, {}).open() as anonymous,
            Stream(sse, private.format(student.id), bearer(student)).open() as own,
            Stream(sse, private.format(instructor.id), bearer(instructor)).open() as teacher,
        ):
            snapshot = await anonymous.wait_for("snapshot")
            await own.started()
            await teacher.started()
            assert own.status == teacher.status == 200, (own.body, teacher.body)

            booked = await api.post(
                "/api/bookings", json={"slotId": slot_id}, headers=bearer(student)
            )
            assert booked.status_code == 201, booked.text
            booking_id = booked.json()["id"]

            # The private channels of both parties get the booking, with the student.
            for stream in (own, teacher):
                frame = await stream.wait_for("booking", lambda d: d["data"]["id"] == booking_id)
                event = json.loads(frame.data)
                assert event["type"] == "booking.created"
                assert event["data"]["studentId"] == student.id

            # The public channel shows the slot booked, and nothing about whom by.
            await anonymous.wait_for(
                "slot", lambda d: d["data"]["id"] == slot_id and d["data"]["status"] == "booked"
            )
            await asyncio.sleep(QUIET)
            assert not any(f.event == "booking" for f in anonymous.frames), anonymous.text()
            assert not leaks(anonymous.text(), student), anonymous.text()

        # A resume from the snapshot's position (ring replay) and from the beginning of
        # the history (Kafka replay): answered with history or a fresh snapshot, never a
        # booking.
        assert snapshot.id, "the snapshot frame carries a resumable id"
        for last_event_id in (snapshot.id, from_the_beginning(snapshot.id)):
            url = f"{public}&lastEventId={last_event_id}"
            async with Stream(sse, url, {}).open() as resumed:
                await resumed.started()
                if resumed.status == 200:
                    await asyncio.sleep(QUIET)
                    assert not leaks(resumed.text(), student), resumed.text()
                    assert not any(f.event == "booking" for f in resumed.frames)
                else:
                    assert resumed.status == 400, resumed.body
                    assert not leaks(resumed.body.decode(), student)

        # The schedule snapshot of the API, as the gateways fetch it.
        schedule = await api.get(f"/api/instructors/{instructor.id}/schedule")
        assert schedule.status_code == 200
        assert any(s["id"] == slot_id and s["status"] == "booked" for s in schedule.json()["slots"])
        assert not leaks(schedule.text, student), schedule.text


def booking_of(frame_data: dict[str, Any]) -> str:
    """The booking a private frame is about (a booking event or a notification)."""
    data = frame_data["data"]
    return str(data["id"] if frame_data["type"].startswith("booking.") else data["bookingId"])


async def test_a_student_and_an_instructor_sharing_an_id_each_get_only_their_own(
    stack: DevStack,
) -> None:
    """Control 9 on the streams: a student whose token carries an instructor's id is another
    person, and ``users/{id}/notifications`` shows each of them only what is theirs."""
    teacher = stack.user("instructor", 2)
    other = stack.user("instructor", 0)
    student = stack.user("student", 0)
    twin = DemoUser(
        teacher.id, "Twin Student", "student", stack.mint(teacher.id, "student", "Twin Student")
    )
    channel = f"{stack.base_url}/v1/events?channel=users/{teacher.id}/notifications"
    booked: list[tuple[DemoUser, str]] = []
    async with (
        httpx.AsyncClient(base_url=stack.base_url, timeout=TIMEOUT) as api,
        httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as sse,
    ):

        async def book(who: DemoUser, instructor: DemoUser) -> str:
            slot_id = await free_slot(api, instructor.id)
            answer = await api.post("/api/bookings", json={"slotId": slot_id}, headers=bearer(who))
            assert answer.status_code == 201, answer.text
            booked.append((who, answer.json()["id"]))
            return str(answer.json()["id"])

        try:
            async with (
                Stream(sse, channel, bearer(twin)).open() as twins,
                Stream(sse, channel, bearer(teacher)).open() as teachers,
            ):
                await twins.started()
                await teachers.started()
                assert twins.status == teachers.status == 200, (twins.body, teachers.body)
                # One partition (one key) in this order: the twin's booking, the teacher's
                # slot booked by a student, the twin's second booking.
                first = await book(twin, other)
                theirs = await book(student, teacher)
                second = await book(twin, other)
                await teachers.wait_for("notification", lambda d: d["data"]["bookingId"] == theirs)
                await twins.wait_for("notification", lambda d: d["data"]["bookingId"] == second)
                seen = {
                    name: {
                        booking_of(json.loads(f.data))
                        for f in stream.frames
                        if f.event in ("booking", "notification")
                    }
                    for name, stream in (("twin", twins), ("teacher", teachers))
                }
                assert seen == {"twin": {first, second}, "teacher": {theirs}}
        finally:
            for who, booking_id in booked:
                cancelled = await api.delete(f"/api/bookings/{booking_id}", headers=bearer(who))
                assert cancelled.status_code == 200, cancelled.text
