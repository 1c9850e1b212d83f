"""Property: whatever slots instructors try to add, concurrently and in any order, no two
live slots of one instructor ever overlap, and every refusal names a real conflict."""

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from booking_api.adapters.memory import MemoryStorage
from booking_api.domain.errors import Conflict
from booking_api.service import BookingService
from slotstream_contracts.auth import Principal

BASE = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
INSTRUCTOR = Principal.model_validate({"sub": "i1", "role": "instructor"})

windows = st.lists(
    st.tuples(st.integers(0, 48), st.integers(1, 16)),  # start, length, in 15-minute steps
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows)
def test_live_slots_never_overlap(requested: list[tuple[int, int]]) -> None:
    async def run() -> None:
        service = BookingService(MemoryStorage())
        await service.create_instructor(INSTRUCTOR, None, "Ada", "UTC")

        async def add(start: int, length: int) -> tuple[datetime, datetime, bool]:
            begin = BASE + timedelta(minutes=15 * start)
            end = begin + timedelta(minutes=15 * length)
            try:
                await service.create_slot(INSTRUCTOR, "i1", begin, end)
            except Conflict:
                return begin, end, False
            return begin, end, True

        created = await asyncio.gather(*(add(s, n) for s, n in requested))
        live = await service.storage.slots.list_for_instructor(
            "i1", BASE - timedelta(days=1), BASE + timedelta(days=3)
        )
        assert len(live) == sum(ok for _, _, ok in created)
        ordered = sorted(live, key=lambda slot: slot.start)
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            assert earlier.end <= later.start
        for begin, end, ok in created:
            if not ok:
                assert any(slot.start < end and begin < slot.end for slot in live)

    asyncio.run(run())
