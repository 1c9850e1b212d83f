"""Click to stream across the real processes of the demo stack.

A booking made through the booking-api becomes a change in its memory backend, which the
change-publisher reads from the change feed and writes to Kafka (keyed by instructor,
with CloudEvents headers), which both push-gateways read and deliver as SSE frames: to a
client connected straight to each gateway and to one connected through the nginx edge.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from httpx_sse import ServerSentEvent, aconnect_sse

from scripts.devstack import DevStack
from slotstream_contracts.entities import BookingData, ScheduleSnapshot, SlotData, SlotStatus
from slotstream_contracts.events import CONTENT_TYPE, EventType, decode_event
from slotstream_contracts.topics import SCHEDULE_TOPIC
from slotstream_testkit.kafka import topic_partitions

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


class SseReader:
    """Collects the frames of one SSE connection in the background."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.frames: list[ServerSentEvent] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aconnect_sse(self.client, "GET", self.url) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            async for frame in source.aiter_sse():
                self.frames.append(frame)
                self._arrived.set()

    async def wait_for(self, event: str, predicate: Any = lambda _d: True) -> ServerSentEvent:
        async def scan() -> ServerSentEvent:
            seen = 0
            while True:
                for frame in self.frames[seen:]:
                    if frame.event == event and predicate(json.loads(frame.data)):
                        return frame
                seen = len(self.frames)
                self._arrived.clear()
                if self._task is not None and self._task.done():
                    self._task.result()
                    raise AssertionError(f"{self.url} ended before a {event!r} frame")
                await self._arrived.wait()

        return await asyncio.wait_for(scan(), TIMEOUT)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Self]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, httpx.HTTPError):
                pass


@asynccontextmanager
async def schedule_consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of every schedule partition, positioned at the end (before the click)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = topic_partitions(consumer, SCHEDULE_TOPIC)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        yield consumer
    finally:
        await consumer.stop()


async def available_slot(api: httpx.AsyncClient, instructor_id: str) -> str:
    response = await api.get(f"/api/instructors/{instructor_id}/schedule")
    response.raise_for_status()
    snapshot = ScheduleSnapshot.model_validate(response.json())
    free = [s for s in snapshot.slots if s.status is SlotStatus.AVAILABLE]
    assert free, f"the seed left no available slot for {instructor_id}"
    return free[-1].id


async def test_a_booking_reaches_kafka_and_both_gateways_as_sse(stack: DevStack) -> None:
    student = stack.user("student")
    instructor_id = stack.user("instructor").id
    path = f"/api/book-now/schedule-updates?instructorId={instructor_id}"
    async with (
        httpx.AsyncClient(base_url=stack.booking_api_url, timeout=TIMEOUT) as api,
        httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=None)) as sse,
        schedule_consumer(stack.bootstrap_servers) as consumer,
        SseReader(sse, f"{stack.gateway_url(1)}{path}").open() as direct,
        SseReader(sse, f"{stack.gateway_url(2)}{path}").open() as other_gateway,
        SseReader(sse, f"{stack.base_url}{path}").open() as edge,
    ):
        slot_id = await available_slot(api, instructor_id)
        for reader in (direct, other_gateway, edge):
            snapshot = await reader.wait_for("snapshot")
            assert json.loads(snapshot.data)["channel"] == f"instructors/{instructor_id}/schedule"

        booked = await api.post(
            "/api/bookings",
            json={"slotId": slot_id},
            headers={"Authorization": f"Bearer {student.token}"},
        )
        assert booked.status_code == 201, booked.text
        booking_id = booked.json()["id"]

        # Kafka: the slot change, keyed by the instructor, with headers. The booking names
        # its student, so it is not on the (public) schedule topic at all.
        wanted = {EventType.SLOT_UPDATED}
        found: dict[EventType, Any] = {}
        async with asyncio.timeout(TIMEOUT):
            while wanted - found.keys():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if "ce_type" not in dict(record.headers):
                            continue  # not an event: another test's filler record
                        event = decode_event(record.value)
                        data = event.data
                        if (isinstance(data, SlotData) and data.id == slot_id) or (
                            isinstance(data, BookingData) and data.slot_id == slot_id
                        ):
                            found[event.type] = record
        assert EventType.BOOKING_CREATED not in found
        for event_type, record in found.items():
            assert record.key == instructor_id.encode()
            headers = dict(record.headers)
            assert headers["ce_type"] == event_type.value.encode()
            assert headers["content-type"] == CONTENT_TYPE.encode()
            assert headers["ce_id"] == decode_event(record.value).id.encode()

        # SSE: the same slot delta on the gateway and through the edge, same event id.
        def is_booked_slot(data: dict[str, Any]) -> bool:
            return bool(data["data"]["id"] == slot_id and data["data"]["status"] == "booked")

        readers = (direct, other_gateway, edge)
        frames = [await reader.wait_for("slot", is_booked_slot) for reader in readers]
        kafka_slot = decode_event(found[EventType.SLOT_UPDATED].value)
        assert isinstance(kafka_slot.data, SlotData)
        for frame in frames:
            assert json.loads(frame.data)["id"] == kafka_slot.id
            assert json.loads(frame.data)["data"]["bookingId"] == booking_id
        # Each gateway addressed directly (the edge's round robin may pick either one).
        assert len({frame.id for frame in frames}) == 1, (
            f"event ids must be the same on every gateway: {[f.id for f in frames]}"
        )
        assert not [f for f in direct.frames if f.event == "booking"], "bookings are private"

        cancelled = await api.delete(
            f"/api/bookings/{booking_id}", headers={"Authorization": f"Bearer {student.token}"}
        )
        assert cancelled.status_code == 200, cancelled.text
        freed = await edge.wait_for(
            "slot", lambda d: d["data"]["id"] == slot_id and d["data"]["status"] == "available"
        )
        assert json.loads(freed.data)["data"]["version"] > kafka_slot.data.version
