import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from booking_api.adapters.memory import MemoryStorage
from booking_api.adapters.mongo import MongoStorage
from booking_api.domain.repair import SlotCursor
from booking_api.ports import DuplicateKey, Storage, UnreadableSlot
from slotstream_contracts.documents import SLOTS, SlotDocument
from slotstream_contracts.entities import SlotStatus

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def slot(slot_id: str, hour: int, instructor_id: str = "i1", hours: int = 1) -> SlotDocument:
    start = NOW + timedelta(days=1, hours=hour)
    return SlotDocument(
        id=slot_id,
        instructor_id=instructor_id,
        start=start,
        end=start + timedelta(hours=hours),
        status=SlotStatus.AVAILABLE,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_insert_get_and_duplicate_ids(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    found = await storage.slots.get("s1")
    assert found == slot("s1", 0)
    with pytest.raises(DuplicateKey):
        await storage.slots.insert(slot("s1", 5))


async def test_one_live_slot_per_instructor_and_start(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    with pytest.raises(DuplicateKey):
        await storage.slots.insert(slot("s2", 0))
    await storage.slots.insert(slot("s3", 0, instructor_id="i2"))
    # A tombstone frees the start time.
    assert await storage.slots.mark_deleted("s1", LATER) is not None
    await storage.slots.insert(slot("s4", 0))


async def test_listing_returns_live_slots_intersecting_the_window_by_start(
    storage: Storage,
) -> None:
    for slot_id, hour in [("s3", 6), ("s1", 0), ("s2", 2), ("s4", 30)]:
        await storage.slots.insert(slot(slot_id, hour))
    await storage.slots.insert(slot("other", 1, instructor_id="i2"))
    await storage.slots.mark_deleted("s2", LATER)
    day = NOW + timedelta(days=1)
    listed = await storage.slots.list_for_instructor("i1", day, day + timedelta(hours=24))
    assert [s.id for s in listed] == ["s1", "s3"]
    # Half-open: a window that starts when s1 ends does not include s1.
    after_s1 = await storage.slots.list_for_instructor(
        "i1", day + timedelta(hours=1), day + timedelta(hours=7)
    )
    assert [s.id for s in after_s1] == ["s3"]
    inside_long = await storage.slots.list_for_instructor(
        "i1", day + timedelta(minutes=30), day + timedelta(minutes=40)
    )
    assert [s.id for s in inside_long] == ["s1"]


async def test_book_is_compare_and_set(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    booked = await storage.slots.book("s1", "b1", "st1", LATER)
    assert booked is not None
    assert (booked.status, booked.booking_id, booked.student_id, booked.version) == (
        SlotStatus.BOOKED,
        "b1",
        "st1",
        2,
    )
    assert booked.updated_at == LATER
    assert await storage.slots.book("s1", "b2", "st2", LATER) is None
    assert await storage.slots.book("missing", "b3", "st2", LATER) is None
    current = await storage.slots.get("s1")
    assert current is not None
    assert current.booking_id == "b1"
    assert current.version == 2


async def test_concurrent_books_have_exactly_one_winner(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    results = await asyncio.gather(
        *(storage.slots.book("s1", f"b{n}", f"st{n}", LATER) for n in range(20))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    current = await storage.slots.get("s1")
    assert current is not None
    assert current.booking_id == winners[0].booking_id


async def test_release_only_frees_the_named_booking(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    await storage.slots.book("s1", "b1", "st1", LATER)
    assert await storage.slots.release("s1", "someone-else", LATER) is None
    released = await storage.slots.release("s1", "b1", LATER)
    assert released is not None
    assert (released.status, released.booking_id, released.student_id, released.version) == (
        SlotStatus.AVAILABLE,
        None,
        None,
        3,
    )
    assert await storage.slots.release("s1", "b1", LATER) is None


async def test_release_from_a_version_is_compare_and_set_on_it_too(storage: Storage) -> None:
    """The repair frees a slot only as it read it: not once it changed since."""
    await storage.slots.insert(slot("s1", 0))
    booked = await storage.slots.book("s1", "b1", "st1", LATER)
    assert booked is not None
    assert await storage.slots.release("s1", "b1", LATER, booked.version - 1) is None
    assert await storage.slots.release("s1", "someone-else", LATER, booked.version) is None
    released = await storage.slots.release("s1", "b1", LATER, booked.version)
    assert released is not None
    assert (released.status, released.booking_id, released.version) == (
        SlotStatus.AVAILABLE,
        None,
        booked.version + 1,
    )


async def test_reclaim_marks_the_slot_of_its_booking_as_changed(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    await storage.slots.insert(slot("s2", 2))
    await storage.slots.book("s1", "b1", "st1", LATER)
    then = LATER + timedelta(hours=1)
    assert await storage.slots.reclaim("s1", "someone-else", then) is None
    assert await storage.slots.reclaim("s2", "b1", then) is None  # not booked
    reclaimed = await storage.slots.reclaim("s1", "b1", then)
    assert reclaimed is not None
    assert (reclaimed.status, reclaimed.booking_id, reclaimed.student_id) == (
        SlotStatus.BOOKED,
        "b1",
        "st1",
    )
    assert (reclaimed.version, reclaimed.updated_at) == (3, then)
    assert await storage.slots.release("s1", "b1", then, 2) is None  # the version before


async def test_booked_slots_are_listed_unchanged_since_in_start_order_from_a_cursor(
    storage: Storage,
) -> None:
    """The repair's scan: booked slots last updated before a moment, in (start, id) order
    after a cursor, at most ``limit``; two slots sharing a start are both reached."""
    for slot_id, hour, instructor in [
        ("a", 0, "i1"),
        ("b", 2, "i1"),
        ("c", 2, "i2"),
        ("d", 4, "i1"),
        ("e", 6, "i1"),
        ("free", 8, "i1"),
        ("fresh", 10, "i1"),
    ]:
        await storage.slots.insert(slot(slot_id, hour, instructor_id=instructor))
    for slot_id in ["e", "d", "c", "b", "a"]:
        await storage.slots.book(slot_id, f"booking-{slot_id}", "st1", LATER)
    await storage.slots.book("fresh", "booking-fresh", "st1", LATER + timedelta(hours=1))
    gone = await storage.slots.book("free", "booking-free", "st1", LATER)
    assert gone is not None
    await storage.slots.release("free", "booking-free", LATER)
    before = LATER + timedelta(minutes=30)
    everything = _read(await storage.slots.list_booked_after(SlotCursor(NOW, ""), before, 100))
    assert [s.id for s in everything] == ["a", "b", "c", "d", "e"]
    assert {s.status for s in everything} == {SlotStatus.BOOKED}

    first = _read(await storage.slots.list_booked_after(SlotCursor(NOW, ""), before, 2))
    assert [s.id for s in first] == ["a", "b"]
    last = first[-1]
    rest = _read(await storage.slots.list_booked_after(SlotCursor(last.start, last.id), before, 2))
    assert [s.id for s in rest] == ["c", "d"]
    # A cursor between two slots of one start, and one past the schedule's booked end.
    from_c = _read(await storage.slots.list_booked_after(SlotCursor(last.start, "b"), before, 100))
    assert [s.id for s in from_c] == ["c", "d", "e"]
    past = SlotCursor(NOW + timedelta(days=2), "")
    assert await storage.slots.list_booked_after(past, before, 100) == []
    assert await storage.slots.list_booked_after(SlotCursor(NOW, ""), LATER, 100) == []


async def test_tombstone_only_from_available(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    await storage.slots.insert(slot("s2", 2))
    await storage.slots.book("s2", "b1", "st1", LATER)
    assert await storage.slots.mark_deleted("s2", LATER) is None
    deleted = await storage.slots.mark_deleted("s1", LATER)
    assert deleted is not None
    assert deleted.status is SlotStatus.DELETED
    assert deleted.version == 2
    assert await storage.slots.mark_deleted("s1", LATER) is None
    assert await storage.slots.book("s1", "b2", "st1", LATER) is None
    still_there = await storage.slots.get("s1")
    assert still_there is not None
    assert still_there.status is SlotStatus.DELETED


async def test_insert_unless_overlapping_stores_only_a_free_window(storage: Storage) -> None:
    assert await storage.slots.insert_unless_overlapping(slot("s1", 0, hours=2)) == []
    clash = await storage.slots.insert_unless_overlapping(slot("s2", 1))
    assert [s.id for s in clash] == ["s1"]
    assert await storage.slots.get("s2") is None
    # Touching is not overlapping; another instructor's schedule is separate.
    assert await storage.slots.insert_unless_overlapping(slot("s3", 2)) == []
    assert await storage.slots.insert_unless_overlapping(slot("s4", 1, instructor_id="i2")) == []
    # A tombstone frees its window.
    await storage.slots.mark_deleted("s1", LATER)
    assert await storage.slots.insert_unless_overlapping(slot("s5", 1)) == []


async def test_concurrent_overlapping_creations_store_exactly_one(storage: Storage) -> None:
    """Partially overlapping windows (different starts, so no unique index helps)."""
    candidates = [slot(f"c{i}", 0, hours=3) for i in range(3)]
    candidates = [
        SlotDocument.model_validate(
            {
                **c.model_dump(),
                "start": c.start + timedelta(minutes=10 * i),
                "end": c.end + timedelta(minutes=10 * i),
            }
        )
        for i, c in enumerate(candidates)
    ]
    results = await asyncio.gather(
        *(storage.slots.insert_unless_overlapping(c) for c in candidates)
    )
    assert sum(1 for found in results if found == []) == 1
    day = NOW + timedelta(days=1)
    live = await storage.slots.list_for_instructor("i1", day, day + timedelta(hours=6))
    assert len(live) == 1


# Moving a slot and creating many at once: the same overlap rules and atomicity as
# ``insert_unless_overlapping``, all or nothing for a batch.

DAY = NOW + timedelta(days=1)


def at(hours: float) -> timedelta:
    return timedelta(hours=hours)


async def test_a_batch_is_stored_whole(storage: Storage) -> None:
    batch = [slot("b1", 0), slot("b2", 1), slot("b3", 5)]
    assert await storage.slots.insert_many_unless_overlapping("i1", batch) == []
    live = await storage.slots.list_for_instructor("i1", DAY, DAY + at(24))
    assert [s.id for s in live] == ["b1", "b2", "b3"]
    assert all(s.version == 1 and s.status is SlotStatus.AVAILABLE for s in live)


async def test_a_batch_overlapping_a_live_slot_stores_nothing(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 3, hours=2))
    batch = [slot("b1", 0), slot("b2", 4), slot("b3", 8)]
    clash = await storage.slots.insert_many_unless_overlapping("i1", batch)
    assert [s.id for s in clash] == ["s1"]
    for slot_id in ("b1", "b2", "b3"):
        assert await storage.slots.get(slot_id) is None
    # Another instructor's slots and tombstones do not count.
    await storage.slots.mark_deleted("s1", LATER)
    assert await storage.slots.insert_many_unless_overlapping("i1", batch) == []


async def test_concurrent_overlapping_batches_store_exactly_one(storage: Storage) -> None:
    first = [slot("a1", 0), slot("a2", 2)]
    second = [slot("b1", 4), slot("b2", 2, hours=2)]  # b2 overlaps a2 (not at the same start)
    second[1] = second[1].model_copy(
        update={"start": second[1].start + at(0.5), "end": second[1].end + at(0.5)}
    )
    results = await asyncio.gather(
        storage.slots.insert_many_unless_overlapping("i1", first),
        storage.slots.insert_many_unless_overlapping("i1", second),
    )
    assert sorted(len(found) for found in results)[0] == 0
    assert sum(1 for found in results if found == []) == 1
    live = await storage.slots.list_for_instructor("i1", DAY, DAY + at(24))
    assert {s.id for s in live} in ({"a1", "a2"}, {"b1", "b2"})


async def test_a_move_changes_the_window_and_the_version(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    moved = await storage.slots.move_unless_overlapping("s1", 1, DAY + at(3), DAY + at(4.5), LATER)
    assert not isinstance(moved, list)
    assert moved is not None
    assert (moved.start, moved.end, moved.version) == (DAY + at(3), DAY + at(4.5), 2)
    assert moved.updated_at == LATER
    assert await storage.slots.get("s1") == moved
    # The schedule finds it at its new time only; its old start is free again.
    assert [s.id for s in await storage.slots.list_for_instructor("i1", DAY, DAY + at(1))] == []
    assert await storage.slots.insert_unless_overlapping(slot("s2", 0)) == []
    later = await storage.slots.list_for_instructor("i1", DAY + at(4), DAY + at(5))
    assert [s.id for s in later] == ["s1"]


async def test_a_move_may_overlap_only_its_own_old_window(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0, hours=2))
    await storage.slots.insert(slot("s2", 3))
    shifted = await storage.slots.move_unless_overlapping("s1", 1, DAY + at(1), DAY + at(3), LATER)
    assert not isinstance(shifted, list)
    assert shifted is not None
    clash = await storage.slots.move_unless_overlapping("s1", 2, DAY + at(2), DAY + at(4), LATER)
    assert isinstance(clash, list)
    assert [s.id for s in clash] == ["s2"]
    current = await storage.slots.get("s1")
    assert current is not None
    assert current.version == 2
    assert current.start == DAY + at(1)


async def test_a_move_is_compare_and_set_on_status_and_version(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    await storage.slots.insert(slot("s2", 5))
    assert (
        await storage.slots.move_unless_overlapping("s1", 7, DAY + at(2), DAY + at(3), LATER)
        is None
    )
    await storage.slots.book("s2", "b1", "st1", LATER)
    assert (
        await storage.slots.move_unless_overlapping("s2", 2, DAY + at(8), DAY + at(9), LATER)
        is None
    )
    assert await storage.slots.move_unless_overlapping("gone", 1, DAY, DAY + at(1), LATER) is None
    unchanged = await storage.slots.get("s1")
    assert unchanged is not None
    assert unchanged.version == 1


async def test_concurrent_moves_and_creations_never_overlap(storage: Storage) -> None:
    await storage.slots.insert(slot("s1", 0))
    results = await asyncio.gather(
        storage.slots.move_unless_overlapping("s1", 1, DAY + at(5), DAY + at(6), LATER),
        storage.slots.insert_unless_overlapping(slot("c1", 5, hours=2)),
    )
    live = await storage.slots.list_for_instructor("i1", DAY + at(5), DAY + at(7))
    assert len(live) == 1, results


def _read(found: list[SlotDocument | UnreadableSlot]) -> list[SlotDocument]:
    """The scan's slots, every one of them readable."""
    assert all(isinstance(s, SlotDocument) for s in found), found
    return [s for s in found if isinstance(s, SlotDocument)]


async def _store_raw(storage: Storage, document: dict[str, object]) -> None:
    """A document as it is stored, past the models: only a test, or a hand, writes so."""
    if isinstance(storage, MongoStorage):
        await storage.database[SLOTS].insert_one(document)
    else:
        assert isinstance(storage, MemoryStorage)
        storage.collections[SLOTS].insert(document)


async def test_a_booked_slot_the_model_refuses_is_named_in_its_place_in_the_scan(
    storage: Storage,
) -> None:
    """The scan goes on past a stored slot it cannot read: in its place, its id, its
    start (where the next scan goes on from) and why."""
    for slot_id, hour in [("a", 0), ("c", 4)]:
        await storage.slots.insert(slot(slot_id, hour))
        await storage.slots.book(slot_id, f"booking-{slot_id}", "st1", NOW)
    bad = slot("b", 2).model_copy(update={"status": SlotStatus.BOOKED, "booking_id": "x"})
    await _store_raw(storage, {**bad.to_document(), "version": "seven"})
    found = await storage.slots.list_booked_after(SlotCursor(NOW, ""), LATER, 100)
    assert [type(s).__name__ for s in found] == ["SlotDocument", "UnreadableSlot", "SlotDocument"]
    unreadable = found[1]
    assert isinstance(unreadable, UnreadableSlot)
    assert (unreadable.slot_id, unreadable.start) == ("b", bad.start)
    assert unreadable.error.startswith("version: Input should be a valid integer"), unreadable
    after = SlotCursor(unreadable.start, unreadable.slot_id)
    rest = await storage.slots.list_booked_after(after, LATER, 100)
    assert [s.id for s in _read(rest)] == ["c"]
