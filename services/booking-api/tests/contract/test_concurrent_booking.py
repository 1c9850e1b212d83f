"""Fifty students press "book" on one slot at once: exactly one wins, on every backend."""

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx

from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.ports import Storage

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]


async def test_fifty_simultaneous_bookings_one_winner(
    storage: Storage, settings: Settings, auth: AuthHeaders, future: Future
) -> None:
    app = create_app(settings, storage=storage)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        instructor = auth("i1", "instructor")
        await client.post("/api/instructors", json={"name": "Ada"}, headers=instructor)
        slot = await client.post(
            "/api/instructors/i1/slots",
            json={"start": future(), "end": future(hours=1)},
            headers=instructor,
        )
        slot_id = slot.json()["id"]
        responses = await asyncio.gather(
            *(
                client.post("/api/bookings", json={"slotId": slot_id}, headers=auth(f"s{n}"))
                for n in range(50)
            )
        )
        assert Counter(r.status_code for r in responses) == {201: 1, 409: 49}
        [winner] = [r.json() for r in responses if r.status_code == 201]
        assert {r.json()["slotId"] for r in responses if r.status_code == 409} == {slot_id}
        [state] = (await client.get("/api/instructors/i1/schedule")).json()["slots"]
        assert (state["status"], state["bookingId"], state["version"]) == (
            "booked",
            winner["id"],
            2,
        )
        notes = await client.get("/api/users/me/notifications", headers=instructor)
        assert len(notes.json()) == 1
