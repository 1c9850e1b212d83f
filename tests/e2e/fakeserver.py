"""A small stand-in for the edge (page + booking API + SSE) with a controllable stream.

Used to test the browser client's own behaviour where the real stack cannot be steered
precisely: a server that refuses the stream (the client must back off and resume with
``lastEventId``), and stale deltas (the page must never move a slot backwards).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from slotstream_contracts.entities import ScheduleSnapshot, SlotData, SlotStatus

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
INSTRUCTOR = "fake-instructor"


def make_slot(slot_id: str, start: datetime, version: int = 1, booked: bool = False) -> SlotData:
    return SlotData(
        id=slot_id,
        instructor_id=INSTRUCTOR,
        start=start,
        end=start + timedelta(hours=1),
        status=SlotStatus.BOOKED if booked else SlotStatus.AVAILABLE,
        booking_id="fake-booking" if booked else None,
        version=version,
        updated_at=datetime.now(UTC),
    )


@dataclass
class FakeEdge:
    """State and knobs of the fake; the test changes them while the page runs."""

    slots: dict[str, SlotData] = field(default_factory=dict)
    refuse_streams: int = 0  # answer this many next stream requests with 503
    stream_requests: list[dict[str, str]] = field(default_factory=list)
    queues: list[asyncio.Queue[bytes | None]] = field(default_factory=list)
    next_id: int = 0
    loop: asyncio.AbstractEventLoop | None = None

    def snapshot(self) -> ScheduleSnapshot:
        now = datetime.now(UTC)
        return ScheduleSnapshot(
            instructor_id=INSTRUCTOR,
            range_start=now - timedelta(days=1),
            range_end=now + timedelta(days=28),
            slots=tuple(self.slots.values()),
            version=max((s.version for s in self.slots.values()), default=0),
            generated_at=now,
        )

    def frame(self, event: str, payload: object) -> bytes:
        self.next_id += 1
        return b"id: s0:%d\nevent: %s\ndata: %s\n\n" % (
            self.next_id,
            event.encode(),
            orjson.dumps(payload),
        )

    def send_slot(self, slot: SlotData) -> None:
        """Push a slot delta (any version, even a stale one) to every open stream."""
        event = {
            "specversion": "1.0",
            "id": f"fake-{self.next_id}",
            "type": "slot.updated",
            "data": slot.model_dump(mode="json", by_alias=True),
        }
        self._broadcast(self.frame("slot", event))

    def send_heartbeat(self) -> None:
        """The gateway's heartbeat (a named event without ``id:``) to every open stream."""
        self._broadcast(b"event: heartbeat\ndata: {}\n\n")

    def drop_streams(self) -> None:
        """End every open stream, as a gateway that goes away would."""
        self._broadcast(None)

    def _broadcast(self, frame: bytes | None) -> None:
        # Called from the test's thread: hand the frame to the server's event loop.
        if self.loop is None:
            return
        for queue in list(self.queues):
            self.loop.call_soon_threadsafe(queue.put_nowait, frame)

    def app(self) -> Starlette:
        async def instructors(_: Request) -> Response:
            return JSONResponse([{"id": INSTRUCTOR, "name": "Fake Instructor"}])

        async def schedule(_: Request) -> Response:
            return Response(
                orjson.dumps(self.snapshot().model_dump(mode="json", by_alias=True)),
                media_type="application/json",
            )

        async def demo_users(_: Request) -> Response:
            return JSONResponse({"users": []})

        async def stream(request: Request) -> Response:
            self.loop = asyncio.get_running_loop()
            self.stream_requests.append(dict(request.query_params))
            if self.refuse_streams > 0:
                self.refuse_streams -= 1
                return JSONResponse({"detail": "no gateway"}, status_code=503)
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.queues.append(queue)
            first = self.frame(
                "snapshot",
                {
                    "channel": f"instructors/{INSTRUCTOR}/schedule",
                    "schedule": self.snapshot().model_dump(mode="json", by_alias=True),
                },
            )

            async def body() -> AsyncIterator[bytes]:
                try:
                    yield b"retry: 200\n\n" + first
                    while (frame := await queue.get()) is not None:
                        yield frame
                finally:
                    self.queues.remove(queue)

            return StreamingResponse(
                body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
            )

        return Starlette(
            routes=[
                Route("/api/instructors", instructors),
                Route(f"/api/instructors/{INSTRUCTOR}/schedule", schedule),
                Route("/demo-users.json", demo_users),
                Route("/api/book-now/schedule-updates", stream),
                Mount("/", StaticFiles(directory=WEB_ROOT, html=True)),
            ]
        )
