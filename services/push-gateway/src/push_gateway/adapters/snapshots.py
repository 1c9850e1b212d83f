"""Schedule snapshots from the booking-api, with concurrent fetches coalesced."""

import asyncio
from typing import Protocol

import httpx
import stamina

from slotstream_contracts.entities import ScheduleSnapshot


class SnapshotNotFound(LookupError):
    """The booking-api does not know the instructor."""


class SnapshotUnavailable(RuntimeError):
    """The booking-api could not be reached or answered with an error."""


class SnapshotSource(Protocol):
    async def fetch(self, instructor_id: str) -> ScheduleSnapshot: ...


class HttpSnapshotSource:
    """``GET {booking_api}/api/instructors/{id}/schedule`` → ScheduleSnapshot."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def fetch(self, instructor_id: str) -> ScheduleSnapshot:
        try:
            async for attempt in stamina.retry_context(
                on=(httpx.TransportError, SnapshotUnavailable), attempts=3, timeout=10.0
            ):
                with attempt:
                    return await self._fetch_once(instructor_id)
        except httpx.TransportError as exc:
            raise SnapshotUnavailable(f"booking-api unreachable: {exc!r}") from exc
        raise SnapshotUnavailable("booking-api gave no snapshot")  # pragma: no cover

    async def _fetch_once(self, instructor_id: str) -> ScheduleSnapshot:
        response = await self._client.get(f"/api/instructors/{instructor_id}/schedule")
        if response.status_code == 404:
            raise SnapshotNotFound(instructor_id)
        if response.status_code != 200:
            raise SnapshotUnavailable(f"booking-api answered {response.status_code}")
        return ScheduleSnapshot.model_validate_json(response.content)


class FakeSnapshotSource:
    """In-memory snapshots; records every fetch; ``gate`` lets tests hold fetches open."""

    def __init__(self, snapshots: dict[str, ScheduleSnapshot] | None = None) -> None:
        self.snapshots = dict(snapshots or {})
        self.fetches: list[str] = []
        self.gate: asyncio.Event | None = None

    async def fetch(self, instructor_id: str) -> ScheduleSnapshot:
        self.fetches.append(instructor_id)
        if self.gate is not None:
            await self.gate.wait()
        snapshot = self.snapshots.get(instructor_id)
        if snapshot is None:
            raise SnapshotNotFound(instructor_id)
        return snapshot


class CoalescingSnapshots:
    """Concurrent requests for one instructor share a single in-flight fetch, so a wave of
    reconnects after a gateway restart costs the booking-api one request per instructor."""

    def __init__(self, source: SnapshotSource) -> None:
        self._source = source
        self._in_flight: dict[str, asyncio.Future[ScheduleSnapshot]] = {}
        self.fetches = 0

    async def fetch(self, instructor_id: str) -> ScheduleSnapshot:
        future = self._in_flight.get(instructor_id)
        if future is None:
            self.fetches += 1
            future = asyncio.ensure_future(self._source.fetch(instructor_id))
            self._in_flight[instructor_id] = future
            future.add_done_callback(lambda done: self._settle(instructor_id, done))
        # shield: one waiter giving up (client gone) must not cancel the others' fetch
        return await asyncio.shield(future)

    def _settle(self, instructor_id: str, done: "asyncio.Future[ScheduleSnapshot]") -> None:
        self._in_flight.pop(instructor_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here so an unawaited failure is not reported as lost
