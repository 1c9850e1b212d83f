"""The booking-api as a real server: concurrency over sockets, the seed script, ops."""

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from booking_api import seed
from slotstream_contracts.auth import JwtSettings, Role, mint_token

pytestmark = pytest.mark.integration
Bearer = Callable[[str, Role], dict[str, str]]


@pytest.fixture
def bearer(server_jwt: JwtSettings) -> Bearer:
    def headers(sub: str, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(server_jwt, sub, role)}"}

    return headers


async def test_fifty_simultaneous_bookings_over_http(api_url: str, bearer: Bearer) -> None:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=10) as client:
        instructor = bearer("race-instructor", Role.INSTRUCTOR)
        await client.post("/api/instructors", json={"name": "Race"}, headers=instructor)
        start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        slot = await client.post(
            "/api/instructors/race-instructor/slots",
            json={"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
            headers=instructor,
        )
        slot_id = slot.json()["id"]
        students = [bearer(f"racer-{n}", Role.STUDENT) for n in range(50)]
        responses = await asyncio.gather(
            *(client.post("/api/bookings", json={"slotId": slot_id}, headers=h) for h in students)
        )
        assert Counter(r.status_code for r in responses) == {201: 1, 409: 49}
        assert all(r.headers["x-request-id"] for r in responses)
        metrics = (await client.get("/metrics")).text
        assert "booking_api_bookings_created_total 1.0" in metrics
        assert "booking_api_booking_conflicts_total 49.0" in metrics


async def test_seed_is_idempotent(api_url: str, server_jwt: JwtSettings) -> None:
    first = await seed.seed(api_url, server_jwt, instructors=2, days=2, wait=10)
    again = await seed.seed(api_url, server_jwt, instructors=2, days=2, wait=10)
    assert [i["newSlots"] for i in first["instructors"]] == [14, 14]
    assert [i["newSlots"] for i in again["instructors"]] == [0, 0]
    roles = Counter(u["role"] for u in first["users"])
    assert roles == {"instructor": 2, "student": 2, "admin": 1}
    async with httpx.AsyncClient(base_url=api_url) as client:
        instructors = (await client.get("/api/instructors")).json()
        assert {"instructor-1", "instructor-2"} <= {i["id"] for i in instructors}
        student = next(u for u in first["users"] if u["role"] == "student")
        schedule = (await client.get("/api/instructors/instructor-1/schedule")).json()
        booked = await client.post(
            "/api/bookings",
            json={"slotId": schedule["slots"][0]["id"]},
            headers={"Authorization": f"Bearer {student['token']}"},
        )
        assert booked.status_code == 201
    assert orjson.loads(orjson.dumps(first))["api"] == api_url


async def test_ready_and_problem_for_unknown_route(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url) as client:
        assert (await client.get("/readyz")).json()["status"] == "ready"
        missing = await client.get("/nothing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


def test_seed_command_prints_users_with_tokens(api_url: str, server_jwt: JwtSettings) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "booking_api.seed",
            "--api",
            api_url,
            "--instructors",
            "1",
            "--days",
            "1",
            "--secret",
            server_jwt.signing_key(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    document = orjson.loads(done.stdout)
    users = {u["id"]: u for u in document["users"]}
    assert users["instructor-1"]["role"] == "instructor"
    assert users["student-1"]["token"].count(".") == 2
    assert b"student-2" in done.stderr
