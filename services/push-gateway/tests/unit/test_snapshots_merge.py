import asyncio
import tracemalloc

import httpx
import pytest

from push_gateway.adapters.snapshots import (
    CoalescingSnapshots,
    FakeSnapshotSource,
    HttpSnapshotSource,
    SnapshotNotFound,
    SnapshotUnavailable,
)
from push_gateway.domain.merge import newer_than_snapshot, slot_versions
from push_gateway.testing import booking_event, slot, slot_event, snapshot


async def test_concurrent_fetches_for_one_instructor_share_one_request() -> None:
    source = FakeSnapshotSource({"i1": snapshot("i1", []), "i2": snapshot("i2", [])})
    source.gate = asyncio.Event()
    coalescer = CoalescingSnapshots(source)
    waiters = [asyncio.create_task(coalescer.fetch("i1", lambda: 0)) for _ in range(50)]
    waiters.append(asyncio.create_task(coalescer.fetch("i2", lambda: 0)))
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters)
    assert sorted(source.fetches) == ["i1", "i2"]
    assert {r.snapshot.instructor_id for r in results[:50]} == {"i1"}


async def test_a_kept_snapshot_holds_memory_of_its_size() -> None:
    """One snapshot is kept per instructor: its encoded JSON must not keep the 4 kB buffer
    orjson wrote it into (0.4 kB per connection at 1 k connections over 100 instructors)."""
    ids = [f"i{n}" for n in range(20)]
    coalescer = CoalescingSnapshots(FakeSnapshotSource({i: snapshot(i, []) for i in ids}))
    tracemalloc.start()
    try:
        kept = [await coalescer.fetch(i, lambda: 0) for i in ids]
        traced = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    for taken in kept:
        assert len(taken.encoded) < 300
    module = traced.filter_traces([tracemalloc.Filter(True, "*/adapters/snapshots.py")])
    blocks = {str(s.traceback): s.size // s.count for s in module.statistics("lineno")}
    assert blocks
    assert max(blocks.values()) < 1024, blocks


async def test_a_recent_snapshot_is_reused_unless_a_newer_one_is_required() -> None:
    source = FakeSnapshotSource({"i1": snapshot("i1", [])})
    coalescer = CoalescingSnapshots(source, reuse_seconds=60)
    first = await coalescer.fetch("i1", lambda: 7)
    assert first.since == 7
    assert (await coalescer.fetch("i1", lambda: 9)) is first
    assert (await coalescer.fetch("i1", lambda: 9, fresh_after=7)) is first
    newer = await coalescer.fetch("i1", lambda: 9, fresh_after=8)
    assert newer.since == 9
    assert source.fetches == ["i1", "i1"]
    expiring = CoalescingSnapshots(source, reuse_seconds=0)
    await expiring.fetch("i1", lambda: 0)
    await expiring.fetch("i1", lambda: 0)
    assert source.fetches.count("i1") == 4


async def test_recent_gives_the_snapshot_a_fetch_would_reuse_without_fetching() -> None:
    source = FakeSnapshotSource({"i1": snapshot("i1", [])})
    coalescer = CoalescingSnapshots(source, reuse_seconds=60)
    assert coalescer.recent("i1") is None
    taken = await coalescer.fetch("i1", lambda: 3)
    assert coalescer.recent("i1") is taken
    assert coalescer.recent("i2") is None
    assert source.fetches == ["i1"]
    expiring = CoalescingSnapshots(source, reuse_seconds=0)
    await expiring.fetch("i1", lambda: 0)
    assert expiring.recent("i1") is None


async def test_a_failed_fetch_fails_every_waiter_and_is_not_remembered() -> None:
    source = FakeSnapshotSource()
    source.gate = asyncio.Event()
    coalescer = CoalescingSnapshots(source, unknown_ttl_seconds=0)  # no negative cache
    waiters = [asyncio.create_task(coalescer.fetch("nope", lambda: 0)) for _ in range(3)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, SnapshotNotFound) for r in results)
    source.snapshots["nope"] = snapshot("nope", [])
    assert (await coalescer.fetch("nope", lambda: 0)).snapshot.instructor_id == "nope"


async def test_an_unknown_instructor_is_remembered_for_its_ttl() -> None:
    source = FakeSnapshotSource()
    coalescer = CoalescingSnapshots(source, unknown_ttl_seconds=0.2)
    for _ in range(3):
        with pytest.raises(SnapshotNotFound):
            await coalescer.fetch("ghost", lambda: 0)
    assert source.fetches == ["ghost"]  # one booking-api request, then the cached 404
    source.snapshots["ghost"] = snapshot("ghost", [])
    await asyncio.sleep(0.25)
    assert (await coalescer.fetch("ghost", lambda: 0)).snapshot.instructor_id == "ghost"
    assert source.fetches == ["ghost", "ghost"]


async def test_one_cancelled_waiter_does_not_cancel_the_others() -> None:
    source = FakeSnapshotSource({"i1": snapshot("i1", [])})
    source.gate = asyncio.Event()
    coalescer = CoalescingSnapshots(source)
    first = asyncio.create_task(coalescer.fetch("i1", lambda: 0))
    second = asyncio.create_task(coalescer.fetch("i1", lambda: 0))
    await asyncio.sleep(0)
    first.cancel()
    source.gate.set()
    assert (await second).snapshot.instructor_id == "i1"
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.parametrize(("version", "expected"), [(1, False), (2, False), (3, True)])
def test_slot_delta_follows_snapshot_only_when_newer(version: int, expected: bool) -> None:
    versions = slot_versions(snapshot("i1", [slot("i1", "s1", 2)]))
    assert (
        newer_than_snapshot(b"slot", slot_event("i1", "s1", version).to_json(), versions)
        is expected
    )


def test_delta_for_a_slot_missing_from_the_snapshot_follows_it() -> None:
    versions = slot_versions(snapshot("i1", [slot("i1", "s1", 2)]))
    assert newer_than_snapshot(b"slot", slot_event("i1", "s9", 1).to_json(), versions)


def test_booking_events_always_follow_the_snapshot() -> None:
    event = booking_event("i1", "b1", "s1", "u1")
    assert newer_than_snapshot(b"booking", event.to_json(), {"s1": 99})


def booking_api(answers: list[int | Exception]) -> tuple[httpx.AsyncClient, list[str]]:
    """A booking-api that answers each request with the next status (or raises)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        body = snapshot("i1", []).model_dump_json(by_alias=True) if answer == 200 else "{}"
        return httpx.Response(answer, text=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://api")
    return client, seen


async def test_http_snapshot_is_retried_after_a_failure_then_succeeds() -> None:
    client, seen = booking_api([httpx.ConnectError("refused"), 503, 200])
    async with client:
        taken = await HttpSnapshotSource(client).fetch("i1")
    assert taken.instructor_id == "i1"
    assert seen == ["/api/instructors/i1/schedule"] * 3


async def test_http_snapshot_gives_up_after_three_attempts_and_never_retries_404() -> None:
    failing, seen = booking_api([503])
    async with failing:
        with pytest.raises(SnapshotUnavailable):
            await HttpSnapshotSource(failing).fetch("i1")
    assert len(seen) == 3
    missing, asked = booking_api([404])
    async with missing:
        with pytest.raises(SnapshotNotFound):
            await HttpSnapshotSource(missing).fetch("i1")
    assert len(asked) == 1


async def test_http_snapshots_in_flight_are_bounded() -> None:
    """A connect storm's many instructors wait at the source, not in httpx's pool (whose
    queue costs CPU per queued request)."""
    release = asyncio.Event()
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        instructor = request.url.path.split("/")[3]
        return httpx.Response(200, content=snapshot(instructor, []).model_dump_json(by_alias=True))

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="http://booking"
    ) as client:
        source = HttpSnapshotSource(client, max_in_flight=4)
        fetches = [asyncio.create_task(source.fetch(f"i{n}")) for n in range(20)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert peak == 4
        release.set()
        taken = await asyncio.gather(*fetches)
    assert [t.instructor_id for t in taken] == [f"i{n}" for n in range(20)]
    assert peak == 4
