"""The booking-to-SSE smoke both real stacks run (Compose in test_compose_smoke.py, a kind
cluster through the Gateway in test_k8s_smoke.py): an instructor and a slot through the
API, a browser-like SSE stream on the instructor's public schedule, a booking, and the
slot's change arriving on the stream."""

import json
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from httpx_sse import connect_sse

from slotstream_contracts.auth import Role

TokenFactory = Callable[[str, Role], str]


def book_and_watch_the_stream(
    base_url: str, token: TokenFactory, headers: dict[str, str] | None = None
) -> str:
    """Run the flow; returns the instructor id it created."""
    extra = headers or {}
    instructor_id = f"smoke-{secrets.token_hex(4)}"
    instructor = {"Authorization": f"Bearer {token(instructor_id, Role.INSTRUCTOR)}", **extra}
    student = {"Authorization": f"Bearer {token('smoke-student', Role.STUDENT)}", **extra}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        created = client.post("/api/instructors", json={"name": "Smoke Test"}, headers=instructor)
        assert created.status_code == 201, created.text
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        slot = client.post(
            f"/api/instructors/{instructor_id}/slots",
            json={"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
            headers=instructor,
        )
        assert slot.status_code == 201, slot.text
        slot_id = slot.json()["id"]

        frames: list[tuple[str, dict[str, Any]]] = []
        snapshot_seen = threading.Event()
        booked_seen = threading.Event()

        def listen() -> None:
            with (
                httpx.Client(
                    base_url=base_url, timeout=httpx.Timeout(10, read=60), headers=extra
                ) as sse,
                connect_sse(
                    sse,
                    "GET",
                    "/api/book-now/schedule-updates",
                    params={"instructorId": instructor_id},
                ) as source,
            ):
                for event in source.iter_sse():
                    frames.append((event.event, json.loads(event.data)))
                    if event.event == "snapshot":
                        snapshot_seen.set()
                    elif event.event != "heartbeat" and slot_id in event.data:
                        booked_seen.set()
                        return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert snapshot_seen.wait(30), f"no snapshot through the front door: {frames}"
        booking = client.post("/api/bookings", json={"slotId": slot_id}, headers=student)
        assert booking.status_code == 201, booking.text
        assert booked_seen.wait(30), f"the booked slot never reached the stream: {frames}"
        listener.join(5)
    return instructor_id
