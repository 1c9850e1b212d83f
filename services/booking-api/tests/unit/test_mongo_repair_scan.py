"""The query the Mongo adapter sends for the repair's scan of booked slots
(``list_booked_after``), captured at the collection. Booked slots in the past stay booked
for ever: a scan whose only bounds on ``start`` are inside an ``$or`` may be planned as a
walk of the whole ``booked_start`` index, so that every run reads every booked slot ever
made. What the scan returns is the contract suite's (on real MongoDB in CI)."""

from datetime import UTC, datetime
from typing import Any, Self

from booking_api.adapters.mongo import MongoSlots
from booking_api.domain.repair import SlotCursor

Document = dict[str, Any]
AFTER = SlotCursor(datetime(2030, 1, 6, 9, tzinfo=UTC), "slot-b")
STALE_BEFORE = datetime(2030, 1, 5, tzinfo=UTC)


class FindRecorder:
    """A collection whose ``find`` records its filter, sort and limit and finds nothing."""

    def __init__(self) -> None:
        self.filter: Document | None = None
        self.sort_keys: list[tuple[str, int]] = []
        self.limit_to: int | None = None

    def find(self, query: Document) -> Self:
        self.filter = query
        return self

    def sort(self, keys: list[tuple[str, int]]) -> Self:
        self.sort_keys = keys
        return self

    def limit(self, limit: int) -> Self:
        self.limit_to = limit
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Document:
        raise StopAsyncIteration


async def test_the_repair_scan_starts_at_its_cursor_in_the_index() -> None:
    collection = FindRecorder()
    slots = MongoSlots(None, collection, None)  # type: ignore[arg-type]
    assert await slots.list_booked_after(AFTER, STALE_BEFORE, 50) == []
    query = collection.filter
    assert query is not None
    # a bound on the index's first key outside the $or: the scan's index range starts at
    # the cursor whatever the planner makes of the $or
    assert query.get("start") == {"$gte": AFTER.start}, query
    assert query["status"] == "booked"  # the booked_start index's partial filter
    assert query["$or"] == [
        {"start": {"$gt": AFTER.start}},
        {"start": AFTER.start, "_id": {"$gt": AFTER.slot_id}},
    ]
    assert query["updatedAt"] == {"$lt": STALE_BEFORE}
    assert collection.sort_keys == [("start", 1), ("_id", 1)]  # booked_start's order
    assert collection.limit_to == 50
