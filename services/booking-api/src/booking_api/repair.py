"""The repair's background loop: one bounded step of ``BookingService.repair_slots`` every
``BOOKING_API_REPAIR_INTERVAL_SECONDS``, in every replica.

Replicas need no coordination: each release is a compare-and-set on the booking id and
the version read, so of two replicas freeing one slot exactly one does (and logs and
counts it). A step the store fails is one warning line; the next interval tries again
from the same place. A stored slot the model refuses, or whose booking it refuses, is one
warning line per pass (``slot.unreadable``, its id and the validation error), counted as a
failure, and the scan goes on after it (the slot left as it is). Each replica keeps its
own place in the scan, in (start, id) order of the booked slots that have not started, so
every one is looked at within ``booked slots / batch`` intervals however many live
bookings come first.
"""

import asyncio
from collections.abc import Callable
from datetime import timedelta

import structlog

from booking_api.domain.repair import SlotCursor
from booking_api.service import BookingService, RepairedSlot

log = structlog.get_logger("booking_api.repair")


class SlotRepair:
    def __init__(
        self,
        service: BookingService,
        *,
        grace: timedelta,
        interval_seconds: float,
        batch: int,
        on_repaired: Callable[[RepairedSlot], None],
        on_failed: Callable[[], None],
    ) -> None:
        self._service = service
        self._grace = grace
        self._interval = interval_seconds
        self._batch = batch
        self._on_repaired = on_repaired
        self._on_failed = on_failed
        self._after: SlotCursor | None = None

    async def step(self) -> list[RepairedSlot]:
        """One batch: the slots it freed, reported; the next step goes on after it. A store
        that fails is one warning line, and the next step tries again from there."""
        try:
            done = await self._service.repair_slots(self._after, self._grace, self._batch)
        except Exception as exc:
            self._failed(exc)
            return []
        self._after = done.next_after
        for unreadable in done.unreadable:
            self._on_failed()
            log.warning("slot.unreadable", slot_id=unreadable.slot_id, error=unreadable.error)
        for repaired in done.repaired:
            self._on_repaired(repaired)
        if done.error is not None:
            self._failed(done.error)
        return done.repaired

    def _failed(self, error: Exception) -> None:
        self._on_failed()
        log.warning("slot.repair_failed", error=repr(error), retry_in=self._interval)

    async def run(self) -> None:
        """Step now, then every interval, until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(self._interval)
