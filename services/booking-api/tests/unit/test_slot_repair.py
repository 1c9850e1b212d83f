"""A slot left booked by a booking that does not exist, or by a cancelled booking, is
released by the booking-api's repair once it is older than the grace period.

The app runs with its lifespan (where the repair runs every
``BOOKING_API_REPAIR_INTERVAL_SECONDS``), on the memory store failing on demand, with a
clock the test moves past the grace period.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError
from structlog.testing import capture_logs
from structlog.typing import EventDict

from booking_api.app import create_app
from booking_api.config import Settings
from booking_api.domain.repair import SlotCursor
from booking_api.ports import UnreadableSlot
from booking_api.repair import SlotRepair
from booking_api.service import BookingService
from slotstream_contracts.auth import JwtSettings, Principal, Role
from slotstream_contracts.documents import BOOKINGS, SLOTS, BookingDocument, SlotDocument
from slotstream_contracts.entities import BookingStatus, SlotStatus

from .test_api_idempotency import setup_slot
from .test_partial_failure import FlakyStorage, slot_state

AuthHeaders = Callable[..., dict[str, str]]
Future = Callable[..., str]
GRACE = 120.0

pytestmark = pytest.mark.usefixtures("no_read_back_pauses")


@dataclass
class Clock:
    """The service's clock: now, plus however far the test moved it."""

    ahead: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture
async def running(
    jwt_settings: JwtSettings, flaky: FlakyStorage, clock: Clock
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started: the repair runs every 20 ms."""
    settings = Settings(
        storage="memory",
        jwt=jwt_settings,
        repair_interval_seconds=0.02,
        repair_grace_seconds=GRACE,
    )
    app = create_app(settings, storage=flaky, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://booking") as client,
    ):
        yield client


async def settled(client: httpx.AsyncClient, status: str, within: float = 3.0) -> str:
    """The slot's status once it is ``status``, or after ``within`` seconds."""
    deadline = time.monotonic() + within
    state = (await slot_state(client))["status"]
    while state != status and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        state = (await slot_state(client))["status"]
    assert isinstance(state, str)
    return state


async def freed_for_another_student(
    client: httpx.AsyncClient,
    auth: AuthHeaders,
    clock: Clock,
    logs: list[EventDict],
    slot_id: str,
    booking_id: str,
    why: str,
) -> None:
    """Past the grace the repair frees the slot for ``why``: another student books it, and
    the repair said so once (its log line and its counter)."""
    clock.ahead = timedelta(seconds=GRACE + 1)
    assert await settled(client, "available") == "available"
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s2"))
    assert booked.status_code == 201, booked.text
    repaired = [e for e in logs if e["event"] == "slot.repaired"]
    assert [(e["slot_id"], e["booking_id"], e["why"]) for e in repaired] == [
        (slot_id, booking_id, why)
    ]
    metrics = (await client.get("/metrics")).text
    assert f'booking_api_slots_repaired_total{{why="{why}"}} 1.0' in metrics


async def repair_steps(
    service: BookingService, steps: int, batch: int = 10
) -> tuple[list[list[str]], int]:
    """``steps`` runs of a repair past the grace, called directly: the slot ids each run
    freed, and the failures it counted."""
    failures: list[None] = []
    repair = SlotRepair(
        service,
        grace=timedelta(seconds=GRACE),
        interval_seconds=60,
        batch=batch,
        on_repaired=lambda _done: None,
        on_failed=lambda: failures.append(None),
    )
    freed = [[r.slot_id for r in await repair.step()] for _ in range(steps)]
    return freed, len(failures)


@pytest.mark.parametrize("cut", ["insert-not-applied", "claim-unresolved"])
async def test_a_slot_held_by_a_booking_that_does_not_exist_is_freed_after_the_grace(
    running: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    flaky: FlakyStorage,
    clock: Clock,
    logs: list[EventDict],
    cut: str,
) -> None:
    """A booking without an Idempotency-Key that failed half-way and could not be read
    back: 503, the slot held by a booking id that has no booking. Nobody retries it.
    Within the grace the slot stays held (the request might still be running); after it,
    the repair frees it and another student can book it."""
    client = running
    slot_id = await setup_slot(client, auth, future)
    if cut == "claim-unresolved":
        flaky.lose_claim_replies = 1
        flaky.fail_slot_reads_after_claim = 3
    else:
        flaky.fail_bookings = 1
        flaky.fail_booking_reads_after_insert = 3
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503, failed.text
    held = await slot_state(client)
    assert held["status"] == "booked"
    assert (await client.get("/api/users/me/bookings", headers=auth("s1"))).json() == []

    clock.ahead = timedelta(seconds=GRACE / 2)
    assert await settled(client, "available", within=0.3) == "booked"

    await freed_for_another_student(
        client, auth, clock, logs, slot_id, held["bookingId"], "no-booking"
    )


async def test_a_slot_whose_booking_was_cancelled_is_freed_after_the_grace(
    running: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    flaky: FlakyStorage,
    clock: Clock,
    logs: list[EventDict],
) -> None:
    """The cancel marked the booking cancelled, then the slot's release failed (503), and
    nobody cancelled again: the repair frees the slot."""
    client = running
    slot_id = await setup_slot(client, auth, future)
    booked = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert booked.status_code == 201, booked.text
    booking_id = booked.json()["id"]
    flaky.fail_releases = 1
    cancel = await client.delete(f"/api/bookings/{booking_id}", headers=auth("s1"))
    assert cancel.status_code == 503, cancel.text
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert mine["status"] == "cancelled"
    assert (await slot_state(client))["status"] == "booked"

    await freed_for_another_student(
        client, auth, clock, logs, slot_id, booking_id, "booking-cancelled"
    )


async def test_a_slot_of_a_live_booking_is_never_freed(
    running: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    flaky: FlakyStorage,
    clock: Clock,
    logs: list[EventDict],
) -> None:
    """A booking stored though its insert's reply was lost and could not be read back
    (503): the booking is real, so its slot stays booked however old."""
    client = running
    slot_id = await setup_slot(client, auth, future)
    flaky.lose_booking_replies = 1
    flaky.fail_booking_reads_after_insert = 3
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503, failed.text
    clock.ahead = timedelta(seconds=GRACE * 10)
    assert await settled(client, "available", within=0.3) == "booked"
    [mine] = (await client.get("/api/users/me/bookings", headers=auth("s1"))).json()
    assert mine["status"] == "active"
    assert [e for e in logs if e["event"] == "slot.repaired"] == []


async def test_every_repair_reason_is_exported_at_zero_before_any_repair(
    running: httpx.AsyncClient,
) -> None:
    """The alert on repairs reads ``increase()``: a reason's series first exported at 1 by
    the first repair after a restart would show no increase, and the alert stay silent."""
    metrics = (await running.get("/metrics")).text
    for why in ("no-booking", "booking-cancelled"):
        assert f'booking_api_slots_repaired_total{{why="{why}"}} 0.0' in metrics


async def test_a_failing_store_is_one_line_and_the_next_run_repairs(
    running: httpx.AsyncClient,
    auth: AuthHeaders,
    future: Future,
    flaky: FlakyStorage,
    clock: Clock,
    logs: list[EventDict],
) -> None:
    client = running
    slot_id = await setup_slot(client, auth, future)
    flaky.fail_bookings = 1
    flaky.fail_booking_reads_after_insert = 3
    failed = await client.post("/api/bookings", json={"slotId": slot_id}, headers=auth("s1"))
    assert failed.status_code == 503, failed.text
    flaky.fail_booking_reads = 1  # the repair's look for the booking
    clock.ahead = timedelta(seconds=GRACE + 1)
    assert await settled(client, "available") == "available"
    [failure] = [e for e in logs if e["event"] == "slot.repair_failed"]
    assert failure["log_level"] == "warning"
    assert "connection lost while reading the booking" in failure["error"]
    metrics = (await client.get("/metrics")).text
    assert "booking_api_slot_repair_failures_total 1.0" in metrics
    assert 'booking_api_slots_repaired_total{why="no-booking"} 1.0' in metrics


class LateStorage(FlakyStorage):
    """Unreachable until :attr:`up`; counts the repair's scans."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.scans = 0
        scan = self.slots.list_booked_after

        async def counted(
            after: SlotCursor, updated_before: datetime, limit: int
        ) -> list[SlotDocument | UnreadableSlot]:
            self.scans += 1
            return await scan(after, updated_before, limit)

        self.slots.list_booked_after = counted  # type: ignore[method-assign]

    async def start(self) -> None:
        if not self.up:
            raise ServerSelectionTimeoutError("db1:27017: [Errno 111] Connection refused")


async def test_the_repair_runs_once_the_store_is_open_and_stops_at_shutdown(
    jwt_settings: JwtSettings,
) -> None:
    late = LateStorage()
    settings = Settings(
        storage="mongo",
        mongo_url=SecretStr("mongodb://db1:27017/?replicaSet=rs0"),
        jwt=jwt_settings,
        repair_interval_seconds=0.02,
    )
    app = create_app(settings, open_storage=lambda _settings: late)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.2)
        assert late.scans == 0
        late.up = True
        deadline = time.monotonic() + 5
        while late.scans < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    stopped = late.scans
    await asyncio.sleep(0.1)
    assert late.scans == stopped


ADA = Principal(sub="i1", role=Role.INSTRUCTOR, name="Ada")
GRACE_HOPPER = Principal(sub="s1", role=Role.STUDENT, name="Grace")


async def test_a_retry_finishing_the_booking_while_the_repair_looks_keeps_its_slot(
    flaky: FlakyStorage, clock: Clock
) -> None:
    """A first try with an Idempotency-Key left the slot held and no booking; long after,
    the retry finishes the booking just as the repair, which read the slot as stale,
    finds no booking. The repair must not free the slot under the booking now stored (a
    second student could book it): the retry marked the slot as changed first."""
    service = BookingService(flaky, clock)
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slot = await service.create_slot(ADA, "i1", start, start + timedelta(hours=1))
    flaky.fail_bookings = 1
    flaky.fail_booking_reads_after_insert = 3
    with pytest.raises(AutoReconnect):
        await service.book(GRACE_HOPPER, slot.id, 20, "key-1")
    clock.ahead = timedelta(seconds=GRACE * 2)
    look_up = flaky.bookings.get

    async def absent_then_retried(booking_id: str) -> BookingDocument | None:
        found = await look_up(booking_id)
        flaky.bookings.get = look_up  # type: ignore[method-assign]
        await service.book(GRACE_HOPPER, slot.id, 20, "key-1")
        return found

    flaky.bookings.get = absent_then_retried  # type: ignore[method-assign]
    done = await service.repair_slots(None, timedelta(seconds=GRACE), 10)
    assert done.repaired == []
    held = await flaky.slots.get(slot.id)
    assert held is not None
    assert held.booking_id is not None
    assert held.status is SlotStatus.BOOKED
    booking = await flaky.bookings.get(held.booking_id)
    assert booking is not None
    assert booking.status is BookingStatus.ACTIVE


async def test_each_step_reads_a_bounded_batch_and_the_scan_reaches_every_booked_slot(
    flaky: FlakyStorage, clock: Clock
) -> None:
    """Live bookings first in the schedule do not hide a stale slot behind them: each
    step reads at most its batch and goes on after it, so the stale slot, fifth of the
    booked ones, is freed by the third step of two; then the scan starts again."""
    service = BookingService(flaky, clock)
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slots = [
        await service.create_slot(
            ADA, "i1", start + timedelta(hours=h), start + timedelta(hours=h, minutes=50)
        )
        for h in range(5)
    ]
    for n, slot in enumerate(slots[:4]):
        student = Principal(sub=f"s{n}", role=Role.STUDENT)
        await service.book(student, slot.id, 20)
    await flaky.slots.book(slots[4].id, "lost-booking", "s9", service.now())
    clock.ahead = timedelta(seconds=GRACE * 2)
    scanned: list[int] = []
    scan = flaky.slots.list_booked_after

    async def counted(
        after: SlotCursor, updated_before: datetime, limit: int
    ) -> list[SlotDocument | UnreadableSlot]:
        found = await scan(after, updated_before, limit)
        scanned.append(len(found))
        return found

    flaky.slots.list_booked_after = counted  # type: ignore[method-assign]
    freed, _ = await repair_steps(service, 4, batch=2)
    assert scanned == [2, 2, 1, 2]
    assert freed == [[], [], [slots[4].id], []]
    for slot in slots[:4]:
        still = await flaky.slots.get(slot.id)
        assert still is not None
        assert still.status is SlotStatus.BOOKED


async def test_a_stored_slot_it_cannot_read_is_one_line_and_the_scan_goes_on(
    flaky: FlakyStorage, clock: Clock, logs: list[EventDict]
) -> None:
    """A booked slot document the model refuses (here its version is not a number: written
    by hand, or by another release) comes first in the scan, before a slot held by a
    booking that does not exist. The repair names it once per pass, counts it, and frees
    the stuck slot after it, in the same run; it used to fail every run at that document."""
    service = BookingService(flaky, clock)
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    stuck = await service.create_slot(
        ADA, "i1", start + timedelta(hours=2), start + timedelta(hours=3)
    )
    await flaky.slots.book(stuck.id, "lost-booking", "s9", service.now())
    unreadable = {
        **stuck.model_copy(
            update={"id": "bad-slot", "start": start, "end": start + timedelta(hours=1)}
        ).to_document(),
        "status": SlotStatus.BOOKED.value,
        "bookingId": "lost-too",
        "version": "seven",
    }
    flaky.collections[SLOTS].insert(unreadable)
    clock.ahead = timedelta(seconds=GRACE * 2)
    freed, failures = await repair_steps(service, 2)
    assert freed == [[stuck.id], []]
    still = await flaky.slots.get(stuck.id)
    assert still is not None
    assert still.status is SlotStatus.AVAILABLE
    skipped = [e for e in logs if e["event"] == "slot.unreadable"]
    assert len(skipped) == 2, logs  # one per pass over it
    assert skipped[0]["log_level"] == "warning"
    assert skipped[0]["slot_id"] == "bad-slot"
    assert "version" in skipped[0]["error"]
    assert failures == 2
    assert [e for e in logs if e["event"] == "slot.repair_failed"] == []


async def test_a_stored_booking_it_cannot_read_is_one_line_and_the_scan_goes_on(
    flaky: FlakyStorage, clock: Clock, logs: list[EventDict]
) -> None:
    """A booked slot whose booking document the model refuses (edited by hand, written by
    another release) comes first in the scan, before a slot held by a booking that does
    not exist. The repair cannot tell whether that booking is active, so it leaves its slot
    booked, names it once per pass and counts it, and frees the stuck slot after it in the
    same run; it used to fail every run at that booking, so the slots after it were never
    looked at."""
    service = BookingService(flaky, clock)
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    first = await service.create_slot(ADA, "i1", start, start + timedelta(hours=1))
    stuck = await service.create_slot(
        ADA, "i1", start + timedelta(hours=2), start + timedelta(hours=3)
    )
    booking = await service.book(GRACE_HOPPER, first.id, 20)
    flaky.collections[BOOKINGS].update(
        booking.id, lambda _d: True, {"version": "seven"}, bump_version=False
    )
    await flaky.slots.book(stuck.id, "lost-booking", "s9", service.now())
    clock.ahead = timedelta(seconds=GRACE * 2)
    freed, failures = await repair_steps(service, 2)
    assert freed == [[stuck.id], []]
    kept = await flaky.slots.get(first.id)
    assert kept is not None
    assert (kept.status, kept.booking_id) == (SlotStatus.BOOKED, booking.id)
    skipped = [e for e in logs if e["event"] == "slot.unreadable"]
    assert [e["slot_id"] for e in skipped] == [first.id, first.id]  # one per pass
    assert f"booking {booking.id}" in skipped[0]["error"]
    assert "version" in skipped[0]["error"]
    assert failures == 2
    assert [e for e in logs if e["event"] == "slot.repair_failed"] == []


async def test_a_cancel_under_way_is_no_repair(
    flaky: FlakyStorage, clock: Clock, logs: list[EventDict]
) -> None:
    """A booking made long ago is cancelled just as the repair looks at its slot: the
    booking is cancelled, the cancel's release of the slot not done yet. Nothing failed,
    so nothing is repaired (the repair used to free the slot itself and report it as
    `slot.repaired why=booking-cancelled`, which the BookingApiSlotsRepaired alert reads as
    "MongoDB failed in the middle of a cancellation"). The grace counts from the cancel:
    a cancel whose release never comes is repaired once it has passed."""
    service = BookingService(flaky, clock)
    await service.create_instructor(ADA, None, "Ada", "UTC")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slot = await service.create_slot(ADA, "i1", start, start + timedelta(hours=1))
    booking = await service.book(GRACE_HOPPER, slot.id, 20)
    clock.ahead = timedelta(seconds=GRACE * 2)
    look_up = flaky.bookings.get

    async def cancelled_meanwhile(booking_id: str) -> BookingDocument | None:
        flaky.bookings.get = look_up  # type: ignore[method-assign]
        await flaky.bookings.cancel(booking_id, service.now())  # the cancel's first step
        return await look_up(booking_id)

    flaky.bookings.get = cancelled_meanwhile  # type: ignore[method-assign]
    grace = timedelta(seconds=GRACE)
    assert (await service.repair_slots(None, grace, 10)).repaired == []
    assert [e for e in logs if e["event"] == "slot.repaired"] == []
    held = await flaky.slots.get(slot.id)
    assert held is not None
    assert (held.status, held.booking_id) == (SlotStatus.BOOKED, booking.id)

    clock.ahead += timedelta(seconds=GRACE + 1)  # the cancel's release never came
    done = await service.repair_slots(None, grace, 10)
    assert [(r.slot_id, r.why.value) for r in done.repaired] == [(slot.id, "booking-cancelled")]
