"""``slotstream-seed``: demo data through the public HTTP API, safe to run again.

Creates N instructors (each with their own token, as an instructor creates their own
profile) and a week of one-hour slots in each instructor's local working hours, plus two
demo students. Rerunning creates nothing twice: an existing instructor or a slot that
already exists answers 409, which counts as done. Prints a JSON document of the users and
their ready tokens on stdout, and a table for humans on stderr.

    slotstream-seed --api http://127.0.0.1:8000 [--secret S] [--instructors 3] [--days 7]
"""

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from booking_api.tokens import KEY_HINT, jwt_settings_from_env
from slotstream_contracts.auth import JwtSettings, Role, mint_token

INSTRUCTORS = [
    ("Ada Lovelace", "Europe/London"),
    ("Grace Hopper", "America/New_York"),
    ("Katherine Johnson", "America/Chicago"),
    ("Margaret Hamilton", "Europe/Berlin"),
    ("Hedy Lamarr", "Europe/Vienna"),
    ("Radia Perlman", "Asia/Tokyo"),
]
STUDENTS = [("student-1", "Alan Turing"), ("student-2", "Barbara Liskov")]
WORKING_HOURS = (9, 10, 11, 13, 14, 15, 16)
#: demo tokens are short-lived; `make demo` re-mints them (scripts/devstack.py)
TOKEN_TTL = timedelta(hours=1)


@dataclass
class SeededUser:
    id: str
    role: Role
    name: str
    token: str


def _check(response: httpx.Response, what: str) -> bool:
    """True when created, False when it already existed; raises on anything else."""
    if response.status_code == 201:
        return True
    if response.status_code == 409:
        return False
    raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")


async def wait_ready(client: httpx.AsyncClient, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"the booking-api at {client.base_url} is not ready")
        await asyncio.sleep(0.2)


def slot_times(timezone: str, days: int, today: date) -> list[tuple[datetime, datetime]]:
    zone = ZoneInfo(timezone)
    times = []
    for offset in range(1, days + 1):
        day = today + timedelta(days=offset)
        for hour in WORKING_HOURS:
            start = datetime.combine(day, time(hour), zone)
            times.append((start, start + timedelta(hours=1)))
    return times


async def seed_instructor(
    client: httpx.AsyncClient, user: SeededUser, timezone: str, days: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {user.token}"}
    created = _check(
        await client.post(
            "/api/instructors", json={"name": user.name, "timezone": timezone}, headers=headers
        ),
        f"instructor {user.id}",
    )
    new_slots = 0
    for start, end in slot_times(timezone, days, datetime.now(UTC).date()):
        response = await client.post(
            f"/api/instructors/{user.id}/slots",
            json={"start": start.isoformat(), "end": end.isoformat()},
            headers=headers,
        )
        new_slots += _check(response, f"slot {start.isoformat()} of {user.id}")
    return {
        "id": user.id,
        "name": user.name,
        "timezone": timezone,
        "created": created,
        "newSlots": new_slots,
    }


def make_users(
    settings: JwtSettings, instructors: int, ttl: timedelta = TOKEN_TTL
) -> list[SeededUser]:
    users = [
        SeededUser(
            f"instructor-{n + 1}",
            Role.INSTRUCTOR,
            name,
            mint_token(settings, f"instructor-{n + 1}", Role.INSTRUCTOR, name, ttl),
        )
        for n, (name, _tz) in enumerate(INSTRUCTORS[:instructors])
    ]
    users += [
        SeededUser(sid, Role.STUDENT, name, mint_token(settings, sid, Role.STUDENT, name, ttl))
        for sid, name in STUDENTS
    ]
    users.append(
        SeededUser(
            "admin",
            Role.ADMIN,
            "Admin",
            mint_token(settings, "admin", Role.ADMIN, "Admin", ttl),
        )
    )
    return users


async def seed(
    api: str, settings: JwtSettings, instructors: int, days: int, wait: float
) -> dict[str, Any]:
    users = make_users(settings, instructors)
    async with httpx.AsyncClient(base_url=api, timeout=10.0) as client:
        await wait_ready(client, wait)
        teachers = [u for u in users if u.role is Role.INSTRUCTOR]
        results = await asyncio.gather(
            *(
                seed_instructor(client, user, INSTRUCTORS[n][1], days)
                for n, user in enumerate(teachers)
            )
        )
    return {
        "api": api,
        "users": [
            {"id": u.id, "role": u.role.value, "name": u.name, "token": u.token} for u in users
        ],
        "instructors": results,
    }


def table(document: dict[str, Any]) -> str:
    lines = [f"Seeded {document['api']}", f"{'user':<14} {'role':<11} {'name':<20} token"]
    for user in document["users"]:
        lines.append(f"{user['id']:<14} {user['role']:<11} {user['name']:<20} {user['token']}")
    for inst in document["instructors"]:
        lines.append(f"{inst['id']}: {inst['newSlots']} new slots ({inst['timezone']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="slotstream-seed", description=__doc__.split("\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="booking-api base URL")
    parser.add_argument("--secret", default=None, help="HS256 secret (default: from env)")
    parser.add_argument(
        "--instructors", type=int, default=3, choices=range(1, len(INSTRUCTORS) + 1)
    )
    parser.add_argument("--days", type=int, default=7, choices=range(1, 29))
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for /readyz")
    args = parser.parse_args(argv)
    try:
        settings = jwt_settings_from_env(args.secret)
        settings.signing_key()
    except ValueError as exc:
        parser.error(f"cannot sign tokens: {exc} ({KEY_HINT})")
    try:
        document = asyncio.run(seed(args.api, settings, args.instructors, args.days, args.wait))
    except (RuntimeError, httpx.HTTPError) as exc:
        sys.stderr.write(f"slotstream-seed: {exc}\n")
        raise SystemExit(1) from None
    sys.stderr.write(table(document))
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
